"""Where the command line's output goes: results to stdout, logs and progress to stderr.

The library logs and reports progress through callbacks; this module is what turns them into a
terminal's lines and bars. :func:`setup` installs the one handler on ``phasegpt_ckpt``'s logger
(``--quiet``: errors only); :class:`Bars` is the progress callback the commands hand to the Store.

The last line of defence for secrets: log lines, notes, JSON documents, tables and the ``error:``
line all pass through :func:`phasegpt_ckpt.tokens.scrub`, which masks every token value the
process knows (``HF_TOKEN``, the saved Hub login, ``ZENODO_TOKEN``, ``OSF_TOKEN``).
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Optional

from rich.console import Console
from rich.text import Text

from phasegpt_ckpt.tokens import masker, scrub

stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)
quiet = False
LOGGER = logging.getLogger("phasegpt_ckpt")


class _Lines(logging.Handler):
    """Each record as one line on stderr, through rich (so lines stay above a live progress bar):
    ``warning: ...`` for warnings, the bare message for information."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = scrub(record.getMessage())
            prefix = "warning: " if record.levelno == logging.WARNING else ""
            stderr.print(prefix + message, markup=False)
        except Exception:  # a broken pipe on stderr must not become a traceback
            self.handleError(record)


_handler: Optional[_Lines] = None


def setup(be_quiet: bool) -> None:
    """Show the library's log records on stderr: information and warnings, or with ``--quiet`` none
    (an error still ends the command with its one ``error:`` line)."""
    global _handler, quiet
    teardown()
    quiet = be_quiet
    _handler = _Lines()
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.ERROR if be_quiet else logging.INFO)


def teardown() -> None:
    """Take the handler off again and leave the logger as a library user finds it."""
    global _handler, quiet
    if _handler is not None:
        LOGGER.removeHandler(_handler)
        LOGGER.setLevel(logging.NOTSET)
    _handler, quiet = None, False


def show_progress() -> bool:
    """Progress bars only on an interactive stderr and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout, every string in it (keys too) with tokens masked."""
    mask = masker()

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return mask(value)
        if isinstance(value, dict):
            return {masked(key): masked(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [masked(item) for item in value]
        return value

    sys.stdout.write(json.dumps(masked(document), indent=2, default=lambda value: mask(str(value))) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A status line on stderr (none with ``--quiet``)."""
    if not quiet:
        stderr.print(scrub(message), markup=False)


def error(message: str) -> None:
    """The ``error: ...`` line that ends a failed command (printed even with ``--quiet``)."""
    stderr.print(f"error: {scrub(message)}", markup=False)


def table(rich_table) -> None:
    """A table on stderr (an outcome table explaining an error or a skipped mirror); none with ``--quiet``.

    Its title, caption, headers and cells are masked before rich lays them out (a token wrapped
    over two lines would slip past masking the printed text)."""
    if not quiet:
        stderr.print(_masked_table(rich_table))


def _masked_table(rich_table):
    """``rich_table`` with tokens masked in every text it holds (in place; the table is only printed)."""
    mask = masker()

    def masked(cell):
        if isinstance(cell, str):
            return mask(cell)
        if isinstance(cell, Text) and mask(cell.plain) != cell.plain:
            return Text(mask(cell.plain), style=cell.style, justify=cell.justify, overflow=cell.overflow)
        return cell

    rich_table.title, rich_table.caption = masked(rich_table.title), masked(rich_table.caption)
    for column in rich_table.columns:
        column.header, column.footer = masked(column.header), masked(column.footer)
        column._cells = [masked(cell) for cell in column.cells]
    return rich_table


class Bars:
    """A :class:`~phasegpt_ckpt.reporting.Progress` callback drawing one rich bar per task on stderr:
    bytes with speed and ETA, or steps with the task's status. Use as a context manager."""

    def __init__(self):
        self._bars: dict[str, Any] = {}

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        for live in {id(bar): bar for bar, _ in self._bars.values()}.values():
            live.stop()
        self._bars = {}

    def __call__(self, task: str, done: float, total: Optional[float], *, unit: str = "B", detail: str = "") -> None:
        if task not in self._bars:
            bar = self._new_bar(unit)
            bar.start()
            self._bars[task] = (bar, bar.add_task(task, total=total, detail=detail))
        bar, handle = self._bars[task]
        bar.update(handle, completed=done, total=total, detail=detail)

    @staticmethod
    def _new_bar(unit: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if unit == "B":
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), TextColumn("{task.fields[detail]}"))
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn())
        return Progress(*columns, console=stderr, transient=unit != "B")
