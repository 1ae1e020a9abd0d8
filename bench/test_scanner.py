"""Scanner formats: mriscan's readers vs the libraries' own read time, on synthetic slices.

DICOM: ``read_dicom`` (decode + rescale + window + ids) vs ``pydicom.dcmread(...).pixel_array``
on 300 single-slice 256x256 files (uncompressed, explicit VR LE), with the header window and
with the percentile window. NIfTI: ``read_nifti`` (all slices, axial) vs ``nibabel.load(...)
.get_fdata()`` on 3 volumes of 256x256x100 (300 slices), uncompressed and gzipped.
Throughput in slices per second; target: mriscan >= 70% of the library's rate (issue 18).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import record, target

from mriscan.dicom import DicomConfig, read_dicom
from mriscan.nifti import NiftiConfig, read_nifti
from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series, write_nifti

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
