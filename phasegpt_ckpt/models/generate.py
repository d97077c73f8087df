"""Text generation with a cache: each new character costs one position, not a forward over the prefix.

What can be cached depends on the coupling mode. Standard attention layers and causal phase layers
never change what they computed for earlier positions, so they keep keys/values (or the phase
layer's running cos/sin sums) and process only the new position. An original-mode phase layer averages
over the whole sequence, so every new token changes its output at every earlier position: the layers
below the first such layer are cached, and that layer and everything above it run over the whole
sequence again at each step. Past ``max_seq_len`` the sequence is cropped to its last ``max_seq_len``
tokens and the cache filled again (learned absolute positions leave nothing to reuse).

>>> text = generate(model, "To be or not to be", vocab=ckpt.vocab, max_new_tokens=50, seed=1)  # doctest: +SKIP
"""
from __future__ import annotations

import functools
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from model import GPT2Model
from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.data import CharDataset
from phasegpt_ckpt.models.device import inference_autocast, pick_device


def recomputed_from(model: GPT2Model) -> int:
    """Index of the first block that must run over the whole sequence at every step.

    That is the first original-mode phase layer (it sees later positions), or ``n_layers`` when
    every block is causal and can be cached.
    """
    config = model.config
    if config.coupling_mode == "original" and config.phase_layers:
        return config.phase_layers[0]
    return config.n_layers


class Decoder:
    """Feeds tokens to a model one step at a time, keeping what the coupling mode allows.

    >>> decoder = Decoder(model)                              # doctest: +SKIP
    >>> logits = decoder.feed(prompt_ids)                      # doctest: +SKIP
    >>> logits = decoder.feed(next_id.view(1, 1))              # doctest: +SKIP
    """

    def __init__(self, model: GPT2Model):
        self.model = model
        self.split = recomputed_from(model)
        self.reset()

    def reset(self) -> None:
        self.cache: Optional[list] = None  # per cached block: KVCache or PhaseState
        self.hidden: Optional[torch.Tensor] = None  # input of the first recomputed block, every position
        self.length = 0

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` [B, T_new]; the logits [B, vocab] that follow the last of them."""
        x = self.model.embed(ids, self.length)
        cache = []
        for i, block in enumerate(self.model.blocks[: self.split]):
            x, state = block.step(x, None if self.cache is None else self.cache[i])
            cache.append(state)
        self.cache, self.length = cache, self.length + ids.shape[1]
        if self.split < len(self.model.blocks):
            self.hidden = x if self.hidden is None else torch.cat([self.hidden, x], dim=1)
            x = self.hidden
            for block in self.model.blocks[self.split :]:
                x = block(x)
        return self.model.head(x[:, -1:])[:, -1]


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> int:
    """One token id from the logits [vocab] of one position; ``temperature=0`` is greedy.

    Sampling happens in float32 on the CPU with ``generator``, so a seed gives the same text on
    every device that computes the same logits.
    """
    logits = logits.float().cpu()
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(0) - probs > top_p  # tokens after the nucleus; the first always stays
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(0, order, outside), float("-inf"))
    return int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator))


def stream(
    model: GPT2Model,
    prompt: str,
    *,
    vocab: str | CharDataset,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    device: str | torch.device | None = None,
) -> Iterator[str]:
    """The generated characters one by one, as they are produced (the prompt is not repeated).

    ``vocab`` is the model's vocabulary (``LoadedCheckpoint.vocab``) or the seed's ``CharDataset``.
    ``device`` moves the model there (default: where it is); on CUDA it runs in bf16 autocast.

    >>> for ch in stream(ckpt.model, "ROMEO:", vocab=ckpt.vocab, seed=0): print(ch, end="")  # doctest: +SKIP
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    chars = CharDataset.from_text("", vocab=vocab if isinstance(vocab, str) else vocab.chars)
    if not prompt:
        raise BadInput("the prompt is empty; give at least one character to start from")
    ids = chars.encode(prompt).tolist()  # an unknown character is a BadInput now, not at the first next()
    device = pick_device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    sample = functools.partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return (chars.idx_to_char[i] for i in _continue(model, ids, max_new_tokens, sample, device))


# Below this many parameters a decoding step is too small to split: more CPU threads only wait for each
# other. With one core busy elsewhere, a 128-token forward of the bundled 0.8M-parameter model took 8.2 ms
# on 2 threads and 5.4 ms on 1 (benchmarks/generate.py, threads_under_load; an earlier report saw 12x).
ONE_THREAD_BELOW = 20_000_000


def decoding_threads(model: GPT2Model, device: torch.device) -> int:
    """CPU threads a decoding step of ``model`` should use: one for a small model, all torch has otherwise."""
    if device.type != "cpu":
        return torch.get_num_threads()
    parameters = sum(p.numel() for p in model.parameters())
    return 1 if parameters < ONE_THREAD_BELOW else torch.get_num_threads()


def _continue(model: GPT2Model, ids: list[int], max_new_tokens: int, sample, device: torch.device) -> Iterator[int]:
    decoder = Decoder(model)
    window = model.config.max_seq_len
    threads, before = decoding_threads(model, device), torch.get_num_threads()
    try:
        for _ in range(max_new_tokens):
            torch.set_num_threads(threads)  # each step: the caller may use torch between two characters
            with torch.inference_mode(), inference_autocast(device):  # no autograd bookkeeping: ~7% per token on CPU
                if decoder.length == 0 or decoder.length + 1 > window:  # first step, or the window is full
                    decoder.reset()
                    logits = decoder.feed(torch.tensor([ids[-window:]], device=device))
                else:
                    logits = decoder.feed(torch.tensor([ids[-1:]], device=device))
            ids.append(sample(logits[0]))
            torch.set_num_threads(before)
            yield ids[-1]
    finally:
        torch.set_num_threads(before)


def generate(model: GPT2Model, prompt: str, **options) -> str:
    """The prompt followed by ``max_new_tokens`` generated characters (options as :func:`stream`).

    >>> generate(ckpt.model, "To be or not to be", vocab=ckpt.vocab, max_new_tokens=100, seed=42)  # doctest: +SKIP
    'To be or not to be...'
    """
    return prompt + "".join(stream(model, prompt, **options))


def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise BadInput(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise BadInput(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise BadInput(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise BadInput(f"--top-p must be in (0, 1], got {top_p}")
