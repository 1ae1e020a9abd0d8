"""How cost grows with the data: ingest, store size, random reads and pipeline at 1k/10k/100k
phantom slices (128²). The 100k case runs only with ``--scale-100k``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import record, target

from mriscan.ingest import IngestConfig, ingest
from mriscan.pipeline import StoreDataset
from mriscan.preprocess import PreprocessConfig
from mriscan.store import ImageStore
from mriscan.synth import SynthConfig, synthesize

CASES = [
    pytest.param(1_000, id="1k"),
    pytest.param(10_000, id="10k"),
    pytest.param(100_000, id="100k", marks=pytest.mark.scale100k),
]


@pytest.fixture(scope="module")
def phantom_dirs(tmp_path_factory):
    """Phantom class folders per N, generated on first use (not timed)."""
    made = {}

    def get(n: int):
        if n not in made:
            d = tmp_path_factory.mktemp(f"ph{n}")
            synthesize(d, SynthConfig(count=n, size_range=(150, 400), seed=n))
            made[n] = d
        return made[n]

    return get


@pytest.mark.parametrize("n", CASES)
def test_scaling(benchmark, phantom_dirs, tmp_path_factory, n):
    raw = phantom_dirs(n)
    store = tmp_path_factory.mktemp(f"st{n}") / "s.zarr"
    cfg = IngestConfig(preprocess=PreprocessConfig(size=128))
    benchmark.pedantic(lambda: ingest(raw, store, cfg), rounds=1, iterations=1)
    group = "scaling (phantoms, 128²)"
    record(group, f"ingest N={n}", n / benchmark.stats.stats.median, "files/s")
    with ImageStore.open(store) as st:
        assert len(st) == n
        record(group, f"raw/stored N={n}", n * 128 * 128 / st.nbytes_stored(), "×")
        rate = _random_batches_per_s(st, n, np.random.default_rng(0))
        record(group, f"random batches (2 threads) N={n}", rate, "img/s")
        ds = StoreDataset(st, np.arange(n), batch_size=32, shuffle=True)
        t0 = time.perf_counter()
        k = min(len(ds), 300)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ds.__getitem__, range(k)))
        record(group, f"pipeline (PyDataset) N={n}", k * 32 / (time.perf_counter() - t0), "img/s")


def _phantom_signatures(n: int, seed: int) -> np.ndarray:
    """Signatures of ``n`` phantom slices as ingest sees them (drawn small: only 16×16 counts)."""
    from mriscan.duplicates import signature
    from mriscan.synth import render_slice

    cfg = SynthConfig(count=n, size_range=(64, 96), seed=seed)
    return np.stack(
        [signature(np.asarray(render_slice(i, cfg, canvas=48)[0].convert("L"))) for i in range(n)]
    )


@pytest.mark.parametrize("n", CASES)
def test_grouping_scaling(benchmark, n):
    """Duplicate grouping at ingest compares every pair: its cost per slice grows with N."""
    from mriscan.duplicates import duplicate_groups

    sigs = _phantom_signatures(n, seed=n)
    groups = benchmark.pedantic(lambda: duplicate_groups(sigs), rounds=1, iterations=1)
    assert groups.shape == (n,)
    record(
        "scaling (phantoms, 128²)",
        f"duplicate grouping N={n}",
        n / benchmark.stats.stats.median,
        "slices/s",
    )


def _appended_store(path, n: int, seed: int = 0) -> None:
    """A store of ``n`` unique 128² phantom-based slices written by ``append`` (no decode)."""
    from mriscan.synth import phantom

    rng = np.random.default_rng(seed)
    base = np.stack(
        [
            (phantom(np.random.default_rng(i), i % 2 == 0, 128) * 255).astype(np.uint8)
            for i in range(200)
        ]
    )
    st = ImageStore.create(path, 128, overwrite=True)
    for start in range(0, n, 2000):
        k = min(2000, n - start)
        imgs = base[rng.integers(0, 200, k)]
        imgs ^= (rng.random(imgs.shape) < 0.05).astype(np.uint8)  # unique content per slice
        sigs = rng.integers(0, 256, (k, 16, 16), dtype=np.uint8)
        st.append(imgs, rng.integers(0, 2, k), signatures=sigs)
    st.commit()
    st.close()


def _random_batches_per_s(st: ImageStore, n: int, rng: np.random.Generator) -> float:
    """Random batches of 32 from the first ``n`` slices, 2 threads, in img/s."""
    batches = [np.sort(rng.choice(n, 32, replace=False)) for _ in range(300)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(st.read_batch, batches))
    return 300 * 32 / (time.perf_counter() - t0)


@pytest.mark.scale100k
def test_warm_reads_do_not_depend_on_store_size(tmp_path):
    """On one warm 100k store, reads from its first 10k and from all of it cost the same."""
    n = 100_000
    _appended_store(tmp_path / "s.zarr", n)
    rng = np.random.default_rng(1)
    with ImageStore.open(tmp_path / "s.zarr") as st:
        with ThreadPoolExecutor(2) as pool:  # warm the page cache
            list(pool.map(lambda b: st.read_batch(np.arange(b, min(b + 500, n))), range(0, n, 500)))
        rates = {10_000: [], n: []}
        for _ in range(3):  # alternate, so drifts of the shared machine hit both
            for m in rates:
                rates[m].append(_random_batches_per_s(st, m, rng))
    group = "scaling (phantoms, 128²)"
    for m, r in rates.items():
        record(group, f"warm random batches, first {m} of 100k", float(np.median(r)), "img/s")
    target(
        "warm reads: all 100k vs first 10k of one store",
        group,
        f"warm random batches, first {n} of 100k",
        ["warm random batches, first 10000 of 100k"],
        0.8,
        "flat cost per read",
    )
    assert len(st) == n
