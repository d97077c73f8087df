"""One exception family, each member carrying a one-line message meant for a person.

The CLI maps the class to the exit code in one place (``cli.main``); library callers
catch :class:`PhasegptError` and read ``str(err)``.
"""
from __future__ import annotations


class PhasegptError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code = 1


class BadInput(PhasegptError):
    """The user gave something unusable: a bad manifest, unknown name, missing file."""

    exit_code = 2


class VerificationFailed(PhasegptError):
    """Bytes or numbers do not match what was promised (sha256, size, claims)."""

    exit_code = 1


class MirrorFailed(PhasegptError):
    """One mirror could not deliver; ``outcome`` is a short tag for the outcome table.

    Raised by providers and the transfer engine; caught by ``fetch``, which moves on
    to the next mirror. Should one escape, it means what a failed fetch means.
    """

    exit_code = 3

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


class MirrorsExhausted(PhasegptError):
    """Every mirror of an artifact was tried and none delivered verified bytes."""

    exit_code = 3

    def __init__(self, message: str, outcomes: list | None = None, summary: str = ""):
        super().__init__(message)
        self.outcomes = outcomes or []
        self.summary = summary or message  # the reason in a few words, e.g. "hf: 404, zenodo: unpublished"
        self.name: str | None = None  # the artifact, when one of several failed (Store.fetch_all)
