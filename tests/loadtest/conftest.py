"""loadtest/ holds scripts, not a package: put its folder on sys.path so the
tests import them the way they import each other."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
