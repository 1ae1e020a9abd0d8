"""The DICOM/NIfTI reader settings (DicomConfig, NiftiConfig, --modality) are options of every
command that reads scanner files, and reach the readers."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.ingest import IngestConfig, ingest
from mriscan.io import SourceFile
from mriscan.preprocess import PreprocessConfig
from mriscan.readers import ReadOptions
from mriscan.scan_config import DicomConfig, NiftiConfig, ReaderSettings
from mriscan.scan_predict import read_inputs
from mriscan.sources import open_or_ingest
from mriscan.store import ImageStore
from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series, write_nifti

OPTS = ["--nifti-slices", "all", "--nifti-plane", "coronal", "--nifti-4d", "refuse",
        "--dicom-window", "2", "98", "--no-dicom-header-window",
        "--modality", "CT", "--modality", "MR"]  # fmt: skip
WANTED = ReadOptions(
    dicom=DicomConfig(window_percentiles=(2.0, 98.0), use_header_window=False,
                      modalities=("CT", "MR")),
    nifti=NiftiConfig(plane="coronal", selection="all", four_d="refuse"),
)  # fmt: skip


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """yes/: a 6-slice NIfTI volume of 32x32 (coronal: 32 slices); no/: a 3-slice series."""
    root = tmp_path / "scans"
    (root / "yes").mkdir(parents=True)
    write_nifti(root / "yes" / "v.nii.gz", stack_to_ras(phantom_volume(1, n_slices=6, canvas=32)))
    write_dicom_series(root / "no" / "s", phantom_volume(2, n_slices=3, canvas=32))
    return root


class _CapturedError(Exception):
    pass


@pytest.mark.parametrize(
    ("command", "module", "func"),
    [
        ("train", "mriscan.training.workflow", "train"),
        ("cv", "mriscan.training.crossval", "cross_validate"),
        ("evaluate", "mriscan.evaluate", "evaluate"),
        ("predict", "mriscan.predict", "predict"),
        ("explain", "mriscan.explain", "explain"),
    ],
)
def test_scan_options_reach_every_command(command, module, func, monkeypatch, tmp_path):
    seen = {}

    def fake(*args, **kw):
        seen.update(kw)
        raise _CapturedError

    # a stand-in module: the command imports its runner when it runs (no TensorFlow here)
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{func: fake}))
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    write_nifti(tmp_path / "v.nii.gz", stack_to_ras(phantom_volume(1, n_slices=2, canvas=16)))
    args = {
        "train": ["train", str(tmp_path)],
        "cv": ["cv", str(tmp_path)],
        "evaluate": ["evaluate", str(tmp_path), "--model", str(model)],
        "predict": ["predict", str(model), str(tmp_path)],
        "explain": ["explain", str(model), str(tmp_path / "v.nii.gz")],
    }[command]
    res = CliRunner().invoke(main, [*args, *OPTS])
    assert isinstance(res.exception, _CapturedError), res.output
    # the typed options only: the rest comes from the store's or the model's record
    assert seen["read_options"].resolve() == ReaderSettings(dicom=WANTED.dicom, nifti=WANTED.nifti)
    assert set(seen["read_options"].overrides) == {
        "dicom.window_percentiles", "dicom.use_header_window", "dicom.modalities",
        "nifti.plane", "nifti.selection", "nifti.four_d"}  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert seen["read_options"] == ReadOptions() and not seen["read_options"].chosen


def test_ingest_options_reach_the_readers(scans, tmp_path):
    plain = tmp_path / "plain.zarr"
    res = CliRunner().invoke(main, ["ingest", str(scans), "--store", str(plain),
                                    "--image-size", "32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    tuned = tmp_path / "tuned.zarr"
    res = CliRunner().invoke(main, ["ingest", str(scans), "--store", str(tuned),
                                    "--image-size", "32", *OPTS[:4], *OPTS[6:10]])  # fmt: skip
    assert res.exit_code == 0, res.output
    for store, plane, n_nifti, window in ((plain, "axial", None, "header"),
                                          (tuned, "coronal", 32, "percentile")):  # fmt: skip
        with ImageStore.open(store) as st:
            nifti = [r for r in st.index.records if r.kind == "nifti"]
            dicom = [r for r in st.index.records if r.kind == "dicom"]
        assert {r.plane for r in nifti} == {plane}
        assert n_nifti is None or len(nifti) == n_nifti
        assert len(dicom) == 3 and {r.window for r in dicom} == {window}


def test_implicit_ingest_and_predict_reads_use_the_options(scans, tmp_path):
    opts = ReadOptions(nifti=NiftiConfig(plane="coronal", selection="all"))
    with open_or_ingest(scans, store_path=tmp_path / "s.zarr", image_size=32,
                        read_options=opts) as st:  # fmt: skip
        assert sum(r.kind == "nifti" for r in st.index.records) == 32
    files = [SourceFile(scans / "yes" / "v.nii.gz", "nifti")]
    default = read_inputs(files)[0]
    chosen = read_inputs(files, options=opts)[0]
    assert len(chosen.slices) == 32 and len(default.slices) < 32
    assert {s.plane for s in chosen.slices} == {"coronal"}
    assert np.all([s.image.shape == (6, 32) or s.image.shape == (32, 6) for s in chosen.slices])


def test_ingest_config_still_takes_reader_configs(scans, tmp_path):
    cfg = IngestConfig(preprocess=PreprocessConfig(size=32), nifti=NiftiConfig(selection="all"))
    report = ingest(scans, tmp_path / "s.zarr", cfg)
    assert report.added["yes"] == 6  # every axial slice, not only the brain ones
