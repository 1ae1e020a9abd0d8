"""mriscan.synth_scanner: made-up patients are framed apart, so groups follow patients."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.store import ImageStore
from mriscan.synth_scanner import frame_stack, phantom_volume, write_scanner_set


def test_framing_shrinks_and_moves_the_head_alike_in_every_slice():
    stack = phantom_volume(1, n_slices=3, canvas=64)
    framed = frame_stack(stack, np.random.default_rng(0))
    assert framed.shape == stack.shape and framed.dtype == stack.dtype
    area = (stack > 0.2).sum(axis=(1, 2))
    framed_area = (framed > 0.2).sum(axis=(1, 2))
    assert np.all(framed_area < area)  # shrunk (scale < 1 for this draw)
    ratio = framed_area / area
    assert np.ptp(ratio) < 0.1  # one scale for the whole stack


def test_the_default_dicom_set_gives_one_split_group_per_made_up_patient(tmp_path):
    """Before each patient had a placement of its own, the heads' whole-slice thumbnails
    correlated above the near-duplicate threshold across patients (even across classes) and 8
    patients made 6 split groups, too few for train's default split."""
    counts = write_scanner_set(tmp_path / "raw", fmt="dicom")
    ingest(tmp_path / "raw", tmp_path / "s.zarr", IngestConfig(PreprocessConfig(size=32)))
    with ImageStore.open(tmp_path / "s.zarr") as store:
        groups = store.groups
    assert len(groups) == counts["slices"] == 144
    assert len(np.unique(groups)) == counts["yes"] + counts["no"] == 8


@pytest.mark.parametrize("fmt, seed", [("dicom", 0), ("nifti", 0), ("dicom", 1)])
def test_a_made_up_set_has_no_near_identical_slices_under_two_classes(tmp_path, fmt, seed):
    """The default DICOM set held a tumor series whose faint lesion left its thumbnails within
    0.95 of a healthy patient's, so `synth` then `ingest --strict` refused its own set."""
    write_scanner_set(tmp_path / "raw", fmt=fmt, seed=seed)
    report = ingest(
        tmp_path / "raw", tmp_path / "s.zarr", IngestConfig(PreprocessConfig(size=32), strict=True)
    )
    assert report.total == 144 and not report.warnings
