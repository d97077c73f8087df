"""``phasegpt-ckpt cache ls | rm | prune``: what the cache holds, and taking away what is not wanted.

The ``cache`` group of the main app. The work is the :class:`~phasegpt_ckpt.store.cache.Cache`'s
(``entries``, ``remove``, ``prune``); this module parses and renders. Only typer and the renderer load
with it; the cache module loads when a cache command runs, so ``--help`` and other commands stay fast.
The cache is the global ``--cache-dir`` (else ``$PHASEGPT_CACHE``, else the user cache); no manifest
is read, so a broken manifest never stands in the way of cleaning up.
"""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from phasegpt_ckpt.cli import render as console

cache_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Housekeeping of the cache: what it holds (ls), removing artifacts (rm) or what none needs (prune).",
)

JSON_OUTPUT = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def _cache():
    """The cache of the global options."""
    from phasegpt_ckpt.cli.app import options
    from phasegpt_ckpt.store.cache import Cache

    return Cache(options.cache_dir)


@cache_app.command("ls")
def ls(json_output: bool = JSON_OUTPUT) -> None:
    """Each cached artifact: size, pin, last use, partial downloads.

    One row per artifact name: its size, pinned or unpinned, when it was last fetched or served from the
    cache, and any partial download with its bytes (and whether a fetch is writing it now)."""
    from rich.table import Table

    cache = _cache()
    entries = cache.entries()
    blob_bytes = sum({e.sha256: e.size for e in entries if e.state == "cached"}.values())
    partial_bytes = sum(p.size for e in entries for p in e.partials)
    if json_output:
        return console.print_json({"root": str(cache.root), "artifacts": [_plain(e) for e in entries],
                                   "blob_bytes": blob_bytes, "partial_bytes": partial_bytes})
    if not entries:
        return console.stdout.print(f"nothing cached in {cache.root}", markup=False)
    now = datetime.now(timezone.utc)
    table = Table()
    table.add_column("artifact", no_wrap=True)
    for column in ("size", "pin", "last used", "notes"):
        table.add_column(column)
    for e in entries:
        pin = "-" if e.pinned is None else "pinned" if e.pinned else "unpinned"
        notes = [] if e.state in ("cached", "partial") else [e.state]
        notes += [f"same bytes as {', '.join(e.shared_with)}"] if e.shared_with else []
        notes += [_partial_note(p) for p in e.partials]
        table.add_row(e.name, _bytes(e.size), pin, _ago(e.last_used, now), "; ".join(notes))
    console.stdout.print(table)
    partials = sum(len(e.partials) for e in entries)
    cached = sum(e.state == "cached" for e in entries)
    console.stdout.print(f"{cached} cached, {_bytes(blob_bytes)} in blobs; {partials} partial download"
                         f"{'' if partials == 1 else 's'}, {_bytes(partial_bytes)}; in {cache.root}", markup=False)


@cache_app.command("rm")
def rm(
    names: list[str] = typer.Argument(..., help="Artifact names, as `cache ls` shows them."),
    wait: bool = typer.Option(False, "--wait", help="Wait for a fetch of the artifact in progress to end "
                              "(default: refuse at once, in one line)."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Remove artifacts; a blob another artifact shares stays.

    Receipt, readable name, partial downloads, and the blob unless another artifact's receipt points to
    it (equal content). Every name is checked before anything goes; an artifact a fetch in another process
    holds is refused in one line (exit 2), or with --wait waited for."""
    from phasegpt_ckpt.errors import BadInput

    cache = _cache()
    cache.require(*names)
    removed, refused = [], []
    for name in dict.fromkeys(names):
        try:
            removed.append(cache.remove(name, wait=wait))
        except BadInput as err:  # its lock is held: the others go, then the error ends the command
            refused.append((name, err))
    if json_output:
        console.print_json({"removed": [_plain(r) for r in removed], "freed": sum(r.freed for r in removed),
                            "refused": [{"name": name, "error": str(err)} for name, err in refused]})
    else:
        for r in removed:
            console.stdout.print(f"removed {r.name}: {_bytes(r.freed)} freed", markup=False)
            if r.kept_blob_for:
                console.stdout.print(f"  its blob stays: {', '.join(r.kept_blob_for)} has the same bytes", markup=False)
            elif r.blob_kept:
                console.stdout.print(f"  its blob stays: {r.blob_kept} (`cache prune` removes it later)", markup=False)
    if len(refused) == 1:
        raise refused[0][1]
    if refused:
        raise BadInput(f"{', '.join(name for name, _ in refused)} are being fetched by other processes; run again "
                       "when those fetches end, or pass --wait")


@cache_app.command("prune")
def prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go and what it frees; remove nothing."),
    json_output: bool = JSON_OUTPUT,
) -> None:
    """Remove what no artifact needs; --dry-run lists it.

    Blobs no receipt points to, partial downloads no fetch is writing, quarantined blobs, and readable
    names left without a receipt. A download in progress (its artifact's lock held) is kept."""
    result = _cache().prune(dry_run=dry_run)
    if json_output:
        return console.print_json(_plain(result))
    verb = "would remove" if dry_run else "removed"
    for d in result.removed:
        console.stdout.print(f"{verb} {d.kind} {d.path} ({_bytes(d.size)})", markup=False)
    for d in result.kept:
        console.stdout.print(f"kept {d.kind} {d.path} ({_bytes(d.size)}): {d.reason}", markup=False)
    if not result.removed:
        console.stdout.print("nothing to prune", markup=False)
    elif dry_run:
        console.stdout.print(f"would free {_bytes(result.freed)} (dry run: nothing removed)", markup=False)
    else:
        console.stdout.print(f"freed {_bytes(result.freed)}", markup=False)


def _plain(record) -> dict[str, Any]:
    """A dataclass as JSON-ready values: paths as strings, times in ISO 8601, numbers left numbers."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    return plain(asdict(record))


def _partial_note(partial) -> str:
    of = f" of {_bytes(partial.expected_size)}" if partial.expected_size else ""
    state = "downloading now" if partial.in_progress else "resumable"
    return f"partial {_bytes(partial.size)}{of}, {state}"


def _bytes(size: Optional[int]) -> str:
    """``9699597`` → ``9.7 MB``; ``727`` → ``727 B``; None → ``-``."""
    if size is None:
        return "-"
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} B"


def _ago(when: Optional[datetime], now: datetime) -> str:
    """How long ago, in the largest whole unit: ``just now``, ``5 minutes ago``, ``3 days ago``."""
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "just now"
