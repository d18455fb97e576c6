"""Summarize py-spy collapsed-stack profiles (`py-spy record --format raw`, as `production.py --profile DIR` writes):
the top functions by own samples (the frame on top of the stack: where the CPU was spent) and by inclusive samples
(anywhere on the stack), as Markdown.

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
