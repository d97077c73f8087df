"""Models: a verified file loaded safely, the corpus, and what is done with a model (evaluate, analyze, generate)."""
