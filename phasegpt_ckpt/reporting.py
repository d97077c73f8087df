"""How long-running work tells its caller how far it got: a callback passed in, never a global.

The library logs to ``logging.getLogger("phasegpt_ckpt")`` (a child logger per module) and prints
nothing. Progress (bytes moved, training steps) goes to a :class:`Progress` callback the caller
hands in; the command line hands in one that draws rich bars, a script may hand in its own:

>>> seen = []
>>> def show(task, done, total, *, unit="B", detail=""):
...     seen.append((task, done, total, unit))
>>> report(show, "input.txt", 512, 1024)
>>> report(None, "input.txt", 1024, 1024)     # no callback: nothing happens
>>> seen
[('input.txt', 512, 1024, 'B')]
"""
from __future__ import annotations

from typing import Optional, Protocol


class Progress(Protocol):
    """``task`` has reached ``done`` of ``total`` (None: unknown) ``unit``s; ``detail`` is a short status."""

    def __call__(self, task: str, done: float, total: Optional[float], *, unit: str = "B",
                 detail: str = "") -> None: ...


def report(progress: Optional[Progress], task: str, done: float, total: Optional[float], *, unit: str = "B",
           detail: str = "") -> None:
    """Tell ``progress`` (when there is one) how far ``task`` got."""
    if progress is not None:
        progress(task, done, total, unit=unit, detail=detail)
