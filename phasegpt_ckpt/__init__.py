"""phasegpt-ckpt: get PhaseGPT checkpoints from their mirrors, prove the bytes, prove the claims.

>>> from phasegpt_ckpt import Store
>>> store = Store(offline=True)                               # doctest: +SKIP
>>> store.fetch("tinyshakespeare").sha256[:12]                # doctest: +SKIP
'86c4e6aa9db7'

The package logs to ``logging.getLogger("phasegpt_ckpt")`` and prints nothing; errors are
:class:`PhasegptError` subclasses with a one-line message.
"""
import logging

from phasegpt_ckpt.errors import BadInput, MirrorsExhausted, PhasegptError, VerificationFailed

# A library adds no handler that writes anywhere; without this one, Python's last-resort handler would
# print our warnings on stderr of a program that configured no logging.
logging.getLogger("phasegpt_ckpt").addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["Store", "PhasegptError", "BadInput", "VerificationFailed", "MirrorsExhausted", "__version__"]


def __getattr__(name: str):
    # Store is imported on first use: `import phasegpt_ckpt` (and the command line's start-up) stays cheap.
    if name == "Store":
        from phasegpt_ckpt.store.store import Store

        return Store
    raise AttributeError(f"module 'phasegpt_ckpt' has no attribute {name!r}")
