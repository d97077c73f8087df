"""Character-level tiny Shakespeare: vocabulary, the 90/10 split, and the window loaders.

The vocabulary is the sorted set of distinct characters (65 for tiny Shakespeare), the
split is contiguous (first 90 % train, last 10 % validation, as nanoGPT's prepare.py), and
validation uses non-overlapping windows so every validation character is scored once.

>>> ds = CharDataset.from_text("hello world")
>>> ds.decode(ds.encode("hello"))
'hello'
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from phasegpt_ckpt.errors import BadInput

TRAIN_FRACTION = 0.9
# tiny Shakespeare as it ships inside the package (a gzip file, 434 kB): the corpus every model here was
# trained on, so loading, evaluation and analysis work on a fresh machine without a download.
BUNDLED_CORPUS = Path(__file__).resolve().parents[1] / "manifests" / "tinyshakespeare.txt.gz"


def corpus_or_bundled(data: str | Path | None) -> Path:
    """The corpus to use: ``data`` when given, else the copy bundled with the package.

    >>> corpus_or_bundled(None).name
    'tinyshakespeare.txt.gz'
    """
    return Path(data) if data is not None else BUNDLED_CORPUS


class CharDataset:
    """A text file as a tensor of character ids (``data``), with its vocabulary (``chars``)."""

    def __init__(self, path: str | Path | None = None, *, text: str | None = None, vocab: str | None = None):
        if text is None:
            text = _read_text(path)
        self.text = text
        self.chars = vocab if vocab is not None else "".join(sorted(set(text)))
        self.char_to_idx = {ch: i for i, ch in enumerate(self.chars)}
        self.idx_to_char = {i: ch for i, ch in enumerate(self.chars)}

    @functools.cached_property
    def data(self) -> torch.Tensor:
        # Encoded when first used: a loader wanting only the vocabulary skips a third of its load time.
        return self.encode(self.text)

    @classmethod
    def from_text(cls, text: str, vocab: str | None = None) -> "CharDataset":
        return cls(text=text, vocab=vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text`` as a 1-D long tensor; an unknown character is a ``BadInput``."""
        try:
            return torch.tensor([self.char_to_idx[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise BadInput(
                f"character {err.args[0]!r} is not in the model's {self.vocab_size}-character vocabulary"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.idx_to_char[int(i)] for i in ids)

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train ids, validation ids): first 90 %, last 10 %."""
        n_train = int(len(self.data) * TRAIN_FRACTION)
        return self.data[:n_train], self.data[n_train:]


def _read_text(path: str | Path | None) -> str:
    path = corpus_or_bundled(path)
    if path.is_dir():
        raise BadInput(f"corpus {path} is a directory; pass --data with the text file itself (e.g. {path / 'input.txt'})")
    if not path.is_file():
        raise BadInput(f"corpus file {path} does not exist; pass --data PATH or run 'phasegpt-ckpt fetch tinyshakespeare'")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"corpus file {path} is not UTF-8 text") from None
    except (OSError, EOFError) as err:  # a damaged .gz (gzip.BadGzipFile is an OSError)
        raise BadInput(f"cannot read corpus file {path}: {err}") from None


class Windows(Dataset):
    """(input, target) pairs of ``block_size`` tokens starting at a given offset."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        if len(ids) < block_size + 1:
            raise BadInput(f"text of {len(ids)} characters is shorter than one window of {block_size + 1}")
        self.ids = ids
        self.block_size = block_size

    @property
    def num_offsets(self) -> int:
        return len(self.ids) - self.block_size

    def __len__(self) -> int:
        return self.num_offsets

    def __getitem__(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.ids[offset : offset + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class ContiguousWindows(Sampler[int]):
    """Offsets 0, block, 2·block, ...: non-overlapping windows covering the text once."""

    def __init__(self, windows: Windows):
        self.offsets = range(0, windows.num_offsets, windows.block_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)


class RandomWindows(Sampler[int]):
    """Random window offsets, reproducible from (seed, epoch), resumable mid-epoch.

    An epoch draws ``num_samples`` windows, by default ``len(ids) // block_size`` (one pass
    worth of tokens); a trainer whose epoch is a fixed number of steps asks for exactly the
    windows those steps consume. With ``world_size > 1`` each rank takes every
    ``world_size``-th draw of the same global sequence, so the data order does not depend on
    how many processes share it, and ``position`` (global draws consumed) lets a run resume
    on any world size.
    """

    def __init__(self, windows: Windows, seed: int = 42, rank: int = 0, world_size: int = 1,
                 num_samples: int | None = None):
        self.num_offsets = windows.num_offsets
        self.per_epoch = num_samples or len(windows.ids) // windows.block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randint(self.num_offsets, (self.per_epoch,), generator=g)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()[self.position :]
        usable = len(order) - len(order) % self.world_size
        return iter(order[self.rank : usable : self.world_size].tolist())

    def __len__(self) -> int:
        return (self.per_epoch - self.position) // self.world_size

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]


def get_dataloaders(
    data_path: str | Path,
    block_size: int = 512,
    batch_size: int = 32,
    *,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
    vocab: str | None = None,
    num_samples: int | None = None,
    val_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """(train_loader, val_loader) over the 90/10 split of ``data_path``.

    The train loader's sampler is a :class:`RandomWindows` (``loader.sampler``, drawing
    ``num_samples`` windows an epoch), so a trainer can ``set_epoch`` and save its
    position; the validation loader is fixed. ``batch_size`` is per process;
    ``val_batch_size`` defaults to it (a distributed trainer validates with the global one).
    Both loaders carry the dataset as ``loader.char_dataset``.
    """
    dataset = CharDataset(data_path, vocab=vocab)
    train_ids, val_ids = dataset.split()
    train_windows, val_windows = Windows(train_ids, block_size), Windows(val_ids, block_size)
    sampler = RandomWindows(train_windows, seed=seed, rank=rank, world_size=world_size, num_samples=num_samples)
    train_loader = DataLoader(train_windows, batch_size=batch_size, sampler=sampler, drop_last=True)
    val_loader = DataLoader(val_windows, batch_size=val_batch_size or batch_size, sampler=ContiguousWindows(val_windows))
    train_loader.char_dataset = val_loader.char_dataset = dataset
    return train_loader, val_loader
