"""Score decision-threshold rules on the saved fold models of finished cross-validations.

Usage: python bench/threshold_rules.py STORE CV_DIR [CV_DIR ...]
Re-creates each run's folds and inner validation splits (``mriscan.splits.cv_splits`` with the
seed, folds and validation share its ``metrics.json`` records, as
``mriscan.evaluate.cross_validate`` made them), predicts validation and test slices
with every fold model (flip TTA), and prints the fold-mean test accuracy each rule gives when
it sees the validation slices only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np

from mriscan import metrics as mx
from mriscan.splits import cv_splits
from mriscan.store import ImageStore
from mriscan.train import predict_indices


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def median_midpoint(y: np.ndarray, p: np.ndarray) -> float:
    """Halfway, in log-odds, between the validation medians of the two classes."""
    mid = 0.5 * (np.median(_logit(p[y == 0])) + np.median(_logit(p[y == 1])))
    return float(1 / (1 + np.exp(-mid)))


def youden_central(y: np.ndarray, p: np.ndarray) -> float:
    """Of all cuts with the best Youden's J, the middle one in log-odds (not the highest)."""
    fpr, tpr, thr = mx.roc_curve(y, p)
    j = tpr - fpr
    # a cut between score k and k+1 has the J of point k; midpoints in log-odds
    lo = _logit(np.r_[thr[2:], 0.0])
    hi = _logit(thr[1:])
    best = np.flatnonzero(j[1:] >= j[1:].max() - 1e-12)
    mids = 0.5 * (lo[best] + hi[best])
    return float(1 / (1 + np.exp(-np.median(mids))))


def youden_shrunk(y: np.ndarray, p: np.ndarray) -> float:
    """Youden's threshold pulled halfway to 0.5 in log-odds (a prior against extreme cuts)."""
    t = mx.youden_threshold(y, p)
    return float(1 / (1 + np.exp(-0.5 * _logit(np.array(t)))))


RULES = {
    "youden": mx.youden_threshold,
    "fixed_0.5": lambda y, p: 0.5,
    "median_midpoint": median_midpoint,
    "youden_central": youden_central,
    "youden_shrunk": youden_shrunk,
}


def run_protocol(cv_dir: Path) -> tuple[int, int, float]:
    """Seed, folds and inner validation share of a finished one-repeat CV (its metrics.json)."""
    protocol = json.loads((cv_dir / "metrics.json").read_text())["protocol"]
    if protocol["repeats"] != 1:
        raise SystemExit(f"{cv_dir}: only one-repeat runs are supported")
    # cross_validate writes the share as the leading "NN%" of this text
    share = float(protocol["inner_validation"].split("%", 1)[0]) / 100
    return int(protocol["train_config"]["seed"]), int(protocol["folds"]), share


def fold_predictions(store: ImageStore, cv_dir: Path):
    """(val labels, val probs, test labels, test probs) per fold of one run.

    Cached in ``cv_dir/threshold_rules.npz`` (predicting takes a minute per run).
    """
    seed, folds, share = run_protocol(cv_dir)
    cache = cv_dir / "threshold_rules.npz"
    if cache.exists():
        saved = np.load(cache)
        return [tuple(saved[f"f{k}_{i}"] for i in range(4)) for k in range(folds)]
    labels = store.labels.astype(np.int64)
    out = []
    splits = cv_splits(labels, store.groups, folds=folds, val_fraction=share, seed=seed)
    for _, k, _, val_idx, test_idx in splits:
        model = keras.saving.load_model(cv_dir / f"r0_f{k}" / "models" / "best_model.keras")
        out.append(
            (
                labels[val_idx],
                predict_indices(model, store, val_idx, tta=True),
                labels[test_idx],
                predict_indices(model, store, test_idx, tta=True),
            )
        )
    np.savez(cache, **{f"f{k}_{i}": a for k, fold in enumerate(out) for i, a in enumerate(fold)})
    return out


def main() -> None:
    store = ImageStore.open(sys.argv[1])
    print("run".ljust(40), *(r.rjust(16) for r in RULES))
    for cv_dir in sys.argv[2:]:
        acc = {r: [] for r in RULES}
        for yv, pv, yt, pt in fold_predictions(store, Path(cv_dir)):
            for name, rule in RULES.items():
                acc[name].append(float(np.mean((pt >= rule(yv, pv)) == yt)))
        cells = [f"{np.mean(a):.3f}" for a in acc.values()]
        print(cv_dir.ljust(40), *(c.rjust(16) for c in cells))
        for name, a in acc.items():
            print("   ", name.ljust(16), " ".join(f"{v:.3f}" for v in a))


if __name__ == "__main__":
    main()
