"""mypy --strict passes on the store package (providers/): its types are checked, not only written down."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STRICT_PACKAGES = ("duroxide_celery/providers",)


def test_mypy_strict_passes_on_the_store_package():
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CI"):
            pytest.fail("mypy is not installed (CI is set: install the dev extra)", pytrace=False)
        pytest.skip("!!! SKIPPED: mypy is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *STRICT_PACKAGES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mypy --strict found errors:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout
