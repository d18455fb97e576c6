"""Record golden histories from REAL embedded runs (in-process Celery worker, real store) as replay fixtures.

    python tests/integration/capture_golden.py                 # write tests/fixtures/golden/real_*.json
    python tests/integration/capture_golden.py --out DIR       # somewhere else
    python tests/integration/capture_golden.py --db sqlite:///tmp/x.db   # or a postgresql:// URL

The orchestrations come from tests/unit/golden_orchestrations.py (REGISTRY), whose test_golden.py replays every
fixture in tests/fixtures/golden/ against today's code. Format (one execution):
    {"orchestration": name, "input": decoded input, "instance_id": ..., "execution_id": 1,
     "history": [{event_id, kind, source_event_id, timestamp_ms, data (dict)}, ...],
     "expect": {"status": ..., "output": decoded output}}
Recording is not deterministic (timestamps, completion order); commit a recording once it replays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TESTS = HERE.parents[1]
if str(TESTS) not in sys.path:  # make `unit` (tests/unit) importable when run as a script
    sys.path.insert(0, str(TESTS))

from unit.golden_orchestrations import REGISTRY  # noqa: E402

from duroxide_celery import Client, Runtime, SqliteProvider  # noqa: E402
from duroxide_celery.providers import Provider, provider_from_url  # noqa: E402

GOLDEN_DIR = TESTS / "fixtures" / "golden"
WAIT_MS = 15_000


def _process(ctx: Any, item: int) -> int:
    if item == 3:
        raise ValueError("cannot process 3")
    return item * 10


def _run_fan_out(client: Client, instance_id: str) -> None:
    client.start_orchestration(instance_id, "fan_out", [1, 2, 3, 4])


def _run_timer_then_approval(client: Client, instance_id: str) -> None:
    client.start_orchestration(
        instance_id, "timer_then_approval", {"doc": "contract", "delay_ms": 50, "timeout_ms": 60_000}
    )
    _wait_for_kind(client, instance_id, "ExternalSubscribed")
    client.raise_event(instance_id, "approve", "alice")


def _wait_for_kind(client: Client, instance_id: str, kind: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while kind not in [e.kind for e in client.read_execution_history(instance_id, 1)]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{instance_id}: no {kind} in history after {WAIT_MS} ms")
        time.sleep(0.01)


# fixture stem -> (orchestration, activities, how to drive it)
SCENARIOS: dict[str, tuple[str, dict[str, Callable[..., Any]], Callable[[Client, str], None]]] = {
    "real_fan_out": ("fan_out", {"Process": _process, "Sum": lambda ctx, xs: sum(xs)}, _run_fan_out),
    "real_timer_event": (
        "timer_then_approval",
        {"Record": lambda ctx, r: f"recorded {r['doc']} approved by {r['by']}"},
        _run_timer_then_approval,
    ),
}


def capture(provider: Provider, stem: str) -> dict[str, Any]:
    """Run one scenario on a fresh embedded runtime over `provider`; return its fixture."""
    name, activities, drive = SCENARIOS[stem]
    runtime = Runtime(provider)
    runtime.register_orchestration(name, REGISTRY[name])
    for activity, fn in activities.items():
        runtime.register_activity(activity, fn)
    runtime.start()
    try:
        client = Client(provider)
        instance_id = f"golden-{stem}"
        drive(client, instance_id)
        result = client.wait_for_orchestration(instance_id, WAIT_MS)
        if result.status != "Completed":
            raise RuntimeError(f"{stem}: the recorded run ended {result.status}: {result.error}")
        history = provider.store.read_history(instance_id, 1)
    finally:
        runtime.shutdown(timeout_ms=2000)
    return {
        "orchestration": name,
        "input": json.loads(history[0].data["input"]),
        "instance_id": instance_id,
        "execution_id": 1,
        "history": [e.to_json() for e in history],
        "expect": {"status": result.status, "output": result.output},
    }


def write(fixture: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of an empty store (default: in-memory SQLite)")
    parser.add_argument("stems", nargs="*", default=sorted(SCENARIOS), help=f"of {sorted(SCENARIOS)}")
    args = parser.parse_args(argv)
    for stem in args.stems:
        provider = provider_from_url(args.db) if args.db else SqliteProvider.in_memory()
        path = args.out / f"{stem}.json"
        write(capture(provider, stem), path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
