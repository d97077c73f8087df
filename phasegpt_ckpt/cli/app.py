"""The ``phasegpt-ckpt`` command line: parse, call the :class:`~phasegpt_ckpt.Store`, render. Nothing else.

Exit codes: 0 ok · 1 verification failed · 2 bad input · 3 every mirror failed · 130 interrupted.
"""
from __future__ import annotations

import atexit
import gc
import signal
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
    rich_markup_mode=None,  # click's plain help: flags shown as flags, and no rich import for --help
    help="Fetch, verify, evaluate, generate from and resume PhaseGPT checkpoints.",
)


@dataclass
class Options:
    """Global options, given before or after the command (``phasegpt-ckpt --offline fetch ...``)."""

    manifest: Optional[Path] = None
    cache_dir: Optional[Path] = None
    offline: bool = False


options = Options()

from phasegpt_ckpt.cli.cache_commands import cache_app  # noqa: E402  (light: the cache loads when one runs)

app.add_typer(cache_app, name="cache", help="Housekeeping of the cache: ls, rm NAME..., prune.")


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
    version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda shown: _version(shown),
                                 help="Print the version and exit."),
) -> None:
    options.manifest, options.cache_dir, options.offline = manifest, cache_dir, offline
    console.setup(quiet)


def _version(shown: bool) -> None:
    if shown:
        from phasegpt_ckpt import __version__

        console.stdout.print(f"phasegpt-ckpt {__version__}", markup=False)
        raise typer.Exit()


def _finite(value: Optional[float]) -> Optional[float]:
    """A float option that must be a number: NaN and infinity compare with nothing."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


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
    layered = len({row["manifest"] for row in rows}) > 1  # the shipped manifest and the user's own
    table = Table(caption="* listed, not published yet" if unpublished else None, caption_justify="left")
    table.add_column("artifact", no_wrap=True)  # what every other command is given: never cut
    for column in ("kind", "size", "sha256", "cached", "mirrors, in order") + (("listed in",) if layered else ()):
        table.add_column(column)
    for row in rows:
        mirrors = ", ".join(m["type"] + ("" if m["published"] else "*") for m in row["mirrors"])
        sha256 = row["sha256"][:10] + "…" if row["sha256"] else "unpublished"
        cached = "no" if row["cached"] is None else "yes" if row["cached"].startswith("pinned") else "yes, unpinned"
        listed = (_manifest_label(row["manifest"]),) if layered else ()
        table.add_row(row["name"], row["kind"], _megabytes(row["size"]), sha256, cached, mirrors, *listed)
    console.stdout.print(table)


def _manifest_label(path: str) -> str:
    """``shipped`` for the package's own manifest, ``yours`` for the user's, else the file."""
    from phasegpt_ckpt import manifests
    from phasegpt_ckpt.source.manifest import user_manifest_path

    return {str(manifests.DEFAULT): "shipped", str(user_manifest_path()): "yours"}.get(path, path)


def _megabytes(size: Optional[int]) -> str:
    """``1115394`` → ``1.1 MB``; None → ``?`` (not published)."""
    return "?" if size is None else f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} B"


@app.command()
def fetch(
    names: Optional[list[str]] = typer.Argument(None, help="Artifacts to fetch (default: the manifest's default)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Also place each verified file in this directory."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Try only mirrors of this type (hf, url, ...)."),
    force: bool = typer.Option(False, "--force", help="Download again even when a verified copy is cached."),
    connections: Optional[int] = typer.Option(None, "--connections", min=1, max=16, help="Parallel ranged "
                                              "connections (default: from the size, or $PHASEGPT_CONNECTIONS)."),
    limit_rate: Optional[float] = typer.Option(None, "--limit-rate", min=1, help="Total download speed cap, "
                                               "bytes per second."),
    mirror_order: Optional[str] = typer.Option(None, "--mirror-order", help="manifest (its order, the default) "
                                               "or fastest (probe each mirror, start with the quickest)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Download artifacts from their first working mirror, verified, into the cache."""
    from dataclasses import asdict

    from phasegpt_ckpt.source.web import RetryPolicy

    store = _store()
    documents, failure = [], None
    policy = RetryPolicy(connections=connections, limit_rate=limit_rate)
    for result in store.fetch_all(names or [store.manifest.artifact().name], mirror_type=mirror, dest=dest,
                                  force=force, policy=policy, mirror_order=mirror_order):
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
    refs: Optional[list[str]] = typer.Argument(None, help="Artifact names or file paths (default: every artifact at "
                                               "hand: cached, or on a local mirror such as the bundled ones)."),
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
    from phasegpt_ckpt.proof.digest import prefetch

    for ref in refs or []:
        prefetch(ref)  # a file's hash starts now, while the Store and the manifest load
    store = _store()
    evaluation = dict(evaluate=evaluate, data=data, device=device, causality=causality,
                      causality_windows=causality_windows, config=model_config)
    if refs:
        verdicts = [store.verify(ref, **evaluation) for ref in refs]
    else:
        verdicts = store.verify_available(**evaluation)
    if json_output:
        console.print_json([verdict.as_dict() for verdict in verdicts])
    else:
        for verdict in verdicts:
            _print_verdict(verdict)
            if verdict.evaluation is not None:
                _print_evaluation(verdict.evaluation)
    failed = [verdict for verdict in verdicts if not verdict.ok]
    if failed:
        raise VerificationFailed(f"{', '.join(v.subject for v in failed)} failed verification: "
                                 f"{failed[0].first_failure().explanation()}")


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
    prompt: str = typer.Argument(..., help="Text to continue; every character must be in the model's vocabulary. "
                                 "- reads it from stdin."),
    model: Optional[str] = typer.Option(None, "--model", help="Artifact name or checkpoint path "
                                        "(default: the manifest's default)."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", help="Characters to generate."),
    temperature: float = typer.Option(1.0, "--temperature", callback=_finite,
                                      help="Softmax temperature; 0 picks the likeliest."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k likeliest characters only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", callback=_finite,
                                          help="Sample within the smallest set of probability p."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**63 - 1 - 10**6,
                                       help="Same seed, same text (sample i uses seed + i); without it one is drawn "
                                       "and said on stderr."),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Independent continuations of the prompt."),
    device: str = DEVICE_OPTION,
    data: Optional[Path] = DATA_OPTION,
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document (model, seed, samples) on stdout "
                                     "instead of streaming the text."),
) -> None:
    """Continue a prompt: stdout gets exactly the prompt and the generated text, as it is produced."""
    import secrets

    from phasegpt_ckpt.models.generate import stream

    if prompt == "-":
        prompt = sys.stdin.read().removesuffix("\n")  # the newline echo or a file ends with is no prompt
    ckpt = _store().load(model, data=data, device=device, config=model_config)
    drawn = seed is None
    seed = secrets.randbelow(2**31) if drawn else seed
    samples = []
    for i in range(num_samples):
        chars = stream(ckpt.model, prompt, vocab=ckpt.vocab, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed + i)
        if json_output:
            samples.append(prompt + "".join(chars))
            continue
        if i:
            _write("\n" + "-" * 40 + "\n")
        _write(prompt)
        for ch in chars:
            _write(ch)
    if json_output:
        console.print_json({"model": str(ckpt.path), "seed": seed, "temperature": temperature,
                            "max_new_tokens": max_new_tokens, "samples": samples})
    elif sys.stdout.isatty():
        _write("\n")
    if drawn:
        console.note(f"seed {seed} (--seed {seed} gives this text again)")


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
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw a PNG here: R per head of each phase layer "
                                        "(std over windows as error bars) and R across the Euler iterations "
                                        "(needs matplotlib: pip install 'phasegpt-ckpt[plot]')."),
) -> None:
    """Synchronisation of each phase layer: order parameter R per layer and head (mean, std) and coupling K."""
    from rich.table import Table

    if plot is not None:
        from phasegpt_ckpt.training.progress import require_matplotlib

        require_matplotlib()  # before the work, not after it
    stats = _store().analyze(ref, num_tokens=num_tokens, device=device, windows=windows, data=data,
                             config=model_config)
    if plot is not None and stats["R_mean"] is None:
        console.note(f"no phase layer: {plot} not written")
    elif plot is not None:
        from phasegpt_ckpt.models.plots import plot_analysis

        plot_analysis(stats, plot)
        console.note(f"wrote {plot}")
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


from phasegpt_ckpt.cli import compare_command  # noqa: E402  (light: its engine loads when it runs)

app.command("compare")(compare_command.compare)


@app.command("config")
def config_command(
    ref: Optional[str] = typer.Argument(None, help="Artifact name or checkpoint path (default: the manifest's default)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the YAML here (default: stdout)."),
    model_config: Optional[Path] = MODEL_CONFIG_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the config as one JSON document instead of YAML."),
) -> None:
    """The checkpoint's config as YAML, every section it carries, ready for `train --config`."""
    text = _store().export_config(ref, output, config=model_config)
    if json_output:
        import yaml

        return console.print_json(yaml.safe_load(text))
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
    force: bool = typer.Option(False, "--force", help="Replace the output file if it exists."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Write the weights as safetensors, config, vocabulary and coupling mode in its metadata."""
    from phasegpt_ckpt.errors import BadInput
    from phasegpt_ckpt.models.checkpoint import convert as convert_checkpoint
    from phasegpt_ckpt.proof.digest import hash_file

    if to != "safetensors":
        raise BadInput(f"--to {to!r} is not a format convert writes; use --to safetensors")
    ckpt = _store().load(ref, data=data, device="cpu", config=model_config)
    out = output or Path(ckpt.path.stem + ".safetensors")
    if out.is_dir():
        raise BadInput(f"--output {out} is a directory; name the file to write (e.g. {out / (ckpt.path.stem + '.safetensors')})")
    if out.exists() and not force:
        raise BadInput(f"{out} exists; pass --force to replace it, or --output another file")
    out = convert_checkpoint(ckpt, out)
    if json_output:
        facts = hash_file(out)
        return console.print_json({"path": str(out), "format": "safetensors", "size": facts.size,
                                   "sha256": facts.sha256, "source": str(ckpt.path)})
    console.stdout.print(str(out), markup=False)


@app.command()
def publish(
    path: Path = typer.Argument(..., help="The checkpoint file to publish."),
    name: str = typer.Option(..., "--name", help="Its artifact name in the manifest (added, or updated in place)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The manifest to write (default: the global "
                                            "--manifest, else $PHASEGPT_MANIFEST, else your own manifest, laid over "
                                            "the shipped one; the installed package is never written)."),
    to: Optional[str] = typer.Option(None, "--to", help="Where to publish: hf:ORG/REPO uploads to the Hub (created if "
                                     "your token may; token from HF_TOKEN or the saved login; the mirror is pinned to "
                                     "the commit); zenodo or zenodo-sandbox deposits it and mints a DOI (ZENODO_TOKEN); "
                                     "osf:NODE[/folder] uploads it to the project's OSF Storage (OSF_TOKEN); a folder "
                                     "copies the files there as a local mirror. A file over the provider's per-file "
                                     "limit goes in parts."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Service endpoint for --to (Hub default: "
                                           "$HF_ENDPOINT, else huggingface.co; Zenodo, OSF API: their own); written "
                                           "into the mirror when given."),
    draft: bool = typer.Option(False, "--draft", help="With --to zenodo: upload and describe, but leave the record "
                               "unpublished for a person to review (publish later by running the same command "
                               "without --draft)."),
    new_version: Optional[str] = typer.Option(None, "--new-version", help="With --to zenodo: publish as a new version "
                                              "of this record (id or DOI of the latest version); the concept DOI "
                                              "stays."),
    record: Optional[list[str]] = typer.Option(None, "--record", help="List a record published by hand, once its "
                                               "size and hash agree with the file: zenodo:ID, zenodo:DOI or osf:GUID."),
    evaluate: bool = typer.Option(False, "--eval", help="Measure validation PPL and R in float32 and write them "
                                  "as the claims (what `verify --eval` reproduces)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", min=0, callback=_finite, help="With --eval: each claim's tolerance, "
                                              "as a fraction of its value (default 0.005 = 0.5%)."),
    data: Optional[Path] = DATA_OPTION,
    device: str = typer.Option("cpu", "--device", help="With --eval: where to measure (cpu: float32; CUDA runs bf16)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Hash a checkpoint, write its metadata JSON beside it, upload it, and add it to the manifest.

    The manifest keeps its order and comments; it is validated before it is replaced."""
    from dataclasses import asdict

    from phasegpt_ckpt.store.deposit import target
    from phasegpt_ckpt.store.publish import parse_target

    deposit = target(to or "", endpoint=endpoint, draft=draft, new_version=new_version)  # its token, checked now
    hub_repo, to_dir = parse_target(to) if to and deposit is None else (None, None)
    published = _store().publish(
        path, name, manifest=manifest, hub_repo=hub_repo, to_dir=to_dir, deposit=deposit,
        endpoint=None if deposit else endpoint,
        records=record or [], measure=evaluate, data=data, device=device,
        **({} if tolerance is None else {"tolerance": tolerance}))  # else publish's own default
    if json_output:
        return console.print_json(asdict(published))
    console.stdout.print(f"{published.name}: sha256 {published.sha256}, {published.size} bytes", markup=False)
    for claim, c in published.claims.items():
        console.stdout.print(f"  claim {claim}: {c['value']:g} ± {c['tolerance']:g}", markup=False)
    console.stdout.print(f"  metadata {published.metadata}: {published.metadata_path}", markup=False)
    if published.parts:
        console.stdout.print(f"  kept in {published.parts} parts (the provider's per-file limit)", markup=False)
    if published.doi:
        console.stdout.print(f"  doi {published.doi}", markup=False)
    elif published.deposit:
        console.stdout.print(f"  deposit {published.deposit}", markup=False)
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
        shown = f"{check.actual:.4f}" if isinstance(check.actual, float) else check.actual
        expected = f" (expected {check.expected_text})" if check.status != "ok" and check.expected is not None else ""
        console.stdout.print(f"  {check.status:<13} {check.check}: {shown}{expected}", markup=False)
    if not verdict.ok:
        console.stdout.print("  FAILED", style="bold red", markup=False)
    elif verdict.pinned:
        console.stdout.print("  verified", style="bold green", markup=False)
    else:
        console.stdout.print("  no mismatch, but no published sha256 vouches for it", style="yellow", markup=False)


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


GLOBAL_FLAGS = ("--offline", "--quiet", "-q")
GLOBAL_WITH_VALUE = ("--manifest", "--cache-dir")


def hoist_global_options(args: list[str]) -> list[str]:
    """Global options given after the command, moved before it: ``list --cache-dir X`` is ``--cache-dir X list``.

    ``publish --manifest`` stays publish's own option (the manifest it writes); ``--`` ends the scan.

    >>> hoist_global_options(["list", "--cache-dir", "X", "--json", "-q"])
    ['--cache-dir', 'X', '-q', 'list', '--json']
    """
    start = 0
    while start < len(args) and args[start].startswith("-"):
        start += 2 if args[start] in GLOBAL_WITH_VALUE else 1
    if start >= len(args):
        return args
    command, hoisted, rest = args[start], [], []
    tail = iter(args[start + 1:])
    for arg in tail:
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest += [arg, *tail]
        elif name in GLOBAL_WITH_VALUE and not (command == "publish" and name == "--manifest"):
            hoisted += [arg] if "=" in arg else [arg, next(tail, "")]
        elif arg in GLOBAL_FLAGS:
            hoisted.append(arg)
        else:
            rest.append(arg)
    return args[:start] + hoisted + [command] + rest


def _run() -> int:
    """The command, with any progress bars it drew taken down before its last words."""
    global _open_bars
    console.setup(False)  # until the options say otherwise
    try:
        return app(args=hoist_global_options(sys.argv[1:]), standalone_mode=False, prog_name="phasegpt-ckpt")
    finally:
        if _open_bars is not None:
            _open_bars.__exit__(None, None, None)
            _open_bars = None
        console.teardown()  # the process may go on as a library's host (tests, notebooks)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: one line and an exit code for every expected failure."""
    atexit.register(gc.freeze)  # at exit, no collection pass over every imported module's objects (~35 ms)
    signal.signal(signal.SIGTERM, _interrupt)  # the same clean stop as Ctrl-C: parts kept, temp files gone
    try:
        code = _run()
    except PhasegptError as err:
        console.error(str(err))  # tokens masked, whatever the message quotes
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except typer.TyperException as err:  # a usage error (typer's own click): one line, exit 2
        message, context = err.format_message().rstrip("."), getattr(err, "ctx", None)
        if message:  # none after the help a bare `phasegpt-ckpt` prints
            hint = f"; see `{context.command_path} --help`" if context else ""
            console.error(f"{message}{hint}")
        sys.exit(2)
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into this code
        console.stderr.print("interrupted", markup=False)
    sys.exit(code or 0)
