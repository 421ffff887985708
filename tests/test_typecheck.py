"""The code type-checks: mypy (pinned in the test profile) finds no error in device/, train/ or
convert/. A value that may be None, a section read by a misspelt name or a call with the wrong
argument type fails here, before it fails in the field."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_device_train_and_convert_are_mypy_clean():
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental",
         "--cache-dir=/dev/null", "device", "train", "convert"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Success: no issues found" in result.stdout
