"""The type hints hold: mypy over the firmware and the provisioning tool (settings in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.data import REPO


def test_mypy_finds_no_type_errors(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
