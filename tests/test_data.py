"""The corpus, its vocabulary and split, and the window loaders, on the real tiny Shakespeare."""
from __future__ import annotations

import pytest
import torch

from phasegpt_ckpt.models.data import CharDataset, RandomWindows, Windows, get_dataloaders
from phasegpt_ckpt.errors import BadInput

SORTED_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_vocabulary_is_the_sorted_distinct_characters(corpus_path):
    ds = CharDataset(corpus_path)
    assert ds.chars == SORTED_CHARS
    assert ds.vocab_size == 65
    assert ds.char_to_idx["\n"] == 0 and ds.idx_to_char[64] == "z"
    assert ds.decode(ds.encode("To be or not to be")) == "To be or not to be"


def test_split_is_first_90_percent_then_last_10(corpus_path):
    ds = CharDataset(corpus_path)
    train, val = ds.split()
    assert (len(train), len(val)) == (1_003_854, 111_540)
    text = corpus_path.read_text()
    assert ds.decode(val[:50]) == text[1_003_854 : 1_003_854 + 50]
    assert ds.decode(train[-20:]) == text[1_003_854 - 20 : 1_003_854]


def test_unknown_character_names_it():
    ds = CharDataset.from_text("abc")
    with pytest.raises(BadInput, match="'é'"):
        ds.encode("abé")


def test_missing_corpus_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        CharDataset(tmp_path / "nope.txt")


def test_a_directory_as_corpus_is_named_a_directory(tmp_path, run_cli):
    with pytest.raises(BadInput, match=f"corpus {tmp_path} is a directory; pass --data with the text file"):
        CharDataset(tmp_path)
    code, out, err = run_cli("analyze", "phasegpt-tiny", "--data", tmp_path, "--device", "cpu")
    assert code == 2 and out == "" and "is a directory" in err.splitlines()[-1] and "Traceback" not in err


def test_validation_windows_cover_the_split_once_without_overlap(corpus_path):
    _, val_loader = get_dataloaders(corpus_path, block_size=512, batch_size=32)
    val = val_loader.char_dataset.split()[1]
    xs, ys = zip(*val_loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(x) == (len(val) - 1) // 512
    assert torch.equal(x.flatten(), val[: x.numel()])
    assert torch.equal(y.flatten(), val[1 : x.numel() + 1])


def test_training_order_is_reproducible_and_resumable(corpus_path):
    train_ids = CharDataset(corpus_path).split()[0]
    windows = Windows(train_ids, 64)
    a, b = RandomWindows(windows, seed=7), RandomWindows(windows, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    full = list(a)
    assert full == list(b)
    assert len(full) == len(train_ids) // 64
    b.set_epoch(3, position=100)
    assert list(b) == full[100:]
    a.set_epoch(4)
    assert list(a) != full


def test_ranks_split_the_global_order_between_them(corpus_path):
    windows = Windows(CharDataset(corpus_path).split()[0], 128)
    single = RandomWindows(windows, seed=1)
    ranks = [RandomWindows(windows, seed=1, rank=r, world_size=2) for r in range(2)]
    merged = [i for pair in zip(*(list(r) for r in ranks)) for i in pair]
    assert merged == list(single)[: len(merged)]


def test_loader_batches_are_targets_shifted_by_one(corpus_path):
    train_loader, _ = get_dataloaders(corpus_path, block_size=32, batch_size=4, seed=3)
    x, y = next(iter(train_loader))
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_the_bundled_corpus_is_tiny_shakespeare_byte_for_byte(corpus_path):
    import hashlib

    from conftest import CORPUS_SHA256
    from phasegpt_ckpt.models.data import BUNDLED_CORPUS, corpus_or_bundled

    assert corpus_or_bundled(None) == BUNDLED_CORPUS and BUNDLED_CORPUS.stat().st_size < 500_000  # shipped compressed
    text = CharDataset(BUNDLED_CORPUS).text
    assert hashlib.sha256(text.encode()).hexdigest() == CORPUS_SHA256 == hashlib.sha256(corpus_path.read_bytes()).hexdigest()
