"""Cross-validation: fold summary, protocol (numbers), artifacts, groups kept in one fold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mriscan.config import CVConfig
from mriscan.metrics import binary_metrics
from mriscan.store import ImageStore
from mriscan.training.crossval import cross_validate, summarize_folds
from tests.conftest import fast_config

TINY = fast_config()


def test_summarize_folds_shapes():
    rng = np.random.default_rng(0)
    folds, preds = [], []
    for acc in (0.6, 0.8):
        y = np.array([0, 1] * 50)
        correct = rng.random(100) < acc
        pred = np.where(correct, y, 1 - y)
        prob = np.clip(pred * 0.6 + rng.random(100) * 0.4, 0, 1)
        m = binary_metrics(y, prob, threshold=0.6)
        folds.append({**m, "threshold": 0.6})
        preds.append((y, prob, np.arange(100) // 2))  # groups of two slices
    s = summarize_folds(folds, preds, n_boot=300)
    accs = [f["accuracy"] for f in folds]
    assert s["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert s["accuracy"]["per_fold"] == accs and s["accuracy"]["n_defined"] == 2
    lo, hi = s["accuracy"]["ci95"]
    assert lo < np.mean(accs) < hi and hi - lo < 0.25
    assert s["roc_auc"]["ci95"][0] <= s["roc_auc"]["ci95"][1]
    assert set(s["per_class"]) == {"no", "yes"}


def test_undefined_fold_metrics_are_left_out_of_the_mean():
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.8, 0.9])
    good = {**binary_metrics(y, prob, threshold=0.5), "threshold": 0.5}
    only_healthy = {**binary_metrics(y[:2], prob[:2], threshold=0.5), "threshold": 0.5}
    preds = [(y, prob, np.arange(4)), (y[:2], prob[:2], np.arange(2))]
    s = summarize_folds([good, only_healthy], preds, n_boot=20)
    assert s["sensitivity"]["per_fold"][1] != s["sensitivity"]["per_fold"][1]  # NaN
    assert s["sensitivity"]["mean"] == 1.0 and s["sensitivity"]["n_defined"] == 1


@pytest.mark.slow
@pytest.mark.backend
def test_cross_validate_writes_protocol_and_keeps_groups(small_store, tmp_path):
    s = cross_validate(small_store, CVConfig(folds=3, train=TINY, n_boot=100), out=tmp_path)
    cv = tmp_path / "cv"
    for f in ("metrics.json", "oof_predictions.csv", "roc.png", "confusion_matrix.png"):
        assert (cv / f).is_file(), f
    m = json.loads((cv / "metrics.json").read_text())
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert set(m[key]) == {"mean", "std", "ci95", "per_fold", "n_defined"}
        assert len(m[key]["per_fold"]) == 3
    p = m["protocol"]
    assert p["kind"] == "cv" and p["folds"] == 3 and p["duplicate_threshold"] == 0.95
    # select=last: no checkpoint is chosen on validation; TINY does not pre-train
    assert p["select"] == "last" and "checkpoint" not in p["description"]
    assert p["pretrain_phantoms"] == 0 and p["val_fraction"] == 0.15
    with open(cv / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    with ImageStore.open(small_store) as st:
        assert sorted(int(r["index"]) for r in rows) == list(range(len(st)))
    fold_of_group: dict[str, set] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())
    assert s["pooled"]["accuracy"] == pytest.approx(
        np.mean([r["label"] == r["predicted"] for r in rows])
    )
    assert {r["label"] for r in rows} == {"no", "yes"}


@pytest.mark.backend
def test_a_rerun_with_fewer_folds_leaves_only_its_own_results(tmp_path):
    """What an earlier CV into the same --out left and this one does not write (more folds or
    repeats, a two-class ROC plot) is removed, so summaries and plots cannot pick it up."""
    from mriscan.artifacts import RunLayout
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "three.zarr", ["no", "glioma", "pit"], n_per_class=8)
    cv = RunLayout(tmp_path / "out").cv
    for name in ("r0_f2", "r0_f4", "r1_f0", "r0_f0"):  # an earlier 5-fold × 2 run
        (cv.root / name / "models").mkdir(parents=True)
        (cv.root / name / "models" / "best_model.keras").write_bytes(b"old")
    cv.roc_plot.write_bytes(b"old two-class ROC")
    (cv.root / "notes").mkdir()  # not a fold folder: the user's, left alone
    cfg = CVConfig(folds=2, n_boot=20, train=fast_config(**{"fit.epochs": 1}))
    s = cross_validate(store, cfg, out=tmp_path / "out")
    assert s["fold_dirs"] == ["r0_f0", "r0_f1"]
    assert [p.name for p in cv.fold_dirs()] == ["r0_f0", "r0_f1"]
    assert (cv.root / "r0_f0" / "models" / "best_model.keras").read_bytes() != b"old"
    assert not cv.roc_plot.exists() and cv.confusion_plot.is_file()
    assert (cv.root / "notes").is_dir()
    assert json.loads(cv.metrics.read_text())["fold_dirs"] == ["r0_f0", "r0_f1"]
