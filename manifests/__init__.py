"""The manifests shipped with phasegpt-ckpt (and the bundled checkpoint they point to)."""
from pathlib import Path

DIR = Path(__file__).resolve().parent
DEFAULT = DIR / "phasegpt.yaml"
