"""Store reads vs h5py (the original design) and a warm np.memmap; ingest vs the decode floor.

The real set's 228 unique preprocessed slices are replicated with flips and shifts to N slices.
Issue 20's cases (``test_random_batches_issue20``, ``test_ingest_vs_decode_floor_issue20``)
use the 4,564 real figshare_br35h slices and run every side in interleaved rounds (medians),
because the machine is shared.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, per_second, record, target

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


# ---- issue 20: the sharded layout vs a warm memmap; ingest vs decode floor, interleaved --------
FIGSHARE = REPO.parent / "shared" / "data" / "figshare_br35h"
N20 = 20_000
ROUNDS = 5


def _figshare_files() -> list[Path]:
    if not FIGSHARE.is_dir():
        pytest.skip(f"figshare_br35h not found at {FIGSHARE}")
    return sorted(p for d in sorted(FIGSHARE.iterdir()) if d.is_dir() for p in d.iterdir())


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """20,000 slices made from the 4,564 real figshare_br35h slices (128², flips and shifts),
    as: the sharded store (today's layout), the same in the chunk-per-slice layout of the last
    sessions, and a raw file for np.memmap."""
    import zarr

    from mriscan.io import decode_image
    from mriscan.store.engines import create_chunk_per_slice_array, create_images_array

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        imgs = list(pool.map(decode_image, _figshare_files()))
    data = replicate(preprocess_batch(imgs, size=128), N20, seed=1)
    root = tmp_path_factory.mktemp("layouts")
    made = {}
    for name in ("sharded", "sharded-lz4", "per-slice"):
        path = root / f"{name}.zarr"
        with ImageStore.create(path, 128) as st:
            st.set_class_names(["x"])
            st.commit()
        if name != "sharded":  # the default layout: raw slices in shards
            shutil.rmtree(path / "images")
            group = zarr.open_group(str(path), mode="r+")
            if name == "per-slice":
                create_chunk_per_slice_array(group, 128)
            else:
                create_images_array(group, 128, compress=True)
        with ImageStore.open(path, mode="a") as st:
            for i in range(0, N20, 2048):
                st.append(data[i : i + 2048], np.zeros(len(data[i : i + 2048]), int))
            st.commit()
        made[name] = path
    raw = root / "raw.u8"
    data.tofile(raw)
    made["raw"] = raw
    return made, data


def test_random_batches_issue20(benchmark, layouts):
    """Random batches of 32 at 2 threads: mriscan's store (raw slices in shards), the same with
    LZ4, the old chunk-per-slice store, TensorStore on the LZ4 shards, and a warm np.memmap;
    rounds interleaved."""
    made, data = layouts
    batches = _random_batches(N20, seed=7)
    readers = {}
    stores = {k: ImageStore.open(made[k]) for k in ("sharded", "sharded-lz4", "per-slice")}
    readers["mriscan"] = lambda idx: stores["sharded"].read_batch(idx)[0]
    readers["mriscan LZ4 shards"] = lambda idx: stores["sharded-lz4"].read_batch(idx)[0]
    readers["mriscan per-slice files"] = lambda idx: stores["per-slice"].read_batch(idx)[0]
    try:
        import tensorstore as ts

        arr = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(made["sharded-lz4"] / "images")},
                "context": {"cache_pool": {"total_bytes_limit": 64 << 20}},
            }
        ).result()
        readers["tensorstore (LZ4 shards)"] = lambda idx: arr[idx].read().result()
    except ImportError:
        pass
    mm = np.memmap(made["raw"], dtype=np.uint8, mode="r", shape=data.shape)
    np.asarray(mm).sum()  # warm the page cache
    readers["memmap"] = lambda idx: np.asarray(mm[idx])
    idx = batches[0]
    for name, read in readers.items():  # same pixels from every reader; warm every cache
        np.testing.assert_array_equal(read(idx), data[idx], err_msg=name)
        _threaded(read, batches, 2)()
    rates: dict[str, list[float]] = {k: [] for k in readers}

    def rounds():
        for _ in range(ROUNDS):
            for name, read in readers.items():
                t0 = time.perf_counter()
                _threaded(read, batches, 2)()
                rates[name].append(N_BATCHES * BATCH / (time.perf_counter() - t0))

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    group = f"issue 20: random batches of 32, N={N20} real slices, 2 threads (medians)"
    for name, r in rates.items():
        record(group, name, float(np.median(r)), "img/s")
        print(f"{name}: median {np.median(r):,.0f} img/s, rounds {[round(x) for x in r]}")
    for name in ("sharded", "sharded-lz4", "per-slice"):
        size = sum(p.stat().st_size for p in (made[name] / "images").rglob("*") if p.is_file())
        print(f"{name}: images {size / data.nbytes:.1%} of raw")
    target("issue 20: store random batches vs warm memmap", group, "mriscan", ["memmap"], 0.25)
    for s in stores.values():
        s.close()


def test_ingest_vs_decode_floor_issue20(benchmark, tmp_path):
    """Ingest of 1,000 real 512² glioma JPEGs vs decoding them (Pillow, 2 threads), rounds
    interleaved, medians."""
    from mriscan.io import decode_image

    files = sorted((FIGSHARE / "glioma").iterdir())[:1000] if FIGSHARE.is_dir() else []
    if len(files) < 1000:
        pytest.skip(f"1,000 glioma JPEGs not found under {FIGSHARE}")
    raw = tmp_path / "raw"
    for d in ("a", "b"):  # two classes of 500 consecutive files (alternating files would be
        (raw / d).mkdir(parents=True)  # neighbouring slices under two classes: warnings)
    for k, p in enumerate(files):
        (raw / ("a" if k < 500 else "b") / p.name).symlink_to(p)
    workers = 2
    cfg = IngestConfig(preprocess=PreprocessConfig(size=128), workers=workers)
    ingest(raw, tmp_path / "warm.zarr", cfg)  # Numba compilation and page cache outside timing
    times: dict[str, list[float]] = {"ingest": [], "decode_floor": []}

    def rounds():
        for k in range(ROUNDS):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(decode_image, files))
            times["decode_floor"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ingest(raw, tmp_path / f"i{k}.zarr", cfg)
            times["ingest"].append(time.perf_counter() - t0)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    group = "issue 20: ingest 1,000 real 512² JPEGs, 2 workers (medians)"
    for name, t in times.items():
        record(group, name, len(files) / float(np.median(t)), "files/s")
        print(f"{name}: median {np.median(t):.2f} s, rounds {[round(x, 2) for x in t]}")
    target("issue 20: ingest vs decode-only floor", group, "ingest", ["decode_floor"], 0.6)
