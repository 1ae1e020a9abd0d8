"""evaluate on a trained model's splits, and cross-validation's protocol and artifacts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mriscan.evaluate import CVConfig, cross_validate, evaluate, summarize_folds
from mriscan.store import ImageStore
from mriscan.train import TrainConfig, train

TINY = TrainConfig(
    epochs=2,
    image_size=32,
    batch_size=16,
    warmup_epochs=0,
    filters=(8, 8, 16, 16),
    pretrain=0,
    verbose="silent",
)


def test_summarize_folds_shapes():
    folds = [
        {
            "accuracy": a,
            "roc_auc": 0.8,
            "sensitivity": 0.7,
            "specificity": 0.9,
            "per_class": {
                "no": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
                "yes": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
            },
        }
        for a in (0.6, 0.8)
    ]
    rng = np.random.default_rng(0)
    preds = []
    for acc in (0.6, 0.8):
        y = np.array([0, 1] * 50)
        correct = rng.random(100) < acc
        pred = np.where(correct, y, 1 - y)
        prob = np.clip(pred * 0.6 + rng.random(100) * 0.4, 0, 1)
        preds.append((y, prob, pred))
    s = summarize_folds(folds, preds, n_boot=300)
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert s["accuracy"]["per_fold"] == [0.6, 0.8]
    lo, hi = s["accuracy"]["ci95"]
    observed = np.mean([(p == y).mean() for y, _, p in preds])
    assert lo < observed < hi and hi - lo < 0.2
    assert s["roc_auc"]["ci95"][0] <= s["roc_auc"]["ci95"][1]


@pytest.mark.slow
@pytest.mark.backend
def test_cross_validate_writes_protocol_and_keeps_groups(small_store, tmp_path):
    s = cross_validate(small_store, CVConfig(folds=3, train=TINY, n_boot=100), out=tmp_path)
    cv = tmp_path / "cv"
    for f in ("metrics.json", "oof_predictions.csv", "roc.png", "confusion_matrix.png"):
        assert (cv / f).is_file(), f
    m = json.loads((cv / "metrics.json").read_text())
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert set(m[key]) == {"mean", "std", "ci95", "per_fold"} and len(m[key]["per_fold"]) == 3
    assert m["protocol"]["folds"] == 3 and "duplicate" in m["protocol"]["split"]
    # select=last: no checkpoint is chosen on validation; TINY does not pre-train
    assert "checkpoint" not in m["protocol"]["inner_validation"]
    assert m["protocol"]["pretrain"] is None
    with open(cv / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    with ImageStore.open(small_store) as st:
        assert sorted(int(r["index"]) for r in rows) == list(range(len(st)))
    fold_of_group: dict[str, set] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())
    assert s["pooled"]["accuracy"] == pytest.approx(
        np.mean([int(r["label"]) == int(r["predicted"]) for r in rows])
    )


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
    assert folder["n"] == 12 and folder["split"] == "all"


def test_thresholds_never_see_test_data(monkeypatch, small_store, tmp_path):
    """The threshold is computed from validation labels only: corrupting test labels for
    threshold selection would be visible here as a call with test indices."""
    import mriscan.train as tr

    seen: list[int] = []
    real = tr.mx.youden_threshold

    def spy(y, p):
        seen.append(len(y))
        return real(y, p)

    monkeypatch.setattr(tr.mx, "youden_threshold", spy)
    result = train(small_store, TINY, out=tmp_path / "a")
    assert seen == [len(result.split["val"])]
    assert set(result.split["val"]).isdisjoint(result.split["test"])
