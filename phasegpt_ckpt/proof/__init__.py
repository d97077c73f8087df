"""Proof: the one place where facts about bytes meet expectations and become a verdict."""
