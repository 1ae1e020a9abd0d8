"""Score decision-threshold rules on the saved fold models of finished cross-validations.

Usage: python experiments/threshold_rules.py STORE CV_DIR [CV_DIR ...]
(``CV_DIR`` is a ``cv/`` folder as ``mriscan cv`` or experiments/accuracy_experiments.py write
it: ``metrics.json`` and one ``r0_f<k>/`` run folder per fold.)
Re-creates each run's folds and inner validation splits (``mriscan.splits.cv_splits`` with the
seed, folds and validation share that ``metrics.json["protocol"]`` records as numbers, as
``mriscan.training.crossval.cross_validate`` made them), predicts validation and test slices
with every fold model (with flip TTA when its model card says so), and prints the fold-mean
test accuracy each rule gives when it sees the validation slices only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import CVLayout, read_json
from mriscan.errors import MriscanError
from mriscan.splits import cv_splits
from mriscan.store import ImageStore


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
    "youden": mx.youden_threshold,  # the shipped rule until row 66
    "fixed_0.5": lambda y, p: 0.5,
    "median_midpoint": median_midpoint,
    "youden_central": youden_central,
    "youden_shrunk": youden_shrunk,
}


def run_protocol(cv_dir: Path) -> tuple[int, int, float]:
    """Seed, folds and inner validation share of a finished one-repeat CV.

    Read as numbers from ``cv_dir/metrics.json["protocol"]`` (``mriscan.artifacts.Protocol``).

    Raises
    ------
    MriscanError
        If the file is missing or unreadable, a number is absent, or the run has repeats.
    """
    protocol = read_json(CVLayout(cv_dir).metrics, "a cross-validation's metrics").get(
        "protocol", {}
    )
    missing = [k for k in ("seed", "folds", "repeats", "val_fraction") if k not in protocol]
    if protocol.get("kind") != "cv" or missing:
        raise MriscanError(
            f"{cv_dir}/metrics.json has no cv protocol with seed, folds, repeats and "
            f"val_fraction (missing {missing}); re-run the CV with this version of mriscan."
        )
    if protocol["repeats"] != 1:
        raise MriscanError(f"{cv_dir}: only one-repeat runs are supported.")
    return int(protocol["seed"]), int(protocol["folds"]), float(protocol["val_fraction"])


def fold_predictions(store: ImageStore, cv_dir: Path):
    """(val labels, val probs, test labels, test probs) per fold of one run.

    Cached in ``cv_dir/threshold_rules.npz`` (predicting takes a minute per run).
    """
    seed, folds, share = run_protocol(cv_dir)
    cache = cv_dir / "threshold_rules.npz"
    if cache.exists():
        saved = np.load(cache)
        return [tuple(saved[f"f{k}_{i}"] for i in range(4)) for k in range(folds)]
    from mriscan.inference import predict_store
    from mriscan.model import load_model

    labels = store.labels.astype(np.int64)
    samples = read_json(CVLayout(cv_dir).metrics, "a cross-validation's metrics")["protocol"].get(
        "samples"
    )
    if samples is not None and samples != len(labels):
        raise MriscanError(
            f"{cv_dir} was run on {samples} slices, the store has {len(labels)}: pass the store "
            "the CV ran on."
        )
    out = []
    splits = cv_splits(labels, store.groups, folds=folds, val_fraction=share, seed=seed)
    for _, k, _, val_idx, test_idx in splits:
        model, card = load_model(CVLayout(cv_dir).fold(0, k).model)
        out.append(
            (
                labels[val_idx],
                predict_store(model, store, val_idx, tta=card.tta)[:, 1],  # P(positive)
                labels[test_idx],
                predict_store(model, store, test_idx, tta=card.tta)[:, 1],
            )
        )
    np.savez(cache, **{f"f{k}_{i}": a for k, fold in enumerate(out) for i, a in enumerate(fold)})
    return out


def main() -> None:
    """Print one table row per CV_DIR and the per-fold accuracies of each rule."""
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
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
