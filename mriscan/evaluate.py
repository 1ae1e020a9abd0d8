"""Trustworthy numbers: evaluate a trained model, and duplicate-aware k-fold cross-validation."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.errors import ConfigError, MriscanError
from mriscan.splits import cv_splits
from mriscan.store import ImageStore
from mriscan.train import (
    TrainConfig,
    fit_model,
    open_or_ingest,
    predict_indices,
    pretrain_on_phantoms,
)

__all__ = ["CVConfig", "cross_validate", "evaluate", "summarize_folds"]

log = logging.getLogger(__name__)

_HEADLINE = ("accuracy", "roc_auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class CVConfig:
    """Cross-validation protocol: ``folds`` × ``repeats`` models trained with ``train``.

    Inside each training fold, ``val_fraction`` of it (group-aware) is held out to pick the
    checkpoint and the decision threshold; the test fold is only predicted, once.
    """

    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.15
    train: TrainConfig = field(default_factory=TrainConfig)
    n_boot: int = 1000

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2. Received: folds={self.folds}.")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1. Received: repeats={self.repeats}.")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5). Received: {self.val_fraction}.")


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
    draws: dict[str, list[float]] = {k: [] for k in _HEADLINE}
    for _ in range(n_boot):
        vals: dict[str, list[float]] = {k: [] for k in _HEADLINE}
        for y, prob, pred in fold_predictions:
            idx = rng.integers(0, y.size, y.size)
            for k in _HEADLINE:
                vals[k].append(_fold_metric(k, y[idx], prob[idx], pred[idx]))
        for k in _HEADLINE:
            draws[k].append(float(np.nanmean(vals[k])))
    out: dict[str, Any] = {}
    for key in _HEADLINE:
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
    """Stratified, duplicate-group-aware k-fold CV; writes ``<out>/cv/``.

    Files: ``metrics.json`` (``accuracy``, ``roc_auc``, ``sensitivity``, ``specificity`` each
    with ``mean``, ``std``, ``ci95``, ``per_fold``; ``per_class``; ``protocol``),
    ``oof_predictions.csv``, ``roc.png``, ``confusion_matrix.png``, one folder per fold.
    """
    from mriscan import plots
    from mriscan.hardware import setup_hardware

    cfg = config if config is not None else CVConfig()
    t0 = time.perf_counter()
    store = (
        data
        if isinstance(data, ImageStore)
        else open_or_ingest(data, store_path=store_path, image_size=cfg.train.image_size)
    )
    cv_dir = Path(out) / "cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    labels = store.labels.astype(np.int64)
    groups = store.groups
    hw = setup_hardware(
        precision=cfg.train.precision,
        per_replica_batch=cfg.train.batch_size,
        strategy=cfg.train.strategy,
    )
    # phantoms hold no real slice: one pre-training serves every fold
    init = pretrain_on_phantoms(cfg.train, hw, store.config) if cfg.train.pretrain else None
    per_fold: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    fold_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    splits = cv_splits(
        labels,
        groups,
        folds=cfg.folds,
        repeats=cfg.repeats,
        val_fraction=cfg.val_fraction,
        seed=cfg.train.seed,
    )
    for rep, k, train_idx, val_idx, test_idx in splits:
        tag = f"repeat {rep + 1}/{cfg.repeats}, fold {k + 1}/{cfg.folds}"
        log.info("%s: train %d, val %d, test %d", tag, len(train_idx), len(val_idx), len(test_idx))
        fold_dir = cv_dir / f"r{rep}_f{k}"
        fold_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + 100 * rep + k)
        model, _, _ = fit_model(
            store, train_idx, val_idx, fold_cfg, fold_dir, hw, init_weights=init
        )
        val_prob = predict_indices(model, store, val_idx, tta=fold_cfg.tta)
        thr = mx.youden_threshold(labels[val_idx], val_prob)
        prob = predict_indices(model, store, test_idx, tta=fold_cfg.tta)
        m = mx.binary_metrics(labels[test_idx], prob, threshold=thr, class_names=store.class_names)
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
    summary = summarize_folds(per_fold, fold_predictions, n_boot=cfg.n_boot, seed=cfg.train.seed)
    cm = mx.confusion_matrix(y, pred)
    summary["pooled"] = {
        "confusion_matrix": cm.tolist(),
        "roc_auc": mx.roc_auc(y, prob),
        "accuracy": float((pred == y).mean()),
    }
    summary["protocol"] = {
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "samples": len(labels),
        "duplicate_groups": len(np.unique(groups)),
        "split": "stratified k-fold; every near-duplicate group in one fold "
        "(16x16 thumbnail correlation > 0.95); exact duplicate files stored once",
        "inner_validation": f"{cfg.val_fraction:.0%} of each training fold (group-aware): "
        + ("checkpoint by val AUC and " if cfg.train.select == "best" else "")
        + "threshold by Youden's J; the test fold is predicted once",
        "pretrain": f"{cfg.train.pretrain} phantoms, {cfg.train.pretrain_epochs} epochs, "
        "one set of weights for all folds (no real slice)"
        if cfg.train.pretrain
        else None,
        "ci95": f"percentile bootstrap of the fold mean, resampling each fold's test "
        f"predictions ({cfg.n_boot} draws)",
        "train_config": cfg.train.to_dict(),
        "hardware": hw.describe(),
        "seconds": time.perf_counter() - t0,
    }
    summary["per_fold"] = per_fold
    (cv_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    with open(cv_dir / "oof_predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fpr, tpr, _ = mx.roc_curve(y, prob)
    plots.save_roc(fpr, tpr, summary["pooled"]["roc_auc"], cv_dir / "roc.png")
    plots.save_confusion_matrix(
        cm,
        store.class_names,
        cv_dir / "confusion_matrix.png",
        title=f"{cfg.folds}-fold CV, pooled (n={len(y)})",
    )
    return summary


def evaluate(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics and plots of a trained model on a split of its store or on any labelled data.

    Parameters
    ----------
    model_path : path
        ``best_model.keras``; its artifacts folder (two levels up) holds ``split.json``.
    data : path, optional
        A store or a class-folder directory. Default: the store recorded in ``split.json``.
    split : {"test", "val", "train", "all"}
        Which samples of a store to use (ignored for a class-folder directory: all of it).
    out : path, optional
        Where ``evaluation/`` is written (default: the model's artifacts folder).
    """
    from mriscan import plots
    from mriscan.model import load_model

    model_path = Path(model_path)
    artifacts = model_path.parent.parent
    model, info = load_model(model_path)
    split_file = artifacts / "split.json"
    recorded = json.loads(split_file.read_text()) if split_file.is_file() else None
    if data is None:
        if recorded is None:
            raise MriscanError(f"No DATA given and no {split_file} to find the training store.")
        data = recorded["store"]
    is_store = (Path(data) / "index.json").is_file() or str(data).startswith("memory://")
    if is_store:
        with ImageStore.open(data) as store:
            if store.config != info.preprocess:
                raise ConfigError(
                    f"Store {data} was preprocessed with {store.config}, the model "
                    f"with {info.preprocess}; ingest the data again with the "
                    "model's settings (or pass a class folder)."
                )
            if split == "all":
                idx = np.arange(len(store))
            else:
                if recorded is None or split not in recorded:
                    raise MriscanError(f"Split {split!r} needs {split_file}; use --split all.")
                if recorded["store"] != str(data):
                    log.warning(
                        "split.json was recorded for store %s, evaluating on %s",
                        recorded["store"],
                        data,
                    )
                idx = np.asarray(recorded[split]["indices"], np.int64)
            y = store.labels[idx].astype(np.int64)
            prob = predict_indices(model, store, idx, batch_size=batch_size, tta=info.tta)
            class_names = store.class_names
            sources = [store.index.records[i].source for i in idx]
    else:
        from mriscan.io import list_class_folders
        from mriscan.predict import predict_files

        classes = list_class_folders(data)
        names = list(info.class_names)
        if set(classes) != set(names):
            raise ConfigError(f"{data} has classes {sorted(classes)}, the model {names}.")
        files = [(p, names.index(c)) for c, ps in classes.items() for p in ps]
        rows = predict_files(model, info, [p for p, _ in files], batch_size=batch_size)
        ok = [i for i, r in enumerate(rows) if r["error"] == ""]
        y = np.array([files[i][1] for i in ok], np.int64)
        prob = np.array([rows[i]["probability"] for i in ok], np.float64)
        class_names = info.class_names
        sources = [str(files[i][0]) for i in ok]
        split = "all"
    result = mx.binary_metrics(y, prob, threshold=info.threshold, class_names=class_names)
    result.update(
        data=str(data),
        split=split,
        model=str(model_path),
        threshold_rule=info.get("threshold_rule", ""),
    )
    dest = Path(out) if out is not None else artifacts
    ev = dest / "evaluation"
    ev.mkdir(parents=True, exist_ok=True)
    (ev / "metrics.json").write_text(json.dumps(result, indent=2))
    plots.save_confusion_matrix(
        np.array(result["confusion_matrix"]),
        class_names,
        ev / "confusion_matrix.png",
        title=f"{split} (n={result['n']})",
    )
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = mx.roc_curve(y, prob)
        plots.save_roc(fpr, tpr, result["roc_auc"], ev / "roc.png")
    with open(ev / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "label", "probability"])
        w.writerows(zip(sources, y.tolist(), prob.tolist(), strict=True))
    return result
