"""Load a checkpoint file safely into a ready model: weights-only unpickling, memory-mapped, nothing run.

Every file is read with ``torch.load(path, weights_only=True, mmap=True, map_location="cpu")``: a
pickle that would need arbitrary code is refused before any of it runs, and the memory map means
only the tensors we touch are read — an optimizer state two thirds of the file never leaves the disk
when the model is loaded for evaluation. The model is built without running its initialisers and
takes the mapped tensors as its parameters (``assign=True``), so no weight is initialised or copied.

Accepted files:

- the published PhaseGPT training dict (PHASEGPT_FORMAT.md §4): ``model_state_dict`` plus the YAML
  ``config``; original coupling mode implied, vocabulary from the corpus;
- our own training dicts: the same plus ``vocab`` and the coupling mode (in ``config["model"]`` or a
  top-level ``coupling_mode``);
- a bare state dict: the config is read off the tensor shapes (``--config`` where it cannot be);
- a safetensors file written by :func:`convert`, config and vocabulary in its metadata.

Whatever the file did not say and was assumed or looked up (a bare state dict's config, the coupling
mode of a published file, a vocabulary from the corpus) is said once on stderr by the loader itself,
so every command that loads a file says it.

>>> ckpt = load_checkpoint("best_model.pt", data="input.txt")      # doctest: +SKIP
>>> ckpt.model, ckpt.config.phase_layers, ckpt.coupling_mode, len(ckpt.vocab)  # doctest: +SKIP
(GPT2Model(...), [7], 'original', 65)
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError
from safetensors import safe_open
from safetensors.torch import save_model

from model import GPT2Config, GPT2Model
from phasegpt_ckpt.atomic import atomic_path, write_text
from phasegpt_ckpt.errors import BadInput, VerificationFailed
from phasegpt_ckpt.models.data import CharDataset, corpus_or_bundled
from phasegpt_ckpt.models.device import pick_device
from phasegpt_ckpt.models.formats import sniff
from phasegpt_ckpt.training.schedule import schedule_note
from phasegpt_ckpt.yamlio import read_yaml

log = logging.getLogger(__name__)

TRAINING_FIELDS = ("epoch", "global_step", "best_val_loss", "best_val_ppl")
SAFETENSORS_FORMAT = "phasegpt-ckpt"  # the ``format`` entry of the metadata our converter writes
BLOCK_KEY = re.compile(r"blocks\.([0-9]{1,6})\.")  # a longer number is no layer of any model (and no int to read)
BUFFERS = (".attention.causal_mask", ".attention.last_R_param")  # state-dict entries that are no parameters (§1)
TIED = {"lm_head.weight": "token_embedding.weight"}  # the LM head IS the token embedding (§1)


@dataclass
class LoadedCheckpoint:
    """A model ready to use (eval mode, on its device) and what its file said about it."""

    model: GPT2Model
    config: GPT2Config
    vocab: str
    path: Path
    kind: str  # "phasegpt" (published layout), "phasegpt-ckpt" (ours), "state_dict", "safetensors"
    full_config: dict  # every config section of the file (``{"model": ...}`` when it had none)
    epoch: Optional[int] = None
    global_step: Optional[int] = None
    best_val_loss: Optional[float] = None
    best_val_ppl: Optional[float] = None
    training_state: Optional[dict] = None  # the raw dict without model weights, when asked for
    inferred: list[str] = field(default_factory=list)  # what was not in the file and how we got it

    @property
    def coupling_mode(self) -> str:
        return self.config.coupling_mode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class _Extension(BaseModel):
    """One stretch of the schedule by ``resume --epochs`` (what ``info`` reports)."""

    model_config = ConfigDict(extra="allow", strict=True)

    from_epochs: int
    to_epochs: int
    at_step: int


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    planned_epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    warmup_steps: Optional[int] = None
    total_steps: Optional[int] = None
    extensions: Optional[list[_Extension]] = None


class _Config(BaseModel):
    """The YAML config sections a checkpoint carries; those read must be mappings."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Optional[dict] = None
    data: Optional[dict] = None
    training: Optional[dict] = None


class _Extras(BaseModel):
    """The entries beside the weights that the tool reads, in the types it reads them; the rest pass as they are.

    >>> _Extras.model_validate({"vocab": 65})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 2 validation errors for _Extras
    ...
    """

    model_config = ConfigDict(extra="allow", strict=True)

    vocab: Optional[Union[str, list[str]]] = None
    coupling_mode: Optional[str] = None
    epoch: Optional[StrictInt] = None
    global_step: Optional[StrictInt] = None
    schedule: Optional[_Schedule] = None
    config: Optional[_Config] = None
    metrics: Optional[dict] = None
    provenance: Optional[dict] = None
    training_time_s: Optional[float] = None
    tool_version: Optional[str] = None


@dataclass
class _Contents:
    """What a file holds, tensors still memory-mapped: the weights and everything beside them."""

    kind: str
    state: dict[str, torch.Tensor]
    extras: dict[str, Any]  # top-level entries besides the weights (safetensors: decoded metadata)


def load_checkpoint(
    path: str | Path,
    *,
    config: GPT2Config | dict | str | Path | None = None,
    data: str | Path | None = None,
    device: str | torch.device = "cpu",
    load_training_state: bool = False,
) -> LoadedCheckpoint:
    """Load ``path`` into a model in eval mode on ``device``.

    Nothing is downloaded and nothing of the pickle runs: a file the caller must vouch for is checked
    before it comes here (``Store.load`` checks a cached artifact's sha256 first). ``config`` (a ``GPT2Config``, a YAML
    model section or whole config dict, or a YAML file) replaces the file's own; it is needed only
    for a bare state dict whose shapes do not tell ``n_heads``. The vocabulary comes from the file,
    else from the corpus ``data`` (a path; default: the copy bundled with the package).
    ``load_training_state`` keeps the rest of a training dict (optimizer, scheduler, RNG) in
    ``training_state`` for resuming; its tensors stay memory-mapped until used.

    >>> ckpt = load_checkpoint("runs/tiny/best_model.pt", device="cpu")     # doctest: +SKIP
    >>> logits, _ = ckpt.model(torch.zeros(1, 8, dtype=torch.long))          # doctest: +SKIP
    """
    path = Path(path)
    contents = _read(path)
    model_config, full_config, inferred = _resolve_config(contents, config)
    model = build_model(model_config, contents.state, name=path.name)
    vocab = contents.extras.get("vocab")
    if vocab is None:
        vocab, source = _corpus_vocabulary(data)
        inferred.append(f"vocabulary from {source}")
    _say(inferred, path)
    vocab = "".join(vocab)
    if len(vocab) != model_config.vocab_size:
        raise BadInput(f"the vocabulary has {len(vocab)} characters but the model's vocab_size is "
                       f"{model_config.vocab_size}; pass --data with the corpus the model was trained on")
    model = model.to(pick_device(device)).eval()
    extras = contents.extras
    return LoadedCheckpoint(
        model=model, config=model_config, vocab=vocab, path=path, kind=contents.kind,
        full_config=full_config, inferred=inferred,
        training_state=extras if load_training_state else None,
        **{name: extras.get(name) for name in TRAINING_FIELDS},
    )


def build_model(config: GPT2Config, state: dict[str, torch.Tensor], *, name: str = "the file") -> GPT2Model:
    """A model of ``config`` whose parameters ARE the tensors of ``state`` (no init, no copy).

    Tied parameters (the LM head and the token embedding) are tied again afterwards: ``assign``
    would otherwise give each name its own Parameter, which training would then update apart.
    The config must agree with the weights' main shapes before the model is built, so a config claiming
    more than the file holds allocates nothing; weights that are not floating point, or not finite,
    are refused.
    """
    tied_kept_once = {kept: state[head] for head, kept in TIED.items() if head in state}  # a safetensors file's
    _check_fit(_main_shapes(config), {**tied_kept_once, **state}, config, name, complete=False)
    _check_values(state, name)
    with _InitialisersSkipped():
        model = GPT2Model(config=config)
    ties = _tied_names(model)
    state = dict(state)
    for names in ties:  # safetensors files keep one name of a tied group
        present = next((n for n in names if n in state), None)
        for n in names:
            if present is not None and n not in state:
                state[n] = state[present]
    _check_fit({k: v.shape for k, v in model.state_dict().items()}, state, config, name)
    for names in ties:
        first = state[names[0]]
        if any(not torch.equal(first, state[n]) for n in names[1:]):
            raise BadInput(f"{name}: {' and '.join(names)} differ, but the model ties them (same tensor)")
    model.load_state_dict(state, strict=True, assign=True)
    for names in ties:
        shared = model.get_parameter(names[0])
        for n in names[1:]:
            owner, _, leaf = n.rpartition(".")
            setattr(model.get_submodule(owner), leaf, shared)
    return model


class _InitialisersSkipped(torch.overrides.TorchFunctionMode):
    """Build modules without running their in-place initialisers (``normal_``, ``uniform_``, ``zero_``...).

    Every parameter and buffer is then replaced by the file's tensor (``strict=True``), so the
    initial values are never used: skipping them saves seconds of random numbers for 85M parameters,
    and the untouched ``torch.empty`` storages never become resident memory. (The ``meta`` device
    would do the same, but its first ``normal_`` or ``tril`` imports torch._dynamo: seconds more.)
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):  # in place, by PyTorch's naming rule
            return args[0] if args else kwargs["tensor"]  # nn.init functions pass the tensor by keyword
        return func(*args, **kwargs)


def _tied_names(model: torch.nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor, e.g. [['token_embedding.weight', 'lm_head.weight']]."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    return [names for names in groups.values() if len(names) > 1]


def _read(path: Path) -> _Contents:
    """The weights and the rest of ``path``, by weights-only unpickling or safetensors; nothing executed.

    A file that is none of these is a one-line BadInput saying what it is: truncated (a zip archive
    without its end, a safetensors header or body cut short), or not a checkpoint at all.
    """
    if not path.is_file():
        raise BadInput(f"checkpoint {path} does not exist")
    sniffed = sniff(path)
    if sniffed.problem is not None:
        raise BadInput(sniffed.problem)
    contents = _read_safetensors(path) if sniffed.kind == "safetensors" else _unpickle(path)
    try:
        _Extras.model_validate(contents.extras)
    except ValidationError as err:  # the entry's name and the first problem (a union's member names left out)
        problem = err.errors()[0]
        raise BadInput(f"{path} is not a usable checkpoint: its entry {problem['loc'][0]}: {problem['msg']}") from None
    return contents


def _unpickle(path: Path) -> _Contents:
    """A ``torch.save`` file, weights-only (a pickle that would run code is refused, naming what it imports)."""
    try:
        obj = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise VerificationFailed(
                f"refused: {path} needs arbitrary pickle code to load ({', '.join(unsafe[:3])}) and the code was "
                "not run; only a file of plain tensors and containers is loaded") from None
        raise BadInput(f"{path} is not a readable checkpoint: {_first_line(err)}") from None
    except Exception as err:  # a damaged archive surfaces as RuntimeError, EOFError, ... from torch's reader
        raise BadInput(f"{path} is not a readable checkpoint: {_first_line(err)}") from None
    return _contents_of(obj, path)


def _contents_of(obj: Any, path: Path) -> _Contents:
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        extras = {k: v for k, v in obj.items() if k != "model_state_dict"}
        ours = "vocab" in extras or "coupling_mode" in extras
        return _Contents("phasegpt-ckpt" if ours else "phasegpt", _weights(obj["model_state_dict"], path), extras)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _Contents("state_dict", _weights(obj, path), {})
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
    raise BadInput(f"{path} holds neither a model_state_dict nor model weights (found: {keys})")


def _weights(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """``state`` if it maps names to tensors (what a state dict is); one line naming the first entry that does not.

    >>> _weights({"a.weight": 3}, Path("x.pt"))
    Traceback (most recent call last):
    ...
    phasegpt_ckpt.errors.BadInput: x.pt is not a usable checkpoint: its weight 'a.weight' is a int, not a tensor
    """
    for key, value in state.items():
        if not isinstance(key, str):
            raise BadInput(f"{path} is not a usable checkpoint: its weights are named by a {type(key).__name__} "
                           f"({str(key)[:40]!r}), not a parameter name")
        if not isinstance(value, torch.Tensor):
            raise BadInput(f"{path} is not a usable checkpoint: its weight {key[:80]!r} is a "
                           f"{type(value).__name__}, not a tensor")
    return state


def _unsafe_globals(path: Path) -> list[str]:
    """The code a pickle would import to load (read from its opcodes, never executed)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # unreadable opcodes: the caller reports the load error instead
        return []


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _read_safetensors(path: Path) -> _Contents:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError for any malformed header
        reason = _first_line(err)
        if "not fully covered" in reason or "incomplete" in reason:
            raise BadInput(f"{path} is truncated: its safetensors header names more tensor bytes than the "
                           f"file holds ({reason})") from None
        raise BadInput(f"{path} is not a readable safetensors file: {reason}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        return _Contents("state_dict", state, {})
    extras = {key: _metadata_json(metadata[key], key, path) for key in ("config", "vocab", "training")
              if key in metadata}
    training = extras.pop("training", {})
    if not isinstance(training, dict):
        raise BadInput(f"{path} is not a usable checkpoint: its safetensors metadata 'training' is not a JSON object")
    return _Contents("safetensors", state, {**extras, **training})


def _metadata_json(text: str, key: str, path: Path) -> Any:
    """One entry of the metadata :func:`convert` writes, decoded (the header's size is bounded by safetensors)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # not JSON, a number of 5000 digits, nested past the stack
        raise BadInput(f"{path} is not a usable checkpoint: its safetensors metadata {key!r} is not readable JSON "
                       f"({type(err).__name__})") from None


def _resolve_config(contents: _Contents, given) -> tuple[GPT2Config, dict, list[str]]:
    """(model config, every config section, notes on what was inferred) for the file's weights.

    The model section is the file's, or for a bare state dict what its shapes tell; ``given`` (the
    caller's config) is laid over it, key by key, so it needs to say only what is missing or wrong.
    """
    given = _config_dict(given) if given is not None else None
    carried = contents.extras.get("config")
    if not (isinstance(carried, dict) and isinstance(carried.get("model"), dict)):
        config, inferred = infer_config(contents.state, given and given["model"])
        return config, {**(given or {}), "model": config.to_dict()}, inferred
    full, inferred = carried, []
    if given is not None:
        full = {**carried, **given, "model": {**carried["model"], **given["model"]}}
        inferred.append(f"model settings {', '.join(given['model'])} given by the caller, over the file's")
    section = dict(full["model"])
    if "coupling_mode" not in section:
        section["coupling_mode"] = contents.extras.get("coupling_mode", "original")
        if "coupling_mode" not in contents.extras:
            inferred.append("coupling mode 'original' (the published layer; the file records none)")
    try:
        return GPT2Config.from_dict(section), full, inferred
    except (TypeError, ValueError) as err:
        raise BadInput(f"the checkpoint's model config is unusable: {err}") from None


def _config_dict(given) -> dict:
    """A config the caller passed (object, dict or YAML path) as a dict of sections with a ``model`` one."""
    if isinstance(given, GPT2Config):
        return {"model": given.to_dict()}
    if not isinstance(given, dict):
        path = Path(given)
        given = read_yaml(path, "model config")
        if not isinstance(given, dict):
            raise BadInput(f"model config {path} must be a YAML mapping (a `model:` section or its keys)")
    return given if isinstance(given.get("model"), dict) else {"model": given}


def infer_config(state: dict[str, torch.Tensor], given: Optional[dict] = None) -> tuple[GPT2Config, list[str]]:
    """Read a model config off a bare state dict's tensor shapes, ``given`` settings laid over; say what was read.

    ``n_heads`` shows only in a phase layer's ``natural_freq`` [n_heads, num_oscillators]; a model
    without phase layers needs it from ``--config``.
    """
    try:
        vocab_size, d_model = state["token_embedding.weight"].shape
        max_seq_len = state["position_embedding.weight"].shape[0]
        n_layers = 1 + max(int(m.group(1)) for k in state if (m := BLOCK_KEY.match(k)))
        d_ff = state["blocks.0.ffn.0.weight"].shape[0]
        phase_layers = sorted(int(m.group(1)) for k in state
                              if k.endswith(".attention.natural_freq") and (m := BLOCK_KEY.match(k)))
        settings = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_ff=d_ff, max_seq_len=max_seq_len,
                        use_phase_attention=bool(phase_layers), phase_layer_idx=phase_layers)
        if phase_layers:
            n_heads, num_oscillators = state[f"blocks.{phase_layers[0]}.attention.natural_freq"].shape
            settings.update(n_heads=n_heads, num_oscillators=num_oscillators)
    except (KeyError, ValueError, IndexError):  # missing, or of another number of dimensions
        raise BadInput("these weights are not a PhaseGPT model: token_embedding, position_embedding, "
                       "blocks.0.ffn or a phase layer's natural_freq are missing or of another shape") from None
    given = dict(given or {})
    if "n_heads" not in settings and "n_heads" not in given:
        raise BadInput("a bare state dict without phase layers does not tell n_heads; pass --config FILE "
                       "(a YAML with `model: {n_heads: N}` and anything else the shapes cannot tell)")
    try:
        config = GPT2Config.from_dict({**settings, "coupling_mode": "original", **given})
    except (TypeError, ValueError) as err:
        raise BadInput(f"the shapes of these weights and the config given make no valid model: {err}") from None
    shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "use_phase_attention" and k not in given)
    notes = [f"model config read off the tensor shapes: {shown}"]
    if given:
        notes.append(f"model settings {', '.join(given)} given by the caller")
    if "phase_iterations" not in given and phase_layers:
        notes.append(f"phase_iterations {config.phase_iterations} assumed (the published code's; shapes do not show it)")
    if "coupling_mode" not in given and phase_layers:
        notes.append("coupling mode 'original' assumed (a bare state dict records none; "
                     "pass --config with coupling_mode: causal for a causal model)")
    return config, notes


def _main_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors that size every other one (embeddings, each block's FFN), from ``config`` alone.

    >>> _main_shapes(GPT2Config(vocab_size=65, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    {'token_embedding.weight': (65, 32), 'position_embedding.weight': (64, 32), 'blocks.0.ffn.0.weight': (128, 32)}
    """
    return {"token_embedding.weight": (config.vocab_size, config.d_model),
            "position_embedding.weight": (config.max_seq_len, config.d_model),
            **{f"blocks.{i}.ffn.0.weight": (config.d_ff, config.d_model) for i in range(config.n_layers)}}


def _check_values(state: dict[str, torch.Tensor], name: str) -> None:
    """Weights must be floating point and finite: int8 weights are quantised for another runtime, and a NaN
    would only come out as a NaN loss after minutes of evaluation (or break the tied-weights check)."""
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise BadInput(f"{name}: weight {key} is {str(tensor.dtype).removeprefix('torch.')}; PhaseGPT weights "
                           "are floating point (float32, float16 or bfloat16): dequantise them first")
    for key, tensor in state.items():
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            raise VerificationFailed(f"{name}: weight {key} holds {bad} NaN or infinite values of {tensor.numel()}: "
                                     "the weights are broken (a diverged run?) and cannot be evaluated")


def _check_fit(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], config: GPT2Config, name: str,
               *, complete: bool = True) -> None:
    """One line naming missing/unexpected keys and wrong shapes, and the config setting likely at fault;
    ``complete=False`` when ``expected`` names only some of the model's tensors (no key is then unexpected)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected] if complete else []
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = [f"{label} {_some(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    parts += [f"{k} is {list(state[k].shape)} in the file but {list(expected[k])} in the model" for k in wrong[:3]]
    causes = _likely_causes(missing + unexpected, wrong, state, config)
    raise BadInput(f"the weights in {name} do not fit the model config: {'; '.join(parts)}"
                   + (f"; likely cause: {', or '.join(causes)}" if causes else ""))


def _some(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _likely_causes(misplaced: list[str], wrong: list[str], state: dict, config: GPT2Config) -> list[str]:
    causes = []
    file_layers = sorted({int(BLOCK_KEY.match(k).group(1)) for k in state if BLOCK_KEY.match(k)})
    if misplaced and len(file_layers) != config.n_layers:
        causes.append(f"n_layers (the file has {len(file_layers)} blocks, the config {config.n_layers})")
    elif any(".attention." in k for k in misplaced):
        file_phase = [i for i in file_layers if f"blocks.{i}.attention.natural_freq" in state]
        causes.append(f"phase_layer_idx (the file's phase layers are {file_phase}, the config's {config.phase_layers})")
    if any(k.endswith(("natural_freq", "to_phase.weight", "from_phase.weight")) for k in wrong):
        freq = next(state[k].shape for k in state if k.endswith("natural_freq"))
        causes.append(f"num_oscillators or n_heads (the file's natural_freq is {list(freq)}, "
                      f"the config's [{config.n_heads}, {config.num_oscillators}])")
    embedding, positions = state.get("token_embedding.weight"), state.get("position_embedding.weight")
    vocab, file_width = embedding.shape if embedding is not None and embedding.dim() == 2 else (None, config.d_model)
    if vocab is not None and vocab != config.vocab_size:
        causes.append(f"vocab (the file has {vocab} characters, the config vocab_size {config.vocab_size})")
    if "position_embedding.weight" in wrong and positions.dim() == 2:
        causes.append(f"max_seq_len (the file has {positions.shape[0]} positions)")
    if file_width != config.d_model:
        causes.append(f"d_model (the file's is {file_width}, the config's {config.d_model})")
    elif any(".ffn." in k for k in wrong):
        causes.append("d_ff")
    return causes


def _corpus_vocabulary(data: str | Path | None) -> tuple[str, str]:
    path = corpus_or_bundled(data)
    source = f"the corpus {path}" if data is not None else "the tinyshakespeare corpus bundled with the package"
    return CharDataset(path).chars, source


def _say(inferred: list[str], path: Path) -> None:
    """What was not in the file, on stderr: a number measured on an assumed config must say so."""
    for note in inferred:
        log.info(f"note: {path.name}: {note}")


def describe(path: str | Path, *, config: GPT2Config | dict | str | Path | None = None) -> dict:
    """What ``info`` shows about a checkpoint, read without touching a single weight.

    ``schedule`` says when a resumed run stretched its schedule.

    >>> describe("best_model.pt")["phase_layers"]                           # doctest: +SKIP
    [7]
    """
    path = Path(path)
    contents = _read(path)
    extras = contents.extras
    try:
        model_config, _, inferred = _resolve_config(contents, config)
        _say(inferred, path)
    except BadInput as err:  # the contents are still worth showing; the config's problem is shown with them
        model_config, inferred = None, [str(err)]
    dtypes = Counter(str(tensor.dtype).removeprefix("torch.") for tensor in contents.state.values())
    weight_bytes = _tensor_bytes(contents.state)
    optimizer_bytes = _tensor_bytes(extras.get("optimizer_state_dict"))
    return {
        "path": str(path),
        "format": contents.kind,
        "file_bytes": path.stat().st_size,
        **{name: extras.get(name) for name in TRAINING_FIELDS},
        "parameters": _parameter_count(contents.state),
        "phase_layers": sorted(int(BLOCK_KEY.match(k).group(1)) for k in contents.state
                               if k.endswith(".attention.natural_freq")),
        "coupling_mode": model_config.coupling_mode if model_config else None,
        "config": model_config.to_dict() if model_config else None,
        "dtypes": dict(dtypes),
        "weight_bytes": weight_bytes,
        "optimizer_bytes": optimizer_bytes,
        "other_bytes": path.stat().st_size - weight_bytes - optimizer_bytes,
        "vocab_in_file": "vocab" in extras,
        "rng_state": "rng_state" in extras,
        "schedule": schedule_note(extras.get("schedule")),
        "inferred": inferred,
    }


def _parameter_count(state: dict[str, torch.Tensor]) -> int:
    """Parameters of the model a state dict fills, from its shapes: buffers left out, tied ones once."""
    return sum(tensor.numel() for key, tensor in state.items()
               if not key.endswith(BUFFERS) and TIED.get(key) not in state)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in a nested container (a tied tensor counts once)."""
    seen: dict[int, int] = {}

    def walk(item):
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                walk(value)

    walk(obj)
    return sum(seen.values())


def export_config(path: str | Path, out: str | Path | None = None, *,
                  config: GPT2Config | dict | str | Path | None = None) -> str:
    """The checkpoint's config as YAML (the seed's "Extract Configuration"); also written to ``out``.

    Every section the file carries (``model``, ``training``, ``data``, ...) as it carries them; a
    bare state dict gives the ``model`` section read off its shapes, or ``config``'s where the shapes
    cannot tell it (as :func:`load_checkpoint` would load it). No weight is read.

    >>> print(export_config("best_model.pt"))                               # doctest: +SKIP
    model:
      type: gpt2
      n_layers: 12
    ...
    """
    path = Path(path)
    _, full_config, _ = _resolve_config(_read(path), config)
    text = yaml.safe_dump(full_config, sort_keys=False)
    if out is not None:
        write_text(text, out)
    return text


def convert(ckpt: LoadedCheckpoint, out: str | Path) -> Path:
    """Write the weights as safetensors with config, vocabulary and coupling mode in its metadata.

    :func:`load_checkpoint` reads the file back to the same model.

    >>> convert(load_checkpoint("best_model.pt"), "best_model.safetensors")   # doctest: +SKIP
    """
    full_config = {**ckpt.full_config, "model": ckpt.config.to_dict()}  # the coupling mode made explicit
    training = {name: getattr(ckpt, name) for name in TRAINING_FIELDS if getattr(ckpt, name) is not None}
    metadata = {"format": SAFETENSORS_FORMAT, "config": json.dumps(full_config),
                "vocab": json.dumps(ckpt.vocab), "training": json.dumps(training)}
    out = Path(out)
    with atomic_path(out) as temp:
        save_model(ckpt.model, str(temp), metadata=metadata)
    return out


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """``torch.save`` through a temporary file beside ``path``: no truncated file, ever."""
    path = Path(path)
    with atomic_path(path) as temp:
        torch.save(checkpoint, temp)
    return path
