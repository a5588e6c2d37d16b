"""The CI entry point must stay a valid shell script that ends in the README's test command.

A bad merge once left `.ci/run` with an unterminated backquote; CI then failed in one second
and nothing landed. This runs the real `bash -n` parser over the script.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci" / "run"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not on PATH")
def test_ci_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(CI)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_ci_script_runs_make_test_last() -> None:
    stripped = (ln.strip() for ln in CI.read_text().splitlines())
    lines = [ln for ln in stripped if ln and not ln.startswith("#")]
    assert lines[-1] == "make test"
    assert "set -euo pipefail" in lines
