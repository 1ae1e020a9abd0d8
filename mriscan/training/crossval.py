"""``cross_validate``: stratified, duplicate-group-aware k-fold CV of the shipped recipe.

Each fold runs ``fit_and_calibrate`` (the same sequence as ``train``) with a group-aware
validation part carved out of its training part; the test fold is predicted once. The summary
gives each headline metric's mean, spread, per-fold values and a bootstrap CI of the fold mean.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import time
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import Protocol, RunLayout, publish_model, write_json
from mriscan.config import CVConfig
from mriscan.duplicates import DEFAULT_THRESHOLD
from mriscan.sources import open_or_ingest
from mriscan.splits import cv_splits
from mriscan.store import ImageStore
from mriscan.training.fit import card_for, fit_and_calibrate
from mriscan.training.pretrain import pretrain_on_phantoms
from mriscan.training.workflow import setup_for

__all__ = ["HEADLINE", "cross_validate", "summarize_folds"]

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "roc_auc", "sensitivity", "specificity")


def _fold_metric(key: str, y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> float:
    """One headline metric of one fold's test predictions."""
    if key == "roc_auc":
        return mx.roc_auc(y, prob)
    if key == "accuracy":
        return float((pred == y).mean())
    cls = 1 if key == "sensitivity" else 0
    sel = y == cls
    return float((pred[sel] == cls).mean()) if sel.any() else float("nan")


def summarize_folds(
    per_fold: list[dict[str, Any]],
    fold_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean, std, per-fold values and a 95% CI of the mean of each headline metric.

    The CI is a percentile bootstrap of the fold mean: each draw resamples every fold's test
    predictions (``(y, prob, pred)`` per fold) with replacement, recomputes the metric per
    fold with that fold's model and threshold, and averages over folds.
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in HEADLINE}
    for _ in range(n_boot):
        vals: dict[str, list[float]] = {k: [] for k in HEADLINE}
        for y, prob, pred in fold_predictions:
            idx = rng.integers(0, y.size, y.size)
            for k in HEADLINE:
                vals[k].append(_fold_metric(k, y[idx], prob[idx], pred[idx]))
        for k in HEADLINE:
            draws[k].append(float(np.nanmean(vals[k])))
    out: dict[str, Any] = {}
    for key in HEADLINE:
        vals = np.array([f[key] for f in per_fold], np.float64)
        d = np.array(draws[key])
        d = d[np.isfinite(d)]
        ci = [float(v) for v in np.percentile(d, [2.5, 97.5])] if d.size else [float("nan")] * 2
        out[key] = {
            "mean": float(np.nanmean(vals)),
            "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "ci95": ci,
            "per_fold": vals.tolist(),
        }
    names = list(per_fold[0]["per_class"])
    out["per_class"] = {
        name: {
            m: {
                "mean": float(np.mean([f["per_class"][name][m] for f in per_fold])),
                "std": float(np.std([f["per_class"][name][m] for f in per_fold], ddof=1))
                if len(per_fold) > 1
                else 0.0,
            }
            for m in ("precision", "recall", "f1")
        }
        for name in names
    }
    return out


def cross_validate(
    data: str | os.PathLike[str] | ImageStore,
    config: CVConfig | None = None,
    *,
    out: str | os.PathLike[str] = "artifacts",
    store_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Stratified, duplicate-group-aware k-fold CV; writes ``RunLayout(out).cv``.

    Files: ``metrics.json`` (``accuracy``, ``roc_auc``, ``sensitivity``, ``specificity`` each
    with ``mean``, ``std``, ``ci95``, ``per_fold``; ``per_class``; ``pooled``; ``protocol``),
    ``oof_predictions.csv``, ``roc.png``, ``confusion_matrix.png``, one run folder per fold.
    """
    from mriscan import plots

    cfg = config if config is not None else CVConfig()
    tcfg = cfg.train
    t0 = time.perf_counter()
    store = open_or_ingest(data, store_path=store_path, image_size=tcfg.image_size)
    cv = RunLayout(out).cv
    cv.root.mkdir(parents=True, exist_ok=True)
    labels = store.labels.astype(np.int64)
    groups = store.groups
    hw = setup_for(tcfg)
    # phantoms hold no real slice: one pre-training serves every fold
    init = pretrain_on_phantoms(tcfg, hw, store.config) if tcfg.pretrain.phantoms else None
    per_fold: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    fold_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    splits = cv_splits(
        labels,
        groups,
        folds=cfg.folds,
        repeats=cfg.repeats,
        val_fraction=tcfg.split.val_fraction,
        seed=tcfg.seed,
    )
    for rep, k, train_idx, val_idx, test_idx in splits:
        tag = f"repeat {rep + 1}/{cfg.repeats}, fold {k + 1}/{cfg.folds}"
        log.info("%s: train %d, val %d, test %d", tag, len(train_idx), len(val_idx), len(test_idx))
        fold_cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 100 * rep + k)
        split = {"train": train_idx, "val": val_idx, "test": test_idx}
        fold_layout = cv.fold(rep, k)
        run = fit_and_calibrate(store, split, fold_cfg, fold_layout, hw, init_weights=init)
        publish_model(run.model.save, card_for(store, fold_cfg, run.threshold), fold_layout.model)
        for leftover in (fold_layout.backup, fold_layout.checkpoint.parent):
            shutil.rmtree(leftover, ignore_errors=True)
        thr, prob, m = run.threshold, run.test_prob, run.test
        assert m is not None  # a k-fold test part is never empty
        m.update(repeat=rep, fold=k)
        per_fold.append(m)
        log.info(
            "%s: accuracy %.3f, AUC %.3f (threshold %.3f from validation)",
            tag,
            m["accuracy"],
            m["roc_auc"],
            thr,
        )
        pred = (prob >= thr).astype(np.int64)
        fold_predictions.append((labels[test_idx], prob, pred))
        for i, p, q in zip(test_idx, prob, pred, strict=True):
            rec = store.index.records[i]
            rows.append(
                {
                    "index": int(i),
                    "source": rec.source,
                    "group": rec.group,
                    "repeat": rep,
                    "fold": k,
                    "label": int(labels[i]),
                    "probability": float(p),
                    "threshold": thr,
                    "predicted": int(q),
                }
            )
    y, prob, pred = (np.concatenate(parts) for parts in zip(*fold_predictions, strict=True))
    summary = summarize_folds(per_fold, fold_predictions, n_boot=cfg.n_boot, seed=tcfg.seed)
    cm = mx.confusion_matrix(y, pred)
    summary["pooled"] = {
        "confusion_matrix": cm.tolist(),
        "roc_auc": mx.roc_auc(y, prob),
        "accuracy": float((pred == y).mean()),
    }
    protocol = Protocol(
        kind="cv",
        seed=tcfg.seed,
        val_fraction=tcfg.split.val_fraction,
        threshold_rule=mx.THRESHOLD_RULE,
        duplicate_threshold=DEFAULT_THRESHOLD,
        folds=cfg.folds,
        repeats=cfg.repeats,
        samples=len(labels),
        duplicate_groups=len(np.unique(groups)),
        select=tcfg.fit.select,
        pretrain_phantoms=tcfg.pretrain.phantoms,
        pretrain_epochs=tcfg.pretrain.epochs if tcfg.pretrain.phantoms else 0,
        n_boot=cfg.n_boot,
    )
    summary["protocol"] = protocol.to_dict()
    summary["cv_config"] = cfg.to_dict()
    summary["hardware"] = hw.describe()
    summary["seconds"] = time.perf_counter() - t0
    summary["per_fold"] = per_fold
    write_json(cv.metrics, summary)
    with open(cv.predictions, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fpr, tpr, _ = mx.roc_curve(y, prob)
    plots.save_roc(fpr, tpr, summary["pooled"]["roc_auc"], cv.roc_plot)
    plots.save_confusion_matrix(
        cm,
        store.class_names,
        cv.confusion_plot,
        title=f"{cfg.folds}-fold CV, pooled (n={len(y)})",
    )
    return summary
