"""evaluate on a trained model's recorded splits and on a labelled folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.errors import MriscanError
from mriscan.evaluate import evaluate
from mriscan.store import ImageStore
from mriscan.training.workflow import train
from tests.conftest import fast_config

TINY = fast_config()


@pytest.mark.backend
def test_evaluate_recorded_test_split_and_folder(small_store, tmp_path, class_folder):
    out = tmp_path / "art"
    result = train(small_store, TINY, out=out)
    model = out / "models" / "best_model.keras"
    ev = evaluate(model, split="test")
    assert ev["n"] == len(result.split["test"])
    assert ev["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    for f in ("metrics.json", "confusion_matrix.png", "predictions.csv"):
        assert (out / "evaluation" / f).is_file()
    folder = evaluate(model, class_folder, out=tmp_path / "ev2")
    # the synthetic folder looks like the training phantoms: near-duplicates are removed
    removed = folder["near_duplicates_removed"]["count"]
    assert folder["n"] + removed == 12 and folder["split"] == "all"
    kept = evaluate(model, class_folder, out=tmp_path / "ev3", remove_duplicates=False)
    assert kept["n"] == 12 and kept["near_duplicates_removed"]["count"] == 0


def test_thresholds_never_see_test_data(monkeypatch, small_store, tmp_path):
    """The threshold is computed from validation labels only: corrupting test labels for
    threshold selection would be visible here as a call with test indices."""
    import mriscan.metrics as mx

    seen: list[int] = []
    real = mx.youden_threshold

    def spy(y, p):
        seen.append(len(y))
        return real(y, p)

    monkeypatch.setattr(mx, "youden_threshold", spy)
    result = train(small_store, TINY, out=tmp_path / "a")
    assert seen == [len(result.split["val"])]
    assert set(result.split["val"]).isdisjoint(result.split["test"])


def test_a_rebuilt_store_is_refused_for_a_recorded_split(small_store):
    from mriscan.evaluate import _recorded_indices

    with ImageStore.open(small_store) as store:
        recs = store.index.records
        part = {"indices": [0, 1, 2], "pixel_sha256": [recs[i].pixel_sha256 for i in (0, 1, 2)]}
        assert _recorded_indices(store, part, "test").tolist() == [0, 1, 2]
        moved = {**part, "pixel_sha256": [recs[i].pixel_sha256 for i in (1, 0, 2)]}
        with pytest.raises(MriscanError, match="no longer the slices"):
            _recorded_indices(store, moved, "test")
        with pytest.raises(MriscanError, match="store was rebuilt"):
            _recorded_indices(store, {"indices": [len(recs)]}, "test")


# --- issue 19 item 10 (evaluate): unreadable files are named; undefined metrics say so ----------


@pytest.fixture
def loose_model(tmp_path):
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m" / "model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    cfg = PreprocessConfig(size=32)
    ModelCard(preprocess=cfg, class_names=("no", "yes"), threshold=0.5).save(path)
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.backend
def test_unreadable_files_are_named_and_counted(loose_model, class_folder, tmp_path):
    bad = sorted((class_folder / "yes").iterdir())[:2] + sorted((class_folder / "no").iterdir())[:1]
    for p in bad:
        _truncate(p)
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 9 and ev["n_files"] == 12 and ev["n_unreadable"] == 3
    assert sorted(u["path"] for u in ev["unreadable"]) == sorted(str(p) for p in bad)
    assert all(u["error"] for u in ev["unreadable"]) and ev["undefined"] == {}
    saved = _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")
    assert saved["n_unreadable"] == 3 and len(saved["unreadable"]) == 3
    table = (tmp_path / "ev" / "evaluation" / "predictions.csv").read_text().splitlines()
    assert len(table) == 1 + 12 and sum(",," in line for line in table) == 3
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 0, r.output
    assert "3 of 12 file(s) could not be read" in r.output
    assert all(str(p) in r.output for p in bad)


@pytest.mark.backend
def test_exact_duplicate_files_are_counted_and_listed(loose_model, class_folder, tmp_path):
    """Files with the same bytes are stored, and so scored, once: the count is reported (CLI,
    metrics.json, exact_duplicates.csv) instead of vanishing from n_files."""
    import shutil

    first = sorted((class_folder / "yes").iterdir())[0]
    shutil.copy(first, class_folder / "yes" / f"copy_a{first.suffix}")
    shutil.copy(first, class_folder / "yes" / f"copy_b{first.suffix}")
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 12 and ev["n_files"] == 14
    assert ev["exact_duplicates"]["count"] == 2
    assert ev["exact_duplicates"]["per_class"] == {"no": 0, "yes": 2}
    with open(tmp_path / "ev" / "evaluation" / "exact_duplicates.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = {first.name, f"copy_a{first.suffix}", f"copy_b{first.suffix}"}
    assert len(rows) == 2 and {r["class"] for r in rows} == {"yes"}
    assert {Path(r["source"]).name for r in rows} | {Path(rows[0]["same_bytes_as"]).name} == names
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 0, r.output
    assert "2 exact-duplicate file(s) (same bytes as another file) scored once" in r.output


@pytest.mark.backend
def test_a_class_with_no_readable_file_makes_auc_undefined(loose_model, class_folder, tmp_path):
    for p in (class_folder / "yes").iterdir():
        _truncate(p)
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 6 and ev["n_unreadable"] == 6
    assert np.isnan(ev["roc_auc"]) and np.isnan(ev["sensitivity"])
    assert "no readable slice of class 'yes'" in ev["undefined"]["roc_auc"]
    saved = _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")  # NaN -> null
    assert saved["roc_auc"] is None and saved["sensitivity"] is None
    assert set(saved["undefined"]) >= {"roc_auc", "sensitivity"}
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 1
    assert "ROC AUC undefined" in r.output and "nan" not in r.output.lower()
    assert "roc_auc: no readable slice of class 'yes'" in r.output
    # nothing readable at all: a clear error, not a table of zeros
    for p in (class_folder / "no").iterdir():
        _truncate(p)
    with pytest.raises(MriscanError, match=r"None of the 12 files .* could be read"):
        evaluate(loose_model, class_folder, out=tmp_path / "ev3")


def test_a_split_with_retired_samples_is_refused(small_store):
    from mriscan.evaluate import _recorded_indices

    with ImageStore.open(small_store) as store:
        recs = store.index.records
        part = {"indices": [0, 1], "pixel_sha256": [recs[0].pixel_sha256, recs[1].pixel_sha256]}
    with ImageStore.open(small_store, mode="a") as store:  # file 0 was overwritten since
        store.update_record(0, flags=("replaced",))
        store.commit()
    with ImageStore.open(small_store) as store:
        with pytest.raises(MriscanError, match="retired since training \\(replaced"):
            _recorded_indices(store, part, "test")
        assert _recorded_indices(store, {**part, "indices": [1], "pixel_sha256": part[
            "pixel_sha256"][1:]}, "test").tolist() == [1]  # fmt: skip


def test_a_class_emptied_by_duplicate_removal_is_said_so():
    """All 'yes' slices readable but removed as near-duplicates of training slices: the
    undefined metrics say that, not "no readable slice"."""
    from mriscan import metrics as mx
    from mriscan.evaluate import undefined_metrics

    y = np.zeros(4, np.int64)
    result = mx.binary_metrics(y, np.full(4, 0.2), threshold=0.5)
    why = undefined_metrics(result, y, {"no": 1, "yes": 3})
    assert "removed as near-duplicates of training slices" in why["sensitivity"]
    assert "3 of class 'yes'" in why["sensitivity"] and "readable slice" not in why["roc_auc"]
    assert why["recall of 'yes'"] == why["sensitivity"]
    plain = undefined_metrics(mx.binary_metrics(y, np.full(4, 0.2), threshold=0.5), y)
    assert plain["sensitivity"] == "no readable slice of class 'yes'"
