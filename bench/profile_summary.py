"""Summarize py-spy collapsed-stack profiles (`py-spy record --format raw`, as `production.py --profile DIR` writes):
per process, the top functions by own samples (the frame on top of the stack: where the CPU was spent) with their
inclusive share (anywhere on the stack), own samples per package (sqlalchemy, psycopg, redis, kombu, celery,
duroxide_celery, ...), and duroxide_celery's functions by inclusive samples, as Markdown.

    python bench/profile_summary.py /tmp/prof [--top 15] [--match worker-orch]

Files are grouped by process name (the part after the last `-` in `<workload>-<engine>-<tag>-<process>.txt`, e.g.
`worker-orch`); several files of one process are added up.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

#: py-spy's first frames with --subprocesses: `process 123:"python -m celery ..."`; and thread frames with -t.
PROCESS_FRAME = re.compile(r"^(process \d+:|thread \()")


def parse(path: Path) -> tuple[Counter, Counter, int]:
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not PROCESS_FRAME.match(f)]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own, inclusive, total


def package(frame: str) -> str:
    """`Connection.wait (psycopg/connection.py)` -> `psycopg`; the standard library's modules have no folder."""
    match = re.search(r"\(([^()]*)\)$", frame)
    where = match.group(1) if match else ""
    if "/" not in where:
        return "stdlib/other" if where else "?"
    return where.split("/", 1)[0]


def process_name(path: Path) -> str:
    match = re.search(r"-[0-9a-f]{10}-(.+)\.txt$", path.name)
    return match.group(1) if match else path.stem


def summarize(directory: Path, top: int, match: str | None) -> str:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(directory.glob("*.txt")):
        name = process_name(path)
        if match is None or match in name:
            groups[name].append(path)
    out = []
    for name, paths in groups.items():
        own: Counter = Counter()
        inclusive: Counter = Counter()
        total = 0
        for path in paths:
            o, i, t = parse(path)
            own.update(o)
            inclusive.update(i)
            total += t
        if not total:
            continue
        out.append(f"### {name} ({total} samples of active threads, {len(paths)} file(s))\n")
        out.append("| # | function (file) | own % | inclusive % |")
        out.append("|---|---|---|---|")
        for rank, (frame, n) in enumerate(own.most_common(top), 1):
            out.append(f"| {rank} | `{frame}` | {100 * n / total:.1f} | {100 * inclusive[frame] / total:.1f} |")
        out.append("")
        by_package: Counter = Counter()
        for frame, n in own.items():
            by_package[package(frame)] += n
        out.append(
            "Own samples by package: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in by_package.most_common())
        )
        out.append("")
        ours = [(f, n) for f, n in inclusive.most_common() if package(f) == "duroxide_celery"][:top]
        if ours:
            out.append("duroxide_celery functions by inclusive samples:\n")
            out.append("| function (file) | inclusive % | own % |")
            out.append("|---|---|---|")
            for frame, n in ours:
                out.append(f"| `{frame}` | {100 * n / total:.1f} | {100 * own[frame] / total:.1f} |")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--match", help="only processes whose name contains this")
    args = parser.parse_args(argv)
    print(summarize(args.directory, args.top, args.match))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
