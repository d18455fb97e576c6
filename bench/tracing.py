"""What OpenTelemetry tracing costs the embedded runtime: bench/workloads.py's W1 and W3 with tracing off (no
TracerProvider: the default) and on (the SDK recording every span, exported to a discarding exporter).

    python bench/tracing.py                      # W1 (500 orchestrations) and W3 (200 steps), 3 runs per mode
    python bench/tracing.py --runs 1 --size 50   # a quick look
    python bench/tracing.py --hooks              # CPU per turn hook (span, stored-context read), off and on

Each run is a fresh subprocess with a fresh SQLite file; it prints every run and the median per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each workload's figure (workloads.py's `value`) and which way is better.
BETTER = {"W1": "higher", "W3": "lower"}


def child(mode: str, workload: str, size: int | None, setup_only: bool = False) -> int:
    """One run in this process: set up tracing as `mode` says, then run the workload."""
    if mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Discard(SpanExporter):
            def export(self, spans: Sequence[object]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
    if setup_only:
        return 0
    sys.path.insert(0, str(ROOT / "bench"))
    import workloads

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--engine", "celery", "--workload", workload, "--db", os.path.join(tmp, "bench.db")]
        return workloads.main(argv + (["--size", str(size)] if size else []))


def hooks(mode: str, n: int) -> float:
    """Microseconds per traced turn's hooks (turn, leased: the stored-context read, committed), in this process."""
    import time

    if mode == "sdk":
        child(mode, "", None, setup_only=True)
    from duroxide_celery import Client, SqliteProvider
    from duroxide_celery.observability.otel import Tracing
    from duroxide_celery.providers import telemetry
    from duroxide_celery.providers.store import InstanceLease
    from duroxide_celery.replay.engine import TurnResult

    class Leased:
        """What TurnSpan.leased reads and writes through: a TurnTransaction's lease transaction, here `conn`."""

        def __init__(self, conn):
            self.conn = conn

        def trace_context(self):
            return telemetry.trace_context(self.conn, "i")

        def adopt_trace_context(self, context):
            telemetry.adopt_trace_context(self.conn, "i", context)

    provider = SqliteProvider.in_memory()
    Client(provider).start_orchestration("i", "Name", None)
    tracing, lease, result = Tracing(), InstanceLease("i", 1, "Name", "Running", 1, 0, 0), TurnResult("Running")
    with provider.store.write() as conn:
        t0 = time.perf_counter()
        for _ in range(n):
            with tracing.turn("i", "worker") as span:
                span.leased(lease, Leased(conn))
                tracing.turn_committed(result)
        return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int)
    parser.add_argument("--workloads", default="W1,W3")
    parser.add_argument("--hooks", action="store_true", help="time the turn hooks alone")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.child[1] == "hooks":
        print(f"HOOKS {hooks(args.child[0], args.size or 20000):.1f}")
        return 0
    if args.child:
        return child(args.child[0], args.child[1], args.size)
    if args.hooks:
        for mode in ("off", "sdk"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "hooks"], cwd=ROOT, capture_output=True, text=True
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("HOOKS ")), None)
            print(
                f"turn hooks, tracing={mode}: {line[6:]} us per turn" if line else f"!!! FAILED: {out.stderr[-2000:]}"
            )
        return 0
    failed = False
    for workload in args.workloads.split(","):
        better = BETTER[workload]
        medians = {}
        for mode in ("off", "sdk"):
            figures = []
            for run in range(args.runs):
                cmd = [sys.executable, __file__, "--child", mode, workload]
                cmd += ["--size", str(args.size)] if args.size else []
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
                result = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
                data = json.loads(result[len("RESULT ") :]) if result else {"ok": False, "error": out.stderr[-2000:]}
                if not data.get("ok"):
                    print(f"!!! FAILED {workload} tracing={mode} run {run + 1}: {data.get('error')}")
                    failed = True
                    continue
                figures.append(data["value"])
                unit = data["unit"]
                print(f"{workload} tracing={mode:3} run {run + 1}: {data['value']:.2f} {unit}")
            if figures:
                medians[mode] = statistics.median(figures)
                print(f"{workload} tracing={mode:3} median: {medians[mode]:.2f} {unit} ({better} is better)")
        if len(medians) == 2:
            print(f"{workload} on/off: {medians['sdk'] / medians['off']:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
