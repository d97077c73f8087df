"""Generation with a cache gives the text the seed's loop gives, in both coupling modes, and streams it."""
from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import save_ours, tiny_model

from phasegpt_ckpt.models.data import CharDataset
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.generate import generate, sample_next, stream

PROMPT = "ROMEO:\nWhat light"


@pytest.fixture(scope="module")
def vocab(corpus_path) -> str:
    return CharDataset(corpus_path).chars


def seed_loop(model, prompt, vocab, max_new_tokens, seed, **sampling) -> str:
    """The seed's generation loop (a full forward over the prefix per character), cropped to max_seq_len
    as any loop over this model must be, sampling with the same function and generator."""
    ids = [vocab.index(c) for c in prompt]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([ids[-model.config.max_seq_len:]]))
            ids.append(sample_next(logits[0, -1], generator=generator, **sampling))
    return "".join(vocab[i] for i in ids)


@pytest.mark.parametrize("mode", ["causal", "original"])
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.8, "top_k": 20}])
def test_cached_generation_equals_the_full_forward_loop(vocab, mode, sampling):
    model = tiny_model(mode, seed=11)
    new = 70  # 16 + 70 > max_seq_len 64: the window slides and the cache is filled again

    cached = generate(model, PROMPT, vocab=vocab, max_new_tokens=new, seed=5, **sampling)

    assert cached == seed_loop(model, PROMPT, vocab, new, seed=5, **sampling)
    assert len(cached) == len(PROMPT) + new and cached.startswith(PROMPT)


def test_same_seed_same_text_and_other_seed_other_text(vocab):
    model = tiny_model("causal", seed=12)
    text = generate(model, PROMPT, vocab=vocab, max_new_tokens=40, seed=1)
    assert generate(model, PROMPT, vocab=vocab, max_new_tokens=40, seed=1) == text
    assert generate(model, PROMPT, vocab=vocab, max_new_tokens=40, seed=2) != text
    assert "".join(stream(model, PROMPT, vocab=CharDataset.from_text("", vocab=vocab), max_new_tokens=40, seed=1)) \
        == text[len(PROMPT):]  # the seed's CharDataset works as the vocabulary too


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    logits = torch.randn(65, generator=torch.Generator().manual_seed(3))
    greedy = sample_next(logits, temperature=0)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        assert sample_next(logits, top_k=1, generator=generator) == greedy
        assert sample_next(logits, top_p=1e-6, generator=generator) == greedy
    allowed = set(torch.topk(logits, 3).indices.tolist())
    draws = {sample_next(logits, top_k=3, generator=torch.Generator().manual_seed(s)) for s in range(50)}
    assert draws <= allowed and len(draws) > 1


def test_a_prompt_character_outside_the_vocabulary_is_named(vocab):
    with pytest.raises(BadInput, match="character 'é' is not in the model's 65-character vocabulary"):
        stream(tiny_model(), "café", vocab=vocab)


def test_cli_prints_exactly_prompt_and_generated_text(tmp_path, corpus_path, vocab, run_cli):
    model = tiny_model("causal", seed=13)
    path = save_ours(model, tmp_path / "tiny.pt", corpus_path)

    code, out, err = run_cli("generate", PROMPT, "--model", path, "--max-new-tokens", 30, "--seed", 9,
                             "--device", "cpu")

    assert code == 0, err
    assert out == generate(model, PROMPT, vocab=vocab, max_new_tokens=30, seed=9)
    code, out, err = run_cli("generate", "naïve", "--model", path)
    assert code == 2 and out == "" and err.strip() == (
        "error: character 'ï' is not in the model's 65-character vocabulary")
