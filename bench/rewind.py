"""Rewind cost on the embedded runtime over a fresh SQLite file: N instances of a `--steps`-step sequence fail at
their last step; after the fix, each is rewound (with the registry check, which replays the history in-process,
and without it) and all are waited for. Prints ms per rewind call and the time until all completed again.

    python bench/rewind.py [--instances 100] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duroxide_celery import Client, Runtime, SqliteProvider  # noqa: E402

FIXED = {"on": False}


def add_one(ctx, x):
    return x + 1


def last_step(ctx, x):
    if not FIXED["on"]:
        raise RuntimeError("not fixed yet")
    return x


def sequence(ctx, steps):
    acc = 0
    for _ in range(steps - 1):
        acc = yield ctx.schedule_activity("AddOne", acc)
    return (yield ctx.schedule_activity("LastStep", acc))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        provider = SqliteProvider.open(f"{tmp}/bench.db")
        runtime = Runtime(provider)
        runtime.register_orchestration("Sequence", sequence)
        runtime.register_activity("AddOne", add_one)
        runtime.register_activity("LastStep", last_step)
        runtime.start()
        client = Client(provider)
        ids = [f"rw-{i}" for i in range(args.instances)]
        for instance_id in ids:
            client.start_orchestration(instance_id, "Sequence", args.steps)
        for instance_id in ids:
            assert client.wait_for_orchestration(instance_id, 120_000).status == "Failed"
        FIXED["on"] = True
        half = len(ids) // 2
        timings: dict[str, list[float]] = {"checked": [], "unchecked": []}
        started = time.perf_counter()
        for i, instance_id in enumerate(ids):
            checked = i < half
            t0 = time.perf_counter()
            client.rewind(instance_id, "bench", registry=runtime if checked else None)
            timings["checked" if checked else "unchecked"].append((time.perf_counter() - t0) * 1000)
        for instance_id in ids:
            result = client.wait_for_orchestration(instance_id, 120_000)
            assert (result.status, result.output) == ("Completed", args.steps - 1), result
        total = time.perf_counter() - started
        runtime.shutdown()
    print(f"{args.instances} instances, {args.steps} steps each, failed at the last step")
    for what, values in timings.items():
        if values:
            print(
                f"rewind call ({what}, {len(values)}): median {statistics.median(values):.2f} ms, "
                f"max {max(values):.2f} ms"
            )
    print(f"all rewound and completed again in {total:.2f} s")


if __name__ == "__main__":
    main()
