"""Scanner formats: mriscan's readers vs the libraries' own read time, on synthetic slices.

DICOM: ``read_dicom`` (decode + rescale + window + ids) vs ``pydicom.dcmread(...).pixel_array``
on 300 single-slice 256x256 files (uncompressed, explicit VR LE), with the header window and
with the percentile window. NIfTI: ``read_nifti`` (all slices, axial) vs ``nibabel.load(...)
.get_fdata()`` on 3 volumes of 256x256x100 (300 slices), uncompressed and gzipped.
Throughput in slices per second; target: mriscan >= 70% of the library's rate (issue 18).

Ingest (``test_ingest_vs_library``): the whole ``mriscan.ingest.ingest`` path (hash, read,
window, crop/resize/align, near-duplicate grouping, store write, commit; its default 2 worker
threads here) on class folders of the same kind of files, against the library's own read of
the same files (one thread, and two threads), timed interleaved in every round (library,
library on 2 threads, ingest into a new store), per-side medians. Files per second.
``test_ingest_vs_library_large``: the same on 2,000 DICOM files (40 series) and 16 NIfTI
volumes, beside the issue's case, where a run's fixed costs (listing, store creation, the hash
pass, the commit's fsyncs) weigh less.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from itertools import count

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import interleaved, record, target

from mriscan.dicom import DicomConfig, read_dicom
from mriscan.ingest import IngestConfig, ingest
from mriscan.nifti import NiftiConfig, read_nifti
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

SALT = b"benchmark-salt-0123456789"
N_DICOM = 300
NIFTI_VOLUMES, NIFTI_DEPTH = 3, 100


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("dicom")
    stack = phantom_volume(0, n_slices=N_DICOM, canvas=256)
    return {
        "header": write_dicom_series(root / "w", stack, window=(900, 1600)),
        "percentile": write_dicom_series(root / "p", stack, window=None, seed=1),
    }


@pytest.fixture(scope="module")
def nifti_files(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("nifti")
    out: dict[str, list] = {".nii": [], ".nii.gz": []}
    for v in range(NIFTI_VOLUMES):
        ras = stack_to_ras(phantom_volume(v, n_slices=NIFTI_DEPTH, canvas=256))
        for suffix in out:
            out[suffix].append(write_nifti(root / f"v{v}{suffix}", ras, axcodes="LPS"))
    return out


def _pydicom(files):
    return [pydicom.dcmread(f).pixel_array for f in files]


def _mriscan_dicom(files):
    return [read_dicom(f, salt=SALT, config=DicomConfig()) for f in files]


@pytest.mark.parametrize("window", ["header", "percentile"])
@pytest.mark.parametrize("method", ["pydicom", "mriscan"])
def test_dicom_read(benchmark, dicom_files, window, method):
    files = dicom_files[window]
    fn = _pydicom if method == "pydicom" else _mriscan_dicom
    benchmark.pedantic(fn, args=(files,), rounds=5, warmup_rounds=1, iterations=1)
    group = f"DICOM read 300×256² ({window} window)"
    record(group, method, len(files) / benchmark.stats.stats.median, "slices/s")
    if method == "mriscan":
        target(f"DICOM read vs pydicom ({window} window)", group, "mriscan", ["pydicom"], 0.7)


def _nibabel(files):
    return [nib.load(f).get_fdata() for f in files]


def _mriscan_nifti(files):
    return [read_nifti(f, salt=SALT, config=NiftiConfig(selection="all")) for f in files]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("method", ["nibabel", "mriscan"])
def test_nifti_read(benchmark, nifti_files, suffix, method):
    files = nifti_files[suffix]
    fn = _nibabel if method == "nibabel" else _mriscan_nifti
    out = benchmark.pedantic(fn, args=(files,), rounds=5, warmup_rounds=1, iterations=1)
    if method == "mriscan":
        assert sum(len(r.slices) for r in out) == NIFTI_VOLUMES * NIFTI_DEPTH
    else:
        assert all(np.asarray(a).shape == (256, 256, NIFTI_DEPTH) for a in out)
    group = f"NIfTI read 3×256²×100 ({suffix})"
    slices = NIFTI_VOLUMES * NIFTI_DEPTH
    record(group, method, slices / benchmark.stats.stats.median, "slices/s")
    if method == "mriscan":
        target(f"NIfTI read vs nibabel ({suffix})", group, "mriscan", ["nibabel"], 0.7)


INGEST_ROUNDS = 5
LARGE_ROUNDS = 3


def _class_folders(root, n_series: int, n_volumes: int) -> dict[str, tuple]:
    """(root, files) per kind. DICOM: ``n_series`` series of 50 slices of 256x256 (one made-up
    patient each, half per class folder, every other series with a header window). NIfTI:
    ``n_volumes`` volumes of 256x256x100 (.nii.gz, LPS on disk), half per class folder."""
    dicom = root / "dicom"
    for k in range(n_series):
        cls = "yes" if k < n_series // 2 else "no"
        stack = phantom_volume(k, n_slices=50, canvas=256, tumor=cls == "yes")
        write_dicom_series(dicom / cls / f"patient{k}", stack, seed=k,
                           patient=FakePatient(patient_id=f"FAKE-{k:04d}"),
                           window=(900.0, 1600.0) if k % 2 else None)  # fmt: skip
    nifti = root / "nifti"
    for v in range(n_volumes):
        cls = "yes" if v < n_volumes // 2 else "no"
        (nifti / cls).mkdir(parents=True, exist_ok=True)
        ras = stack_to_ras(phantom_volume(10 + v, n_slices=100, canvas=256, tumor=cls == "yes"))
        write_nifti(nifti / cls / f"volume{v}.nii.gz", ras, axcodes="LPS")
    return {
        kind: (folder, sorted(p for p in folder.rglob("*") if p.is_file()))
        for kind, folder in (("DICOM", dicom), ("NIfTI", nifti))
    }


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> dict[str, tuple]:
    """The issue-18 case: DICOM 300 slices as 6 series of 50; NIfTI 4 volumes."""
    return _class_folders(tmp_path_factory.mktemp("ingest"), n_series=6, n_volumes=4)


@pytest.fixture(scope="module")
def large_class_folders(tmp_path_factory) -> dict[str, tuple]:
    """A second, larger case beside it (fixed costs per run weigh less): DICOM 2,000 slices as
    40 series of 50; NIfTI 16 volumes."""
    return _class_folders(tmp_path_factory.mktemp("ingest_large"), n_series=40, n_volumes=16)


def _library_read(kind: str):
    if kind == "DICOM":
        return lambda f: pydicom.dcmread(f).pixel_array
    return lambda f: nib.load(f).get_fdata()


def _ingest_vs_library(benchmark, folder, files, kind: str, tmp_path, rounds: int, name: str):
    """``ingest`` of ``folder`` vs the library reading its ``files``, interleaved; recorded
    under the target row ``name``."""
    read = _library_read(kind)
    stores = count()

    def library() -> None:
        for f in files:
            read(f)

    def library_2_threads() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(read, files))

    def run_ingest():
        store = tmp_path / f"s{next(stores)}.zarr"
        report = ingest(folder, store, IngestConfig(workers=2))
        assert report.n_added > 0 and not report.skipped
        # removing the store is not part of ingest (the library side deletes nothing): after
        # the clock (it cost 45-100 ms per run, up to a third of the 300-file ingest)
        return lambda: shutil.rmtree(store)

    sides = {
        f"{kind} library read": library,
        f"{kind} library read, 2 threads": library_2_threads,
        "mriscan ingest": run_ingest,
    }
    med = interleaved(benchmark, sides, rounds)
    if not med:  # --benchmark-disable: ran once, nothing timed
        return
    group = f"{kind} ingest vs library read ({len(files)} files)"
    for case, sec in med.items():
        record(group, case, len(files) / sec, "files/s")
    target(
        name,
        group,
        "mriscan ingest",
        [f"{kind} library read", f"{kind} library read, 2 threads"],
        0.7,
        note="baseline: the faster of 1 and 2 library threads",
    )


@pytest.mark.parametrize("kind", ["DICOM", "NIfTI"])
def test_ingest_vs_library(benchmark, class_folders, tmp_path, kind):
    """``ingest`` of the class folders vs the library reading the same files, interleaved."""
    folder, files = class_folders[kind]
    name = f"{kind} ingest vs the library's own read (issue 18)"
    _ingest_vs_library(benchmark, folder, files, kind, tmp_path, INGEST_ROUNDS, name)


@pytest.mark.parametrize("kind", ["DICOM", "NIfTI"])
def test_ingest_vs_library_large(benchmark, large_class_folders, tmp_path, kind):
    """The same comparison on the larger folders (2,000 DICOM files, 16 NIfTI volumes)."""
    folder, files = large_class_folders[kind]
    name = f"{kind} ingest vs the library's own read, {len(files):,} files (issue 18, larger)"
    _ingest_vs_library(benchmark, folder, files, kind, tmp_path, LARGE_ROUNDS, name)
