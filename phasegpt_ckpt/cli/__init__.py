"""The ``phasegpt-ckpt`` command line: parse → call the API → render."""
from phasegpt_ckpt.cli.app import app, main

__all__ = ["app", "main"]
