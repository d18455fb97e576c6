"""examples/order_saga.py, the README's first command, run as a user runs it: it succeeds, prints each line whole
(activities print from several worker threads), and leaves no temporary directory behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_prints_whole_lines_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_saga.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    activity_lines = [line for line in lines if "[activity]" in line]
    assert len(activity_lines) == 9, done.stdout  # 5 reservations, 1 charge, 1 shipment, 2 releases
    assert all(line.startswith("    [activity] ") and line.count("[activity]") == 1 for line in activity_lines)
    assert "  order-1001: Completed" in done.stdout and "'status': 'cancelled'" in done.stdout
    assert str(tmp_path) in lines[0]  # the store was a temporary file ...
    assert list(tmp_path.iterdir()) == []  # ... removed at exit
