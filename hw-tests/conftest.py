"""Hardware tests run from the repository root: make `edge` importable without installing."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
