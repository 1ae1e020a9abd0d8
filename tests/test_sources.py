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
