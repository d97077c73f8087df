"""Training configs shipped with the package, in the published YAML layout."""
from pathlib import Path

DIR = Path(__file__).resolve().parent
