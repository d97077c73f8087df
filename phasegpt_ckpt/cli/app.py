"""The ``phasegpt-ckpt`` command line: parse, call the :class:`~phasegpt_ckpt.Store`, render. Nothing else.

Exit codes: 0 ok · 1 verification failed · 2 bad input · 3 every mirror failed · 130 interrupted.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from phasegpt_ckpt.cli import render as console
from phasegpt_ckpt.errors import MirrorsExhausted, PhasegptError

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C or SIGTERM

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fetch, verify, evaluate, generate from and resume PhaseGPT checkpoints.",
)


@dataclass
class Options:
    """Global options, given before the command (``phasegpt-ckpt --offline fetch ...``)."""

    manifest: Optional[Path] = None
    cache_dir: Optional[Path] = None
    offline: bool = False


options = Options()


@app.callback()
def _global(
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", envvar="PHASEGPT_MANIFEST", help="Manifest YAML to use instead of the shipped one."
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", envvar="PHASEGPT_CACHE", help="Cache directory (default: the user cache)."
    ),
    offline: bool = typer.Option(
        False, "--offline", envvar="PHASEGPT_OFFLINE", help="Use the cache and local mirrors only; never touch the network."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, status lines, warnings or tables on "
                               "stderr: results and the one error line only."),
) -> None:
    options.manifest, options.cache_dir, options.offline = manifest, cache_dir, offline
    console.setup(quiet)


# -- distribution: list, fetch, verify, info, import ----------------------------------------------
# Engine modules are imported inside the commands: `--help` and unrelated commands stay fast.

JSON_OUTPUT = typer.Option(False, "--json", help="Print one JSON document on stdout.")
DATA_OPTION = typer.Option(None, "--data", help="Corpus text file (default: the verified tinyshakespeare artifact, "
                           "bundled with the package).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps; "
                             "CUDA runs in bf16 autocast.")
MODEL_CONFIG_OPTION = typer.Option(None, "--config", help="Model config YAML, for a bare state dict whose "
                                   "shapes do not tell it (n_heads without a phase layer).")


def _store():
    """The Store of the global options, drawing progress bars when stderr is a terminal."""
    from phasegpt_ckpt.store.store import Store

    return Store(options.manifest, options.cache_dir, options.offline or None, progress=_bars())


def _bars():
    global _open_bars
    if _open_bars is None and console.show_progress():
        _open_bars = console.Bars()
    return _open_bars


_open_bars = None


@app.command("list")
def list_artifacts(json_output: bool = JSON_OUTPUT) -> None:
    """Every artifact of the manifest: kind, whether it is cached, and its mirrors."""
    from rich.table import Table

    rows = _store().list()
    if json_output:
        return console.print_json(rows)
    unpublished = any(not m["published"] for row in rows for m in row["mirrors"])
    table = Table(caption="* listed, not published yet" if unpublished else None, caption_justify="left")
    table.add_column("artifact", no_wrap=True)  # what every other command is given: never cut
    for column in ("kind", "size", "sha256", "cached", "mirrors, in order"):
        table.add_column(column)
    for row in rows:
        mirrors = ", ".join(m["type"] + ("" if m["published"] else "*") for m in row["mirrors"])
        sha256 = row["sha256"][:10] + "…" if row["sha256"] else "unpublished"
        cached = "no" if row["cached"] is None else "yes" if row["cached"].startswith("pinned") else "yes, unpinned"
        table.add_row(row["name"], row["kind"], _megabytes(row["size"]), sha256, cached, mirrors)
    console.stdout.print(table)


def _megabytes(size: Optional[int]) -> str:
    """``1115394`` → ``1.1 MB``; None → ``?`` (not published)."""
    return "?" if size is None else f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} B"


@app.command()
def fetch(
    names: Optional[list[str]] = typer.Argument(None, help="Artifacts to fetch (default: the manifest's default)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Also place each verified file in this directory."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Try only mirrors of this type (hf, url, ...)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Download artifacts from their first working mirror, verified, into the cache."""
    from dataclasses import asdict

    store = _store()
    documents, failure = [], None
    for result in store.fetch_all(names or [store.manifest.artifact().name], mirror_type=mirror, dest=dest):
        if isinstance(result, MirrorsExhausted):
            _show_outcomes(result.outcomes)
            documents.append({"name": result.name, "error": str(result), "outcomes": [asdict(o) for o in result.outcomes]})
            failure = failure or result
            continue
        documents.append(asdict(result))
        if any(outcome.status != "ok" for outcome in result.outcomes):
            _show_outcomes(result.outcomes)  # say which mirrors were skipped, and why
        if not json_output:
            _print_fetched(result)
    if json_output:
        console.print_json(documents)
    if failure:
        raise failure


@app.command("import")
def import_artifact(
    name: str = typer.Argument(..., help="The artifact the file should be."),
    path: Path = typer.Argument(..., help="A copy obtained elsewhere (a USB stick, ../shared, a colleague)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Check a local file against the manifest and put it in the cache (air-gapped machines, CI)."""
    from dataclasses import asdict

    imported = _store().import_file(name, path)
    if json_output:
        return console.print_json(asdict(imported))
    _print_fetched(imported)


@app.command()
def verify(
    refs: Optional[list[str]] = typer.Argument(None, help="Artifact names or file paths (default: every cached artifact)."),
    evaluate: bool = typer.Option(False, "--eval", help="Also load each checkpoint, measure validation PPL and R "
                                  "and check them against the claims of the manifest and metadata JSON."),
    data: Optional[Path] = DATA_OPTION,
    device: str = DEVICE_OPTION,
    causality: bool = typer.Option(False, "--causality", help="With --eval: do logits see later tokens? If so, "
                                   "also the PPL of predicting each position from its prefix only."),
    causality_windows: int = typer.Option(4, "--causality-windows", min=1,
                                          help="Validation windows the causality audit uses (its cost grows with them)."),
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Re-hash files and check size and sha256 against the manifest, the receipt and the metadata JSON.

    With --eval, also what a checkpoint does: validation loss, PPL and R against the claims."""
    from phasegpt_ckpt.errors import VerificationFailed

    store = _store()
    evaluation = dict(evaluate=evaluate, data=data, device=device, causality=causality,
                      causality_windows=causality_windows, config=model_config)
    if refs:
        verdicts = [store.verify(ref, **evaluation) for ref in refs]
    else:
        verdicts = store.verify_cached(**evaluation)
        if not verdicts:
            console.LOGGER.info(f"nothing cached in {store.cache.root} to verify")
    if json_output:
        console.print_json([verdict.as_dict() for verdict in verdicts])
    else:
        for verdict in verdicts:
            _print_verdict(verdict)
            if verdict.evaluation is not None:
                _print_evaluation(verdict.evaluation)
    failed = [verdict for verdict in verdicts if not verdict.ok]
    if failed:
        first = failed[0].first_failure()
        raise VerificationFailed(
            f"{', '.join(v.subject for v in failed)} failed verification: "
            f"{first.check} is {first.actual}, expected {first.expected}"
        )


@app.command()
def info(
    ref: Optional[str] = typer.Argument(None, help="Artifact name or file path (default: the manifest's default)."),
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
    json_output: bool = JSON_OUTPUT,
) -> None:
    """What is known about an artifact or file: manifest entry, receipt, metadata JSON, checkpoint contents.

    For a checkpoint: epoch, step, best loss/PPL, parameters, phase layers, coupling mode, dtypes,
    and the bytes of weights vs optimizer state — read without loading a weight."""
    facts = _store().info(ref, config=model_config)
    if json_output:
        return console.print_json(facts)
    _print_facts(facts)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="Text to continue; every character must be in the model's vocabulary."),
    model: Optional[str] = typer.Option(None, "--model", help="Artifact name or checkpoint path "
                                        "(default: the manifest's default)."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", help="Characters to generate."),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature; 0 picks the likeliest."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k likeliest characters only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample within the smallest set of probability p."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Same seed, same text (sample i uses seed + i)."),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Independent continuations of the prompt."),
    device: str = DEVICE_OPTION,
    data: Optional[Path] = DATA_OPTION,
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
) -> None:
    """Continue a prompt: stdout gets exactly the prompt and the generated text, as it is produced."""
    from phasegpt_ckpt.models.generate import stream

    ckpt = _store().load(model, data=data, device=device, config=model_config)
    for i in range(num_samples):
        chars = stream(ckpt.model, prompt, vocab=ckpt.vocab, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=None if seed is None else seed + i)
        if i:
            _write("\n" + "-" * 40 + "\n")
        _write(prompt)
        for ch in chars:
            _write(ch)
    if sys.stdout.isatty():
        _write("\n")


@app.command()
def analyze(
    ref: Optional[str] = typer.Argument(None, help="Artifact name or checkpoint path (default: the manifest's default)."),
    num_tokens: int = typer.Option(512, "--num-tokens", min=1, help="Characters per window (cut to the model's "
                                   "max_seq_len)."),
    windows: int = typer.Option(16, "--windows", min=1, help="Validation windows of --num-tokens characters; "
                                "R's mean and std run over them."),
    device: str = DEVICE_OPTION,
    data: Optional[Path] = DATA_OPTION,
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Synchronisation of each phase layer: order parameter R per layer and head (mean, std) and coupling K."""
    from rich.table import Table

    stats = _store().analyze(ref, num_tokens=num_tokens, device=device, windows=windows, data=data,
                             config=model_config)
    if json_output:
        return console.print_json(stats)
    if stats["R_mean"] is None:
        return console.stdout.print(f"{stats['path']}: no phase layer, nothing to analyze", markup=False)
    console.stdout.print(f"{stats['path']}: R {stats['R_mean']:.4f} ± {stats['R_std']:.4f} over {stats['windows']} "
                         f"windows of {stats['num_tokens']} tokens ({stats['coupling_mode']} coupling)", markup=False)
    table = Table("layer", "head", "R mean", "R std", "K")
    for layer in stats["layers"]:
        for head in layer["heads"]:
            table.add_row(str(layer["layer"]), str(head["head"]), f"{head['R_mean']:.4f}", f"{head['R_std']:.4f}",
                          f"{head['K']:+.4f}")
    console.stdout.print(table)


@app.command("config")
def config_command(
    ref: Optional[str] = typer.Argument(None, help="Artifact name or checkpoint path (default: the manifest's default)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the YAML here (default: stdout)."),
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
) -> None:
    """The checkpoint's config as YAML, every section it carries, ready for `train --config`."""
    text = _store().export_config(ref, output, config=model_config)
    if output is None:
        _write(text)
    else:
        console.note(f"wrote {output}")


@app.command()
def convert(
    ref: Optional[str] = typer.Argument(None, help="Artifact name or checkpoint path (default: the manifest's default)."),
    to: str = typer.Option(..., "--to", help="Target format: safetensors."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (default: NAME.safetensors here)."),
    data: Optional[Path] = DATA_OPTION,
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
) -> None:
    """Write the weights as safetensors, config, vocabulary and coupling mode in its metadata."""
    from phasegpt_ckpt.errors import BadInput
    from phasegpt_ckpt.models.checkpoint import convert as convert_checkpoint

    if to != "safetensors":
        raise BadInput(f"--to {to!r} is not a format convert writes; use --to safetensors")
    ckpt = _store().load(ref, data=data, device="cpu", config=model_config)
    out = convert_checkpoint(ckpt, output or Path(ckpt.path.stem + ".safetensors"))
    console.stdout.print(str(out), markup=False)


@app.command()
def publish(
    path: Path = typer.Argument(..., help="The checkpoint file to publish."),
    name: str = typer.Option(..., "--name", help="Its artifact name in the manifest (added, or updated in place)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The manifest to write (default: the global "
                                            "--manifest, else $PHASEGPT_MANIFEST, else the shipped one)."),
    to: Optional[str] = typer.Option(None, "--to", help="Upload to the Hub: hf:ORG/REPO (created if your token may; "
                                     "token from HF_TOKEN or the saved login). The mirror is pinned to the commit."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hub endpoint for --to (default: $HF_ENDPOINT, "
                                           "else huggingface.co); written into the mirror when given."),
    record: Optional[list[str]] = typer.Option(None, "--record", help="List a record published by hand, once its "
                                               "size and hash agree with the file: zenodo:ID, zenodo:DOI or osf:GUID."),
    evaluate: bool = typer.Option(False, "--eval", help="Measure validation PPL and R in float32 and write them "
                                  "as the claims (what `verify --eval` reproduces)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", min=0, help="With --eval: each claim's tolerance, "
                                              "as a fraction of its value (default 0.005 = 0.5%)."),
    data: Optional[Path] = DATA_OPTION,
    device: str = typer.Option("cpu", "--device", help="With --eval: where to measure (cpu: float32; CUDA runs bf16)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Hash a checkpoint, write its metadata JSON beside it, upload it, and add it to the manifest.

    The manifest keeps its order and comments; it is validated before it is replaced."""
    from dataclasses import asdict

    from phasegpt_ckpt.store.publish import hub_repo_of

    published = _store().publish(
        path, name, manifest=manifest, hub_repo=to and hub_repo_of(to), endpoint=endpoint,
        records=record or [], measure=evaluate, data=data, device=device,
        **({} if tolerance is None else {"tolerance": tolerance}))  # else publish's own default
    if json_output:
        return console.print_json(asdict(published))
    console.stdout.print(f"{published.name}: sha256 {published.sha256}, {published.size} bytes", markup=False)
    for claim, c in published.claims.items():
        console.stdout.print(f"  claim {claim}: {c['value']:g} ± {c['tolerance']:g}", markup=False)
    console.stdout.print(f"  metadata {published.metadata}: {published.metadata_path}", markup=False)
    console.stdout.print(f"  mirrors: {', '.join(published.mirrors) or 'none'}", markup=False)
    console.stdout.print(f"  manifest {published.manifest} updated", markup=False)


def _write(text: str) -> None:
    """Results that must reach stdout byte for byte and at once (streamed generation, YAML)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _print_fetched(fetched) -> None:
    origin = "from the cache" if fetched.from_cache else f"from {fetched.origin}"
    console.stdout.print(f"{fetched.name}: {fetched.path}", markup=False)
    console.stdout.print(f"  sha256 {fetched.sha256}, {fetched.size} bytes, {fetched.pin}, {origin}", markup=False)


def _show_outcomes(outcomes) -> None:
    """The per-mirror outcome table, on stderr: it explains an error, or the mirrors skipped on the way."""
    from rich.table import Table

    if not outcomes:
        return
    table = Table("mirror", "outcome", "detail", title="mirrors tried, in order", title_justify="left")
    for outcome in outcomes:
        table.add_row(outcome.mirror, outcome.status, outcome.detail)
    console.table(table)


def _print_verdict(verdict) -> None:
    """One line per check, hashes in full (they are what a person compares)."""
    console.stdout.print(f"{verdict.subject}: {verdict.path}", markup=False)
    for check in verdict.checks:
        expected = f" (expected {check.expected})" if check.status != "ok" and check.expected else ""
        console.stdout.print(f"  {check.status:<13} {check.check}: {check.actual}{expected}", markup=False)
    summary = "FAILED" if not verdict.ok else "verified" if verdict.pinned else "no mismatch, but no published sha256 vouches for it"
    console.stdout.print(f"  {summary}", markup=False)


def _print_evaluation(report) -> None:
    """Measured numbers, the claims table (claim, measured, tolerance, verdict), the causality audit."""
    from rich.table import Table

    m = report.measurement
    R = ", ".join(f"layer {r.layer} {r.mean:.4f} ± {r.std:.4f}" for r in m.R) or "no phase layer"
    console.stdout.print(f"  measured ({report.coupling_mode} coupling): validation loss {m.loss:.4f}, "
                         f"PPL {m.ppl:.4f} over {m.tokens} tokens in {m.windows} windows; R {R}", markup=False)
    if report.checks:
        table = Table("claim", "source", "claimed", "measured", "tolerance", "verdict")
        for c in report.checks:
            measured = "-" if c.measured is None else f"{c.measured:.4f}"
            tolerance = "-" if c.tolerance is None else f"± {c.tolerance:g}"
            table.add_row(c.claim, c.source, f"{c.value:g}", measured, tolerance, c.verdict)
        console.stdout.print(table)
    if report.causality is not None:
        console.stdout.print(f"  causality: {report.causality.explanation()}", markup=False)


def _print_facts(facts: dict, indent: int = 0) -> None:
    """Nested facts as indented ``key: value`` lines."""
    for key, value in facts.items():
        if isinstance(value, dict):
            console.stdout.print(f"{' ' * indent}{key}:", markup=False)
            _print_facts(value, indent + 2)
        elif isinstance(value, list):
            console.stdout.print(f"{' ' * indent}{key}:", markup=False)
            for item in value:
                shown = ", ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else item
                console.stdout.print(f"{' ' * (indent + 2)}- {shown}", markup=False)
        else:
            console.stdout.print(f"{' ' * indent}{key}: {value}", markup=False)


# -- training: train, resume (also under torchrun: rank 0 alone writes and prints) ---------------

PLOT = typer.Option(False, "--plot", help="Also write training.png: loss, PPL and R per epoch (needs matplotlib).")
COMPILE = typer.Option(False, "--compile", help="torch.compile the model (pays off on CUDA after a warm-up).")


@app.command()
def train(
    config: str = typer.Option(..., "--config", help="A shipped config NAME (tiny, phase_a_winner, baseline, ...) or a YAML PATH."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs in total (overrides training.max_epochs)."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", "--save_dir", help="Where checkpoints go (default: checkpoints/<experiment name>; --save_dir as the seed writes it works too)."),
    data: Optional[Path] = DATA_OPTION,
    device: str = DEVICE_OPTION,
    plot: bool = PLOT,
    compile: bool = COMPILE,
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Train from scratch: checkpoints, metrics.jsonl and best_model_info.json in --save-dir."""
    result = _store().train(config, epochs=epochs, save_dir=save_dir, data=data, device=device, plot=plot,
                            compile=compile)
    _print_run(result, json_output)


@app.command()
def resume(
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint: artifact NAME or file PATH (default: the manifest's default)."),
    epochs: int = typer.Option(..., "--epochs", min=1, help="Epochs in total; beyond the planned total the schedule is extended."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", "--save_dir", help="Where checkpoints go (default: beside a PATH, checkpoints/<NAME> for an artifact)."),
    data: Optional[Path] = DATA_OPTION,
    device: str = DEVICE_OPTION,
    plot: bool = PLOT,
    compile: bool = COMPILE,
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Continue a checkpoint exactly where it stopped (weights, AdamW, schedule, RNG, data position)."""
    result = _store().resume(model, epochs=epochs, save_dir=save_dir, data=data, device=device, plot=plot,
                             compile=compile)
    _print_run(result, json_output)


def _print_run(result, json_output: bool) -> None:
    """The run's outcome on stdout; nothing from the ranks other than 0 under torchrun."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    if json_output:
        return console.print_json(result.to_json())
    ppl = "n/a" if result.best_val_ppl is None else f"{result.best_val_ppl:.3f}"
    console.stdout.print(f"trained to epoch {result.epoch} (step {result.global_step}): best val loss "
                         f"{result.best_val_loss:.4f}, PPL {ppl}", markup=False)
    if result.schedule:
        console.stdout.print(f"  {result.schedule}", markup=False)
    for path in result.files:
        console.stdout.print(f"  {path}", markup=False)


def _run() -> int:
    """The command, with any progress bars it drew taken down before its last words."""
    global _open_bars
    console.setup(False)  # until the options say otherwise
    try:
        return app(standalone_mode=False, prog_name="phasegpt-ckpt")
    finally:
        if _open_bars is not None:
            _open_bars.__exit__(None, None, None)
            _open_bars = None
        console.teardown()  # the process may go on as a library's host (tests, notebooks)


def main() -> None:
    """Console-script entry point: one line and an exit code for every expected failure."""
    try:
        code = _run()
    except PhasegptError as err:
        console.stderr.print(f"error: {err}", markup=False)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except typer.TyperException as err:  # a usage error (typer's own click): one line, exit 2
        message, context = err.format_message().rstrip("."), getattr(err, "ctx", None)
        if message:  # none after the help a bare `phasegpt-ckpt` prints
            hint = f"; see `{context.command_path} --help`" if context else ""
            console.stderr.print(f"error: {message}{hint}", markup=False)
        sys.exit(2)
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into this code
        console.stderr.print("interrupted", markup=False)
    sys.exit(code or 0)
