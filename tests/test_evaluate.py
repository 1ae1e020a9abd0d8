"""evaluate on a trained model's recorded splits and on a labelled folder."""

from __future__ import annotations

import pytest

from mriscan.config import TrainConfig, override
from mriscan.evaluate import evaluate
from mriscan.store import ImageStore
from mriscan.training.workflow import train

TINY = override(
    TrainConfig(),
    {
        "fit.epochs": 2,
        "image_size": 32,
        "optimizer.batch_size": 16,
        "optimizer.warmup_epochs": 0,
        "model.filters": (8, 8, 16, 16),
        "pretrain.phantoms": 0,
        "runtime.verbose": "silent",
    },
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
    from mriscan.errors import MriscanError
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
