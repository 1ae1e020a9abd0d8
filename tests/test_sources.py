"""Tests for mriscan.sources (class folders or a store, as train / cv / evaluate open them)."""

from __future__ import annotations

import logging

from mriscan.sources import open_or_ingest
from tests.conftest import write_class_folders


def test_an_empty_folder_the_class_map_leaves_out_is_said_once_ingested(tmp_path, caplog):
    """train / cv / evaluate ingest class folders through ``open_or_ingest``: an empty folder
    the class map leaves out is allowed, and its name is logged (the task's "left out:" line
    cannot say it: the store holds no such class)."""
    data = write_class_folders(tmp_path / "raw", ("no", "yes"), n_per_class=3)
    (data / "empty").mkdir()
    with caplog.at_level(logging.INFO, logger="mriscan.sources"):
        store = open_or_ingest(
            data, store_path=tmp_path / "s.zarr", image_size=32, used_classes={"no", "yes"}
        )
    with store:
        assert store.class_names == ("no", "yes")
    lines = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert lines == ["empty class folder(s) the class map leaves out: empty"]


def test_slices_ingest_stores_with_a_warning_are_said_when_train_or_cv_ingest(tmp_path, caplog):
    """Near-identical slices under two classes are stored with a warning that `mriscan
    ingest` prints; train, cv and evaluate ingest through ``open_or_ingest`` and said nothing
    (tester28 MED): the warning is logged there too, with a count and examples."""
    import numpy as np
    from PIL import Image

    data = write_class_folders(tmp_path / "raw", ("no", "yes"), n_per_class=3)
    rng = np.random.default_rng(8)
    base = np.kron(rng.integers(0, 256, (8, 8)).astype(np.uint8), np.ones((12, 12), np.uint8))
    for k, cls in enumerate(("yes", "yes", "no")):
        noisy = np.clip(base.astype(int) + rng.integers(-2, 3, base.shape), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(data / cls / f"copy{k}.png")
    Image.fromarray(np.full((60, 60), 80, np.uint8)).save(data / "no" / "flat.png")
    with caplog.at_level(logging.WARNING, logger="mriscan.sources"):
        open_or_ingest(data, store_path=tmp_path / "s.zarr", image_size=32).close()
    (line,) = [r.getMessage() for r in caplog.records if "stored with 2 warning" in r.getMessage()]
    assert line.startswith("slices stored with 2 warning(s) (`mriscan ingest` lists each)")
    assert "near-identical slices, all stored, under 2 classes: 2 yes" in line, line
    assert "no/flat.png: " in line
    # later runs on the folder (nothing new to ingest) or on the store still say what it holds
    for given in (data, tmp_path / "s.zarr"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mriscan.sources"):
            open_or_ingest(given, store_path=tmp_path / "s.zarr").close()
        said = [r.getMessage() for r in caplog.records]
        assert said == [
            "the store holds slices ingest stored with a warning: 1 uniform (e.g. no/flat.png); "
            "they are used like the others"
        ], said
    # a later ingest that stores a flagged slice of its own lists it, and still says the
    # earlier one (said only when nothing new was flagged, before)
    Image.fromarray(np.full((60, 60), 200, np.uint8)).save(data / "yes" / "flat2.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.sources"):
        open_or_ingest(data, store_path=tmp_path / "s.zarr").close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("slices stored with 1 warning(s)") and "yes/flat2.png" in said[0]
    assert said[1] == (
        "the store holds slices earlier ingests stored with a warning: 1 uniform "
        "(e.g. no/flat.png); they are used like the others"
    ), said


def test_reading_options_other_than_a_store_s_are_refused_when_it_is_the_data(tmp_path):
    """`train STORE --nifti-plane sagittal` trained on the store's axial slices without a word
    (tester30): options that would have read its files otherwise are refused, naming the
    setting; the store's own settings, or none, pass."""
    import pytest

    from mriscan.errors import ConfigError
    from mriscan.readers import ReadOptions
    from mriscan.scan_config import NiftiConfig
    from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_nifti

    for k, cls in enumerate(("no", "yes", "no", "yes")):
        (tmp_path / "raw" / cls).mkdir(parents=True, exist_ok=True)
        vol = stack_to_ras(phantom_volume(k, n_slices=6, canvas=32, tumor=cls == "yes"))
        write_nifti(tmp_path / "raw" / cls / f"v{k}.nii.gz", vol)
    store = tmp_path / "s.zarr"
    open_or_ingest(tmp_path / "raw", store_path=store, image_size=32).close()
    sagittal = ReadOptions(nifti=NiftiConfig(plane="sagittal"))
    with pytest.raises(ConfigError, match="read with --nifti-plane axial; the options given ask"):
        open_or_ingest(store, read_options=sagittal)
    for same in (None, ReadOptions(nifti=NiftiConfig(plane="axial"))):
        with open_or_ingest(store, read_options=same) as opened:
            assert len(opened) > 0
