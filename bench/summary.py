"""Print the benchmark summary and copy it into bench/RESULTS.md between the summary markers."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def main() -> int:
    summary = HERE / ".results" / "summary.md"
    if not summary.is_file():
        print("no bench/.results/summary.md: run `nox -s bench` first", file=sys.stderr)
        return 1
    table = summary.read_text()
    print(table)
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.is_file() else f"# Benchmark results\n\n{START}\n{END}\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        results.write_text(f"{head}{START}\n{table}{END}{tail}")
        print(f"updated {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
