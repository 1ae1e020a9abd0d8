"""How the store's index scales (issue 20): a commit of 32 new slices, duplicate grouping
included, and ``ImageStore.open`` (time and the reader's memory), from 1k to 1M stored slices,
against the format-2 index (every record in one ``index.json``, every group recomputed at each
commit) in the same run.

Stores are synthetic: 16×16 slices and fake records written straight into the columns (the image
chunks are left unwritten: they read as blank, and the index does not look at them), with
signatures drawn like the real sets' (``test_neighbors._signatures``). The 100k case runs with
``--scale-100k``, the 1M case with ``--scale-1m`` (the format-2 baseline is not run at 1M: its
grouping alone would take hours here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, record, target
from test_neighbors import _signatures

from mriscan.duplicates import duplicate_groups, new_links
from mriscan.neighbors import dct_projection
from mriscan.splits import union_groups
from mriscan.store import FORMAT_VERSION, ImageStore
from mriscan.store.columns import ColumnFiles, group_name, merge_name
from mriscan.store.files import StoreFiles
from mriscan.store.index import INDEX_KEY, Manifest, encode_manifest

CURRENT = f"format {FORMAT_VERSION}"  # the index format written today (columns + manifest)

GROUP = "index scaling (16² synthetic slices)"
S = 16
CASES = [
    pytest.param(1_000, id="1k"),
    pytest.param(10_000, id="10k"),
    pytest.param(100_000, id="100k", marks=pytest.mark.scale100k),
    pytest.param(1_000_000, id="1M", marks=pytest.mark.scale1m),
]
_STEP = 100_000


def _fake_columns(start: int, sigs: np.ndarray) -> dict:
    n = len(sigs)
    pos = np.arange(start, start + n)
    return {
        "label": pos % 2,
        "height": np.full(n, 512),
        "width": np.full(n, 512),
        "origin": np.zeros(n),
        "flags": np.zeros(n),
        "keyhash": np.zeros(n),
        "proj": dct_projection(sigs),
        "sig": sigs.reshape(n, -1),
        "source": [f"{'yes' if p % 2 else 'no'}/slice {p:07d}.jpg" for p in pos.tolist()],
        "sha256": [f"{p:064x}" for p in pos.tolist()],
        "pixel_sha256": [f"{p:016x}" for p in pos.tolist()],
        "file_id": [f"{p * 7919:032x}" for p in pos.tolist()],
        "group_key": [""] * n,
        "kind": ["image"] * n,
        "window": [""] * n,
        "plane": [""] * n,
    }


def build_store(path: Path, n: int) -> None:
    """A format-3 store of ``n`` synthetic slices (each its own group), columns written directly."""
    with ImageStore.create(path, S, overwrite=True) as st:
        st.set_class_names(["no", "yes"])
        st.set_salt(b"\x01" * 16)
        st.add_source("/data/raw")
        index = st.index
    files = StoreFiles(path)
    cols = ColumnFiles(files)
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    group["images"].resize((n, S, S))
    group["labels"].resize((n,))
    group["signatures"].resize((n, S, S))
    for start in range(0, n, _STEP):
        sigs = _signatures(min(_STEP, n - start), seed=start)
        cols.append_rows(start, _fake_columns(start, sigs))
        group["labels"][start : start + len(sigs)] = np.arange(start, start + len(sigs)) % 2
        group["signatures"][start : start + len(sigs)] = sigs
    cols.append(group_name("0"), 0, np.arange(n, dtype="<i8").tobytes())
    cols.append(merge_name("0"), 0, b"")
    files.write_atomic(INDEX_KEY, encode_manifest(index, Manifest(count=n)))


def legacy_copy(src: Path, dst: Path) -> None:
    """The same store with a format-2 ``index.json`` (every record inline), no columns."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("index"))
    with ImageStore.open(src) as st:
        (dst / "index.json").write_text(json.dumps(st.index.to_dict()))


_OPEN_SCRIPT = """
import json, sys, time
import numpy as np, zarr
from mriscan.store import ImageStore

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

base = rss()
t = time.perf_counter()
st = ImageStore.open(sys.argv[1])
t_open = time.perf_counter() - t
m_open = rss() - base
t = time.perf_counter()
st.labels, st.groups, st.active_indices()
t_cols = time.perf_counter() - t
print(json.dumps({"open_s": t_open, "open_mb": m_open, "columns_s": t_cols,
                  "columns_mb": rss() - base}))
"""


def measure_open(path: Path, repeats: int = 3) -> dict:
    """Median over fresh processes of: open time and RSS growth, then the time and RSS growth
    after reading labels, groups and active indices."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _OPEN_SCRIPT, str(path)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        for _ in range(repeats)
    ]
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


def commit_32(path: Path, seed: int) -> tuple[float, float]:
    """Seconds (wall, CPU of this process) to append 32 new 16² slices, link them into the groups
    and commit (open and close not counted)."""
    sigs = _signatures(32, seed=10_000_000 + seed)
    with ImageStore.open(path, mode="a") as st:
        sigs[:2] = st.signature_rows(np.array([0, 1]))  # copies of stored slices: they join
        t, cpu = time.perf_counter(), time.process_time()
        st.append(sigs, np.arange(32) % 2, [{"source": f"new/{seed}-{k}"} for k in range(32)],
                  signatures=sigs)  # fmt: skip
        keys = [""] * 32
        links = new_links(
            st.pending_signatures(), keys, offset=len(st),
            projections=st.signature_projections(), read_signatures=st.signature_rows,
            constants=st.constant_signatures(), key_positions=st.positions_with_keys(keys),
        )  # fmt: skip
        st.commit(links=links)
        return time.perf_counter() - t, time.process_time() - cpu


def legacy_commit_32(path: Path, seed: int) -> float:
    """The format-2 commit's work at the same N, re-enacted with the same functions: regroup
    every slice (``union_groups(duplicate_groups(all))``) and rewrite the whole ``index.json``."""
    sigs = _signatures(32, seed=10_000_000 + seed)
    with ImageStore.open(path) as st:
        t = time.perf_counter()
        everything = np.concatenate([st.signatures(), sigs])
        keys = [r.group_key for r in st.index.records] + [""] * 32
        union_groups(duplicate_groups(everything), keys)
        data = json.dumps(st.index.to_dict()).encode()
        StoreFiles(path).write_atomic(".bench-index.json", data)
        return time.perf_counter() - t


@pytest.mark.parametrize("n", CASES)
def test_index_scaling(tmp_path, n):
    path = tmp_path / "s.zarr"
    t0 = time.perf_counter()
    build_store(path, n)
    print(f"\nN={n}: built in {time.perf_counter() - t0:.1f} s")
    commit_32(path, 99)  # warm-up: first imports and page cache (the slices count, not the time)
    commits, cpus = zip(*[commit_32(path, seed) for seed in range(5)], strict=True)
    opened = measure_open(path)
    with ImageStore.open(path) as st:
        assert len(st) == n + 192
        g = st.groups
        assert g[n] == g[0] and g[n + 1] == g[1] and g[n + 32] == g[0]  # copies joined
    t_commit = float(np.median(commits))
    record(GROUP, f"{CURRENT}: commit of 32 (grouping incl.) N={n}", 1 / t_commit, "commits/s")
    record(GROUP, f"{CURRENT}: commit of 32, CPU s N={n}", float(np.median(cpus)), "s")
    record(GROUP, f"{CURRENT}: open N={n}", 1 / opened["open_s"], "opens/s")
    record(GROUP, f"{CURRENT}: reader RSS after open N={n}", opened["open_mb"], "MB")
    record(GROUP, f"{CURRENT}: RSS after labels+groups N={n}", opened["columns_mb"], "MB")
    print(f"{CURRENT}: commit {commits} s wall, {cpus} s CPU; open {opened}")
    if n > 100_000:
        return
    legacy = tmp_path / "legacy.zarr"
    legacy_copy(path, legacy)
    old_commit = float(
        np.median([legacy_commit_32(legacy, s) for s in range(1 if n > 10_000 else 3)])
    )
    old_open = measure_open(legacy)
    record(GROUP, f"format 2: commit of 32 (grouping incl.) N={n}", 1 / old_commit, "commits/s")
    record(GROUP, f"format 2: open N={n}", 1 / old_open["open_s"], "opens/s")
    record(GROUP, f"format 2: reader RSS after open N={n}", old_open["open_mb"], "MB")
    print(f"format 2: commit {old_commit} s; open {old_open}")
    new = f"{CURRENT}: commit of 32 (grouping incl.) N={n}"
    old = f"format 2: commit of 32 (grouping incl.) N={n}"
    target(f"index commit N={n}", GROUP, new, [old], 1.0, f"{CURRENT} vs format 2")
    new, old = f"{CURRENT}: open N={n}", f"format 2: open N={n}"
    target(f"index open N={n}", GROUP, new, [old], 1.0, f"{CURRENT} vs format 2")
