"""Which decision-threshold rule carries from a model's own validation split to another
collection, and keeps its own cross-validation accuracy?

Usage: python experiments/threshold_carry.py --xc RUN [RUN ...] --cv STORE CV_DIR [CV_DIR ...]

``--xc RUN``: a run folder of experiments/cross_collection.py (``train/`` with ``split.json`` and
``models/best_model.keras``; ``evaluation/predictions.csv`` of the other collection, near-
duplicates already removed). The validation slices are re-predicted from the store ``split.json``
names; every rule sees them only; the other collection's balanced accuracy and recall per data
class are then computed from its saved probabilities at each rule's threshold.
``--cv STORE CV_DIR``: finished binary CVs on STORE, re-predicted as
experiments/threshold_rules.py does (cached there); fold-mean test accuracy per rule.
No retraining: it ranks rules on the models the accuracy log already holds.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from threshold_rules import RULES as OLD_RULES
from threshold_rules import _logit, fold_predictions

from mriscan.artifacts import read_json
from mriscan.store import ImageStore


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def platt_balanced(y: np.ndarray, p: np.ndarray, c: float = 1.0) -> float:
    """Where a class-balanced, L2-regularised logistic fit of y on logit(p) crosses 0.5.

    Platt (1999) scaling with equal class weights, so the cut is the balanced-prior Bayes
    threshold; the ridge (``c``) keeps the slope finite on separable validation splits.
    """
    from scipy.optimize import minimize

    x = _logit(p)
    w = np.where(y == 1, 0.5 / max((y == 1).sum(), 1), 0.5 / max((y == 0).sum(), 1))

    def loss(ab: np.ndarray) -> float:
        z = ab[0] * x + ab[1]
        nll = np.sum(w * (np.logaddexp(0, z) - y * z))
        return float(nll + 0.5 / (c * len(y)) * ab[0] ** 2)

    a, b = minimize(loss, np.array([1.0, 0.0]), method="BFGS").x
    if a <= 1e-6:
        return 0.5
    return _sigmoid(-b / a)


def youden_bagged(y: np.ndarray, p: np.ndarray, n: int = 200) -> float:
    """Mean, in log-odds, of Youden's threshold over ``n`` stratified bootstrap resamples."""
    from mriscan import metrics as mx

    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    ts = []
    for _ in range(n):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        ts.append(_logit(np.array(mx.youden_threshold(y[idx], p[idx]))))
    return _sigmoid(float(np.mean(ts)))


def sens_at(level: float):
    """The highest cut that keeps validation sensitivity ≥ ``level`` (a screening point)."""

    def rule(y: np.ndarray, p: np.ndarray) -> float:
        s = np.sort(p[y == 1])
        k = int(np.floor((1 - level) * len(s)))
        return float(s[k]) if len(s) else 0.5

    return rule


def on_train_too(rule):
    """``rule`` on the training and validation predictions together (marked by a 4-tuple)."""

    def wrapped(y, p):
        return rule(y, p)

    wrapped.train_too = True
    return wrapped


RULES = dict(OLD_RULES)
RULES.update(
    {
        "platt_bal": platt_balanced,
        "youden_bag": youden_bagged,
        "sens_0.95": sens_at(0.95),
        "youden_tv": on_train_too(OLD_RULES["youden"]),
        "platt_tv": on_train_too(platt_balanced),
        "median_tv": on_train_too(OLD_RULES["median_midpoint"]),
    }
)


def xc_run(run: Path):
    """(val labels, val P(yes)) and the other collection's (labels, P(yes), data classes)."""
    from mriscan.inference import predict_store
    from mriscan.model import load_model

    split = read_json(run / "train" / "split.json", "a split")
    cache = run / "threshold_carry_val.npz"
    if cache.exists():
        z = np.load(cache)
        yv, pv, yr, pr = z["y"], z["p"], z["yr"], z["pr"]
    else:
        store = ImageStore.open(split["store"])
        idx = np.asarray(split["val"]["indices"], np.int64)
        tr = np.asarray(split["train"]["indices"], np.int64)
        model, card = load_model(run / "train" / "models" / "best_model.keras")
        yv = store.labels.astype(np.int64)[idx]
        pv = predict_store(model, store, idx, tta=card.tta)[:, 1]
        yr = store.labels.astype(np.int64)[tr]
        pr = predict_store(model, store, tr, tta=card.tta)[:, 1]
        np.savez(cache, y=yv, p=pv, yr=yr, pr=pr)
    with open(run / "evaluation" / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["error"]]
    yt = np.array([r["label"] != "no" for r in rows], np.int64)
    pt = np.array([float(r["p_yes"]) for r in rows])
    cls = np.array([r["source"].split("/")[0] for r in rows])
    return (yv, pv, yr, pr), yt, pt, cls


def train_predictions(store: ImageStore, cv_dir: Path):
    """(train labels, train P(yes)) per fold of one CV, cached beside threshold_rules.npz."""
    from threshold_rules import run_protocol

    from mriscan.artifacts import CVLayout
    from mriscan.inference import predict_store
    from mriscan.model import load_model
    from mriscan.splits import cv_splits

    seed, folds, share = run_protocol(cv_dir)
    cache = cv_dir / "threshold_carry_train.npz"
    if cache.exists():
        z = np.load(cache)
        return [(z[f"y{k}"], z[f"p{k}"]) for k in range(folds)]
    labels = store.labels.astype(np.int64)
    out = []
    splits = cv_splits(labels, store.groups, folds=folds, val_fraction=share, seed=seed)
    for _, k, tr, _, _ in splits:
        model, card = load_model(CVLayout(cv_dir).fold(0, k).model)
        out.append((labels[tr], predict_store(model, store, tr, tta=card.tta)[:, 1]))
    np.savez(
        cache, **{f"{c}{k}": a for k, f in enumerate(out) for c, a in zip("yp", f, strict=True)}
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--xc", nargs="*", default=[])
    ap.add_argument("--cv", nargs="*", default=[])
    args = ap.parse_args()
    names = list(RULES)
    print("rule".ljust(16), *(n.rjust(11) for n in names))
    for run in map(Path, args.xc):
        (yv, pv, yr, pr), yt, pt, cls = xc_run(run)
        ba, pit, thr = [], [], []
        for rule in RULES.values():
            both = getattr(rule, "train_too", False)
            t = rule(np.r_[yv, yr], np.r_[pv, pr]) if both else rule(yv, pv)
            pred = pt >= t
            sens, spec = pred[yt == 1].mean(), 1 - pred[yt == 0].mean()
            ba.append(0.5 * (sens + spec))
            pit.append(min(pred[cls == c].mean() for c in ("glioma", "meningioma", "pituitary")))
            thr.append(t)
        print(run.name[:16].ljust(16), *(f"{v:11.3f}" for v in ba), " BA")
        print("".ljust(16), *(f"{v:11.3f}" for v in pit), " min type recall")
        print("".ljust(16), *(f"{v:11.3f}" for v in thr), " threshold")
    if args.cv:
        store = ImageStore.open(args.cv[0])
        for cv_dir in map(Path, args.cv[1:]):
            acc = {r: [] for r in RULES}
            folds = zip(
                fold_predictions(store, cv_dir), train_predictions(store, cv_dir), strict=True
            )
            for (yv, pv, yt, pt), (yr, pr) in folds:
                for name, rule in RULES.items():
                    both = getattr(rule, "train_too", False)
                    t = rule(np.r_[yv, yr], np.r_[pv, pr]) if both else rule(yv, pv)
                    acc[name].append(float(np.mean((pt >= t) == yt)))
            cells = (f"{np.mean(a):11.3f}" for a in acc.values())
            print(cv_dir.parent.name[:16].ljust(16), *cells, " CV acc")


if __name__ == "__main__":
    main()
