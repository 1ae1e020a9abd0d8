"""Benchmark fixtures and the results registry behind the summary table.

``bench/`` holds speed benchmarks only (``test_*.py``, run by ``nox -s bench``; the GPU
throughput script ``gpu_precision.py``); accuracy experiments and their log are in
``experiments/``.

Every benchmark records throughputs with ``record(...)``; at the end of the session the ratios
against their baselines and the targets are written to ``bench/.results/summary.json`` and
``summary.md`` (``bench/summary.py`` copies the table into RESULTS.md).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "brain_mri"
RESULTS_DIR = Path(__file__).resolve().parent / ".results"

# Scripts, not benchmarks: keep them out of collection (and out of --doctest-modules).
collect_ignore = ["gpu_precision.py", "summary.py", "align_reference.py", "plain_predict.py"]

# (group, case) -> {"value": float, "unit": str}
MEASURED: dict[tuple[str, str], dict] = {}
# target rows: (name, group, numerator case, denominator case(s), op, threshold, note)
TARGETS: list[dict] = []


def per_second(benchmark, amount: float) -> float | None:
    """``amount`` per second of the median timed round; None under ``--benchmark-disable``
    (a smoke run: each benchmark body runs once, untimed)."""
    stats = benchmark.stats
    return None if stats is None else amount / stats.stats.median


def interleaved(benchmark, sides: dict, rounds: int) -> dict[str, float]:
    """Time the ``sides`` (name -> no-argument callable) one after the other in each of
    ``rounds`` pytest-benchmark rounds (plus one warm-up round, not counted), so that a busy
    machine slows every side alike; per-side median seconds, or {} under
    ``--benchmark-disable`` (each side runs once, untimed). A side may return a callable:
    its clean-up (e.g. removing the store it wrote), run after its time is taken."""
    times: dict[str, list[float]] = {k: [] for k in sides}

    def one_round() -> None:
        for name, fn in sides.items():
            t = time.perf_counter()
            cleanup = fn()
            times[name].append(time.perf_counter() - t)
            if callable(cleanup):
                cleanup()

    if benchmark.disabled:
        one_round()
        return {}
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
    return {k: float(np.median(v[1:])) for k, v in times.items()}  # v[0]: the warm-up round


def record(group: str, case: str, value: float | None, unit: str) -> None:
    """Store one throughput (higher is better); None (nothing timed) is not stored."""
    if value is not None:
        MEASURED[(group, case)] = {"value": float(value), "unit": unit}


def target(
    name: str, group: str, case: str, baselines: list[str], minimum: float, note: str = ""
) -> None:
    """Declare ``case / max(baselines) >= minimum`` for the summary (evaluated at the end)."""
    TARGETS.append(
        {
            "name": name,
            "group": group,
            "case": case,
            "baselines": baselines,
            "minimum": minimum,
            "note": note,
        }
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scale-100k",
        action="store_true",
        help="also run the 100k-slice scaling case (several minutes)",
    )
    parser.addoption(
        "--scale-1m",
        action="store_true",
        help="also run the 1M-slice index scaling case (bench/test_index_scaling.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scale100k: the 100k scaling case (--scale-100k)")
    config.addinivalue_line("markers", "scale1m: the 1M index scaling case (--scale-1m)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for marker, option in (("scale100k", "--scale-100k"), ("scale1m", "--scale-1m")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker} case: pass {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def _evaluate_targets() -> list[dict]:
    rows = []
    for t in TARGETS:
        num = MEASURED.get((t["group"], t["case"]))
        dens = [MEASURED.get((t["group"], b)) for b in t["baselines"]]
        if num is None or any(d is None for d in dens):
            rows.append({**t, "ratio": None, "met": None})
            continue
        best = max(d["value"] for d in dens)
        ratio = num["value"] / best
        rows.append({**t, "ratio": ratio, "met": ratio >= t["minimum"]})
    return rows


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not MEASURED:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    rows = _evaluate_targets()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    data = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "measured": [{"group": g, "case": c, **v} for (g, c), v in MEASURED.items()],
        "targets": rows,
    }
    (RESULTS_DIR / "summary.json").write_text(json.dumps(data, indent=1))
    lines = [
        f"Measured {data['when']} on {machine}.",
        "",
        "| target | measured ratio | required | met |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        met = "not run" if r["met"] is None else ("**met**" if r["met"] else "**missed**")
        lines.append(f"| {r['name']} | {ratio} | ≥ {r['minimum']:g}× | {met} |")
    lines += ["", "| group | case | throughput |", "|---|---|---|"]
    for (g, c), v in MEASURED.items():
        lines.append(f"| {g} | {c} | {v['value']:,.1f} {v['unit']} |")
    (RESULTS_DIR / "summary.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def real_images() -> list[np.ndarray]:
    """The 253 real slices, decoded once (outside any timing)."""
    from mriscan.io import decode_image

    if not (REAL_DATA / "yes").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    files = sorted(p for d in ("yes", "no") for p in (REAL_DATA / d).iterdir())
    return [decode_image(p) for p in files]


@pytest.fixture(scope="session")
def real_files() -> list[Path]:
    """Paths of the 253 real slices."""
    if not (REAL_DATA / "yes").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return sorted(p for d in ("yes", "no") for p in (REAL_DATA / d).iterdir())
