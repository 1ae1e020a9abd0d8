"""Store reads vs h5py (the original design) and a warm np.memmap; ingest vs the decode floor.

The real set's 228 unique preprocessed slices are replicated with flips and shifts to N slices.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import per_second, record, target

from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig, preprocess_batch
from mriscan.store import ImageStore

h5py = pytest.importorskip("h5py")

SIZES = [2_000, 20_000]
BATCH = 32
N_BATCHES = 240


def replicate(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` slices made from ``base`` by flips and small shifts (no added noise)."""
    rng = np.random.default_rng(seed)
    out = base[rng.integers(0, len(base), n)].copy()
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    for i, (dy, dx) in enumerate(rng.integers(-6, 7, (n, 2))):
        out[i] = np.roll(out[i], (dy, dx), axis=(0, 1))
    return out


@pytest.fixture(scope="module")
def stores(real_images, tmp_path_factory):
    """For each N: the mriscan store, an h5py file (chunks of 32, lzf) and a raw memmap file."""
    base = preprocess_batch(real_images, size=128)
    root = tmp_path_factory.mktemp("stores")
    made = {}
    for n in SIZES:
        data = replicate(base, n)
        zpath = root / f"s{n}.zarr"
        with ImageStore.create(zpath, 128) as st:
            st.set_class_names(["no", "yes"])
            for i in range(0, n, 1024):
                st.append(data[i : i + 1024], np.zeros(len(data[i : i + 1024]), int))
            st.commit()
        hpath = root / f"s{n}.h5"
        with h5py.File(hpath, "w") as fh:
            fh.create_dataset("images", data=data, chunks=(32, 128, 128), compression="lzf")
        mpath = root / f"s{n}.raw"
        data.tofile(mpath)
        made[n] = (zpath, hpath, mpath, data)
    return made


def _random_batches(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, BATCH, replace=False)) for _ in range(N_BATCHES)]


def _threaded(read, batches, threads):
    def run():
        with ThreadPoolExecutor(threads) as pool:
            for out in pool.map(read, batches):
                assert out.shape[0] == BATCH

    return run


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("method", ["mriscan", "h5py", "memmap"])
def test_random_batches(benchmark, stores, n, threads, method):
    zpath, hpath, mpath, data = stores[n]
    batches = _random_batches(n, seed=threads)
    if method == "mriscan":
        st = ImageStore.open(zpath)
        read = lambda idx: st.read_batch(idx)[0]  # noqa: E731
    elif method == "h5py":
        fh = h5py.File(hpath, "r")
        ds = fh["images"]
        read = lambda idx: ds[idx]  # noqa: E731
    else:
        mm = np.memmap(mpath, dtype=np.uint8, mode="r", shape=data.shape)
        np.asarray(mm).sum()  # warm the page cache
        read = lambda idx: np.asarray(mm[idx])  # noqa: E731
    benchmark.pedantic(_threaded(read, batches, threads), rounds=3, warmup_rounds=1)
    group = f"random batches of 32, N={n}, {threads} thread(s)"
    record(group, method, per_second(benchmark, N_BATCHES * BATCH), "img/s")
    if method == "mriscan" and threads == 2 and n == max(SIZES):
        target(f"store random batches N={n}, 2 threads: vs h5py", group, "mriscan", ["h5py"], 10)
        target(
            f"store random batches N={n}, 2 threads: vs warm memmap",
            group,
            "mriscan",
            ["memmap"],
            0.25,
        )


@pytest.mark.parametrize("method", ["mriscan", "h5py", "memmap"])
def test_sequential_scan(benchmark, stores, method):
    n = max(SIZES)
    zpath, hpath, mpath, data = stores[n]
    if method == "mriscan":
        st = ImageStore.open(zpath)
        fn = lambda: [b for b in st.iter_batches(256)]  # noqa: E731
    elif method == "h5py":
        fh = h5py.File(hpath, "r")
        ds = fh["images"]
        fn = lambda: [ds[i : i + 256] for i in range(0, n, 256)]  # noqa: E731
    else:
        mm = np.memmap(mpath, dtype=np.uint8, mode="r", shape=data.shape)
        fn = lambda: [np.array(mm[i : i + 256]) for i in range(0, n, 256)]  # noqa: E731
    benchmark.pedantic(fn, rounds=2, warmup_rounds=1)
    record(f"sequential scan N={n}", method, per_second(benchmark, n), "img/s")


def test_store_size(benchmark, stores):
    n = max(SIZES)
    zpath, _, _, data = stores[n]
    with ImageStore.open(zpath) as st:
        stored = benchmark.pedantic(st.nbytes_stored, rounds=1, iterations=1)
    record("store size (real slices replicated)", "raw/stored", data.nbytes / stored, "×")
    record("store size (real slices replicated)", "raw", 1.0, "×")
    target(
        f"store N={n}: raw/stored (≤ 60% of raw ⇔ ≥ 1.67×)",
        "store size (real slices replicated)",
        "raw/stored",
        ["raw"],
        1 / 0.6,
    )


@pytest.mark.parametrize("method", ["ingest", "decode_floor"])
def test_ingest_vs_decode_floor(benchmark, real_files, tmp_path, method):
    from mriscan.io import decode_image

    workers = os.cpu_count() or 1
    raw = real_files[0].parent.parent
    counter = iter(range(1000))

    if method == "ingest":

        def setup():
            path = tmp_path / f"i{next(counter)}.zarr"
            shutil.rmtree(path, ignore_errors=True)
            return (path,), {}

        def fn(path):
            ingest(raw, path, IngestConfig(preprocess=PreprocessConfig(size=128), workers=workers))

        benchmark.pedantic(fn, setup=setup, rounds=3, warmup_rounds=1)
    else:

        def fn():
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(decode_image, real_files))

        benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    record(
        f"ingest real253, {workers} workers",
        method,
        per_second(benchmark, len(real_files)),
        "files/s",
    )
    if method == "ingest":
        target(
            "ingest vs decode-only floor (same files, same workers)",
            f"ingest real253, {workers} workers",
            "ingest",
            ["decode_floor"],
            0.8,
        )
