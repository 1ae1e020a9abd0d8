"""``cross_validate``: stratified, duplicate-group-aware k-fold CV of the shipped recipe.

Each fold runs ``fit_and_calibrate`` (the same sequence as ``train``) with a group-aware
validation part carved out of its training part; the test fold is predicted once. The summary
gives each headline metric's mean, spread, per-fold values and a bootstrap CI of the fold mean,
for slices and, where the store has them, for DICOM series / NIfTI volumes / manifest groups
and patients (each fold's test slices pooled per unit as ``mriscan evaluate`` pools them:
``mriscan.evaluate.grouped_levels``).
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
from mriscan.artifacts import (
    CVLayout,
    Protocol,
    RunLayout,
    publish_model,
    stale_plots,
    write_json,
)
from mriscan.config import CVConfig
from mriscan.duplicates import DEFAULT_THRESHOLD
from mriscan.errors import ConfigError
from mriscan.evaluate import (
    LEVELS,
    TUMOR_CALL_RULE,
    Scoring,
    called_metrics,
    grouped_levels,
    tumor_calls,
    write_unit_rows,
)
from mriscan.readers import ReadOptions
from mriscan.sources import no_anatomy_mask
from mriscan.splits import (
    MIX_SKEW_POINTS,
    class_shares,
    cv_splits,
    fold_class_mix,
    oversized_groups,
)
from mriscan.store import ImageStore
from mriscan.tasks import Comparison, Task
from mriscan.training.fit import (
    card_for,
    fit_and_calibrate,
    resume_state,
    score,
    start_record,
)
from mriscan.training.pretrain import starting_weights
from mriscan.training.workflow import open_for_task, pretrain_protocol, setup_for

__all__ = [
    "HEADLINE",
    "HEADLINE_MULTI",
    "check_folds",
    "cross_validate",
    "headline",
    "summarize_folds",
    "summarize_levels",
]

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "roc_auc", "sensitivity", "specificity")
HEADLINE_MULTI = ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc")
_BINARY_EXTRA = ("balanced_accuracy", "macro_f1")


def headline(task: Task) -> tuple[str, ...]:
    """The metrics summarised per fold: the binary four (+ balanced accuracy, macro-F1) or the
    K-class four."""
    return HEADLINE + _BINARY_EXTRA if task.binary else HEADLINE_MULTI


def summarize_folds(
    per_fold: list[dict[str, Any]],
    fold_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    task: Task | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean, std, per-fold values and a 95% CI of the mean of each headline metric.

    ``fold_predictions``: per fold ``(y, prob, groups)`` with ``prob`` of shape (n, K) (or
    (n,) for two classes) and the fold's threshold in ``per_fold[i]["threshold"]``. A metric
    undefined on a fold (NaN: a class absent) is left out of the mean and ``n_defined`` counts
    the folds that define it; ``std`` (ddof 1) is NaN (null in JSON) below two such folds.
    ``per_class``: per class name and metric (precision, recall, F1; K classes also the
    one-vs-rest ROC AUC) the same ``mean``, ``std`` and ``n_defined``, by
    ``mriscan.metrics``' rule (recall and F1 undefined on a fold without the class, precision
    on a fold that never predicts it). The CI is a percentile bootstrap of the fold mean that
    resamples whole groups of each fold's test part (near-duplicates and patients are not
    independent), recomputing the metric with that fold's model and threshold.
    """
    task = task if task is not None else _binary_task()
    keys = headline(task)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        vals: dict[str, list[float]] = {k: [] for k in keys}
        for fold, (y, prob, groups) in zip(per_fold, fold_predictions, strict=True):
            idx = mx.group_resample(groups, rng)
            m = score(task, y[idx], _as_k(prob)[idx], fold.get("threshold"))
            for k in keys:
                vals[k].append(m[k])
        for k in keys:
            draws[k].append(mx.mean_of_defined(vals[k]))
    out: dict[str, Any] = {}
    for key in keys:
        vals = np.array([np.nan if f[key] is None else f[key] for f in per_fold], np.float64)
        d = np.array(draws[key])
        d = d[np.isfinite(d)]
        ci = [float(v) for v in np.percentile(d, [2.5, 97.5])] if d.size else [float("nan")] * 2
        out[key] = {**_mean_std(vals), "ci95": ci, "per_fold": vals.tolist()}
    names = list(per_fold[0]["per_class"])
    metrics = ("precision", "recall", "f1") + (() if task.binary else ("roc_auc",))
    out["per_class"] = {
        name: {m: _mean_std([f["per_class"][name][m] for f in per_fold]) for m in metrics}
        for name in names
    }
    return out


def summarize_levels(
    task: Task,
    folds: list[dict[str, Any]],
    levels: list[dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]]:
    """Cross-validation's per-series and per-patient results from each fold's
    ``mriscan.evaluate.grouped_levels`` (its test slices pooled per unit and scored).

    ``folds``: per fold its ``repeat``, ``fold`` and ``threshold`` (None for K classes);
    ``levels``: per fold, ``grouped_levels``'s output (its rows carry ``group``, the units'
    split groups). Returns per level ("series", "patient") ``(section, rows)``: ``section``
    holds, like ``summarize_folds``, each headline metric's ``mean``, ``std``, ``ci95`` (a
    bootstrap of the fold mean over whole split groups of units), ``per_fold`` and
    ``n_defined``, and ``per_class``; ``pooled`` (all folds' units together, each fold at its
    own threshold); ``per_fold``: each fold's section (``repeat``, ``fold``, ``threshold``,
    its metrics, ``undefined``, ``mixed_labels``, ``slices_without_unit``), or
    ``available`` False and ``why`` for a fold without such units; ``n`` (units scored),
    ``mixed_labels``, ``labelled_by_tumor_slices``, ``slices_without_unit`` (summed over
    folds), ``units``, ``rule``, ``label_rule``,
    ``available`` True. A metric undefined on a fold (NaN: no unit of a class, or no unit at
    all in that fold) is NaN in ``per_fold`` and left out of the mean, counted in
    ``n_defined``. ``rows``: the pooled rows of every fold with ``repeat`` and ``fold``. A
    level no fold has (JPEG/PNG only, no Patient ID): ``({"available": False, "why": ...},
    None)``.
    """
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]] = {}
    names = list(task.class_names)
    for level, what in LEVELS.items():
        sections = [lv[level][0] for lv in levels]
        if not any(s["available"] for s in sections):
            out[level] = ({"available": False, "why": sections[0]["why"]}, None)
            continue
        per_fold: list[dict[str, Any]] = []
        scored: list[int] = []  # positions in per_fold of the folds with units to score
        preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        rows: list[dict[str, Any]] = []
        for f, lv in zip(folds, levels, strict=True):
            section, fold_rows = lv[level]
            tag = {"repeat": f["repeat"], "fold": f["fold"]}
            if not section["available"]:
                per_fold.append({**tag, **section})
                continue
            entry = {**tag, "threshold": f["threshold"]}
            entry.update((k, v) for k, v in section.items() if k != "_decisions")
            per_fold.append(entry)
            if not section["n"]:  # every unit of the fold mixes labels
                continue
            fold_rows = [{**tag, **r} for r in fold_rows or []]
            rows += fold_rows
            y_u = np.array([names.index(r["true"]) for r in fold_rows], np.int64)
            p_u = np.array([[r[f"p_{c}"] for c in names] for r in fold_rows], np.float64)
            g_u = np.array([r["group"] for r in fold_rows], np.int64)
            scored.append(len(per_fold) - 1)
            preds.append((y_u, p_u, g_u))
        keys = headline(task)
        if scored:
            summary = summarize_folds(
                [per_fold[i] for i in scored], preds, task=task, n_boot=n_boot, seed=seed
            )
        else:
            summary = {
                k: {"mean": float("nan"), "std": float("nan"), "ci95": [float("nan")] * 2}
                for k in keys
            }
            summary["per_class"] = {}
        for k in keys:  # every fold in per_fold, NaN where it had no unit to score
            values = [float("nan")] * len(per_fold)
            for i, v in zip(scored, summary[k].get("per_fold", []), strict=False):
                values[i] = v
            summary[k]["per_fold"] = values
            summary[k]["n_defined"] = int(np.isfinite(values).sum())
        if rows:
            y = np.concatenate([p[0] for p in preds])
            prob = np.concatenate([p[1] for p in preds])
            pred = np.array([names.index(r["predicted"]) for r in rows], np.int64)
            summary["pooled"] = _pooled(task, y, prob, pred)
        ok = [e for e in per_fold if e["available"]]
        summary.update(
            available=True,
            units=what,
            rule=ok[0]["rule"],
            n=len(rows),
            label_rule=ok[0]["label_rule"],
            mixed_labels=sum(e["mixed_labels"] for e in ok),
            labelled_by_tumor_slices=sum(e["labelled_by_tumor_slices"] for e in ok),
            slices_without_unit=sum(e["slices_without_unit"] for e in ok),
            per_fold=per_fold,
        )
        out[level] = (summary, rows)
    return out


def _shares(share: dict[str, float]) -> str:
    """``{"glioma": 0.31, ...}`` as "glioma 31%, ..."."""
    return ", ".join(f"{n} {100 * v:.0f}%" for n, v in share.items())


def _comparison(task: Task) -> Comparison:
    """The task as ``mriscan.evaluate``'s class comparison: the model's classes are the task's,
    the data's labels mapped by the task (recall is also reported per data class)."""
    return Comparison("same", task.class_names, task.data_class_names, task.label_map, task.healthy)


def _mean_std(values) -> dict[str, Any]:
    """``mean``, sample ``std`` (ddof 1) and ``n_defined`` of the folds' values (None or NaN:
    undefined on that fold, left out). The mean is NaN when no fold defines the metric, the
    std when fewer than two do: one value says nothing of the spread, so it is not 0."""
    v = np.array([np.nan if x is None else x for x in values], np.float64)
    v = v[np.isfinite(v)]
    return {
        "mean": float(v.mean()) if v.size else float("nan"),
        "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
        "n_defined": int(v.size),
    }


def _as_k(prob: np.ndarray) -> np.ndarray:
    """(n,) probabilities of class 1 → (n, 2); (n, K) unchanged."""
    p = np.asarray(prob, np.float64)
    return np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p


def _binary_task() -> Task:
    return Task(("no", "yes"), ("no", "yes"), np.array([0, 1]), 0)


def _predicted(task: Task, prob: np.ndarray, threshold: float | None) -> np.ndarray:
    if task.binary:
        return (prob[:, 1] >= threshold).astype(np.int64)
    return prob.argmax(axis=1)


def _pooled(task: Task, y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Metrics of all out-of-fold predictions together (each fold at its own threshold).

    K classes with a healthy one: also ``tumor_vs_healthy`` (``mriscan.evaluate``'s
    ``called_metrics`` of ``tumor_calls``: tumor when the most probable class is not the
    healthy one, as ``evaluate`` and ``predict``'s ``is_tumor`` decide; ``threshold`` None,
    ``rule`` in words) and ``tumor_types_only``."""
    cm = mx.confusion_matrix(y, pred, n_classes=task.num_classes)
    out: dict[str, Any] = {
        "confusion_matrix": cm.tolist(),
        "accuracy": float((pred == y).mean()),
    }
    if task.binary:
        out["roc_auc"] = mx.roc_auc(y, prob[:, 1])
        return out
    m = mx.multiclass_metrics(y, prob, task.class_names)
    out.update(
        balanced_accuracy=m["balanced_accuracy"],
        macro_f1=m["macro_f1"],
        macro_roc_auc=m["macro_roc_auc"],
        confusion_matrix_row_percent=m["confusion_matrix_row_percent"],
    )
    if task.healthy is not None:
        # tumor vs no tumor, and the tumor types among themselves (no source confound there)
        h = task.healthy
        tumor_y = (y != h).astype(np.int64)
        # called as evaluate and predict's is_tumor call it: by the most probable class
        tvh = called_metrics(
            tumor_y, 1.0 - prob[:, h], tumor_calls(prob, h), (task.class_names[h], "tumor")
        )
        tvh.update(threshold=None, rule=f"{TUMOR_CALL_RULE}; ROC AUC from 1 - P(healthy)")
        out["tumor_vs_healthy"] = tvh
        sel = y != h
        if sel.any():
            types = [k for k in range(task.num_classes) if k != h]
            sub = prob[sel][:, types]
            pred_t = np.asarray(types)[sub.argmax(axis=1)]
            out["tumor_types_only"] = {
                "n": int(sel.sum()),
                "accuracy": float((pred_t == y[sel]).mean()),
                "rule": "most probable tumor class, on slices whose true class is a tumor",
            }
    return out


def recall_per_data_class(
    task: Task, y: np.ndarray, pred: np.ndarray, data_labels: np.ndarray
) -> dict[str, dict[str, Any]] | None:
    """Pooled recall of each data class a class map merges into a task class (e.g. glioma,
    meningioma and pituitary under ``yes``): the share of its slices given their task label,
    as ``evaluate``'s ``recall_per_data_class``. ``y``, ``pred``: (n,) int64 task labels,
    true and predicted; ``data_labels``: (n,) int64 data labels (``task.data_class_names``).
    Returns ``{data class: {"n", "recall"}}`` for every data class the task keeps (recall NaN
    when it has no slice), or None when no task class stands for more than one data class
    (each class's recall is then its own)."""
    kept = task.label_map >= 0
    counts = np.bincount(task.label_map[kept], minlength=task.num_classes)
    if not (counts > 1).any():
        return None
    out = {}
    for k, name in enumerate(task.data_class_names):
        if task.label_map[k] < 0:
            continue
        sel = data_labels == k
        n = int(sel.sum())
        out[name] = {"n": n, "recall": float((pred[sel] == y[sel]).mean()) if n else float("nan")}
    return out


def _rows(store, task, rep, k, test_idx, y, prob, pred, thr) -> list[dict[str, Any]]:
    """One ``oof_predictions.csv`` row per test slice of a fold."""
    rows = []
    for j, i in enumerate(test_idx):
        rec = store.index.records[i]
        row = {
            "index": int(i),
            "source": rec.source,
            "group": rec.group,
            "repeat": rep,
            "fold": k,
            "label": task.class_names[int(y[j])],
            "predicted": task.class_names[int(pred[j])],
        }
        if task.binary:
            row.update(probability=float(prob[j, 1]), threshold=thr)
        else:
            row.update({f"p_{n}": float(prob[j, c]) for c, n in enumerate(task.class_names)})
        rows.append(row)
    return rows


def check_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    splits: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]],
    task: Task,
    folds: int,
) -> None:
    """Check a cross-validation's folds before any is trained.

    ``labels``, ``groups``: model labels and split groups of the usable slices, shape (n,),
    int; ``splits``: ``mriscan.splits.cv_splits``' (repeat, fold, train, val, test) positions
    into them. Logs a warning for each class with fewer split groups than folds (some test
    folds hold none of it: its recall and F1 are undefined there, and its few slices get a
    large class weight in training).

    Raises
    ------
    ConfigError
        If a fold's test part is empty (too few split groups for the folds), or if a fold's
        training or validation part holds no slice of a class: that fold's model
        could not learn the class (or its threshold could not be chosen), and every number of
        it would be meaningless. Names the fold, the part, the class, the groups per class and
        the way out.
    """
    per_class = {
        name: int(np.unique(groups[labels == c]).size) for c, name in enumerate(task.class_names)
    }
    for name, n in per_class.items():
        if n < folds:
            log.warning(
                "folds: class %r has %d split group(s) for %d folds: %d test fold(s) hold none "
                "of it (its recall and F1 are undefined there) and its few slices weigh "
                "heavily in training (class weights); its numbers are anecdotal. Add data for "
                "it, or leave it out with --class-map.",
                name,
                n,
                folds,
                folds - n,
            )
    for rep, k, train, val, test in splits:
        if not len(test):
            # stratifying few groups per class can leave whole folds without a group: refused
            # here, not after the earlier folds have trained (tester29: an AssertionError)
            raise ConfigError(
                f"Cross-validation fold {k + 1}/{folds} (repeat {rep + 1}) would have an empty "
                f"test part: the {int(np.unique(groups).size)} split groups (per class: "
                f"{per_class}), each kept whole and spread class by class, do not fill "
                f"{folds} folds. Use fewer folds (--folds), or add data."
            )
        for part, idx in (("training", train), ("validation", val)):
            present = np.bincount(labels[idx], minlength=task.num_classes)
            missing = [task.class_names[c] for c in np.flatnonzero(present == 0)]
            if missing:
                raise ConfigError(
                    f"Cross-validation fold {k + 1}/{folds} (repeat {rep + 1}) would have no "
                    f"slice of {missing} in its {part} part (split groups per class: "
                    f"{per_class}). A group-aware split keeps every near-duplicate group (and "
                    "patient) in one part, and each fold needs every class in its training "
                    "and validation parts besides the test fold that holds it, so a class "
                    "needs several groups (at least 3; `mriscan info` and `mriscan audit` show "
                    "the groups). A model that never "
                    "sees a class cannot be scored on it. Add data for that class, or leave it "
                    "out with --class-map (map only the other classes)."
                )


def _remove_summary(cv: CVLayout) -> None:
    """Delete the summary an earlier CV into the same folder left (``metrics.json``, the
    out-of-fold predictions of slices and units, the plots), once this run's first fold model
    is about to replace that run's: the folder then never shows one run's numbers beside
    another run's models. A run stopped before its end leaves fold folders and no summary;
    rerunning the same command resumes it (an unfinished fold from its backup) and writes the
    summary."""
    old = [cv.metrics, cv.predictions, cv.roc_plot, cv.confusion_plot]
    old += [cv.unit_predictions(lv) for lv in LEVELS]
    gone = [p for p in old if p.is_file()]
    for p in gone:
        p.unlink()
    if gone:
        log.warning(
            "removed the summary of an earlier cross-validation in %s (%s): its fold models are "
            "being replaced by this run's",
            cv.root,
            ", ".join(p.name for p in gone),
        )


def _remove_stale(
    cv: CVLayout, fold_dirs: list[str], *, roc: bool, levels: tuple[str, ...] = ()
) -> None:
    """Delete what an earlier CV into the same folder left and this one does not write: fold
    folders beyond this run's folds × repeats, ``roc.png`` when this task has no ROC curve
    (K classes; ``mriscan.artifacts.stale_plots``, the rule train and evaluate follow too),
    and the ``oof_<level>_predictions.csv`` of unit levels other than ``levels`` (those this
    run writes). Done once every fold has finished, just before ``metrics.json`` is
    written, so the folder then holds exactly one run's results (and a run that stops earlier
    removes nothing)."""
    keep = set(fold_dirs)
    stale = [p for p in cv.fold_dirs() if p.name not in keep]
    stale += stale_plots(cv, [cv.confusion_plot, *([cv.roc_plot] if roc else [])])
    stale += [
        cv.unit_predictions(lv)
        for lv in LEVELS
        if lv not in levels and cv.unit_predictions(lv).is_file()
    ]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    if stale:
        log.info(
            "removed what an earlier cross-validation in %s left: %s",
            cv.root,
            ", ".join(p.name for p in stale),
        )


def cross_validate(
    data: str | os.PathLike[str] | ImageStore,
    config: CVConfig | None = None,
    *,
    out: str | os.PathLike[str] = "artifacts",
    store_path: str | os.PathLike[str] | None = None,
    read_options: ReadOptions | None = None,
) -> dict[str, Any]:
    """Stratified, duplicate-group-aware k-fold CV; writes ``RunLayout(out).cv``.

    Raises ``mriscan.errors.ConfigError`` before any training when a fold's training or
    validation part would hold no slice of a class (``check_folds``), and
    ``mriscan.errors.ResumeError`` before any fold is trained when a fold's backup holds an
    unfinished run of other data or settings (``mriscan.training.fit.resume_state``, checked
    for every fold once the starting weights are known: the phantom pre-training, cached per
    settings, may come first).

    Files: ``metrics.json`` (``accuracy``, ``roc_auc``, ``sensitivity``, ``specificity`` each
    with ``mean``, ``std``, ``ci95``, ``per_fold``; ``per_class``; ``pooled``; ``protocol``;
    ``per_series`` and ``per_patient``: ``summarize_levels``' sections, each fold's test slices
    pooled per DICOM series / NIfTI volume / manifest group and per patient with ``mriscan
    predict``'s rule, or why the store has no such unit), ``oof_predictions.csv``,
    ``oof_series_predictions.csv`` / ``oof_patient_predictions.csv`` (the pooled units, named
    by keyed hash only; where the level exists), ``roc.png`` (two classes),
    ``confusion_matrix.png``, one run folder per fold (``r<repeat>_f<fold>``, listed in
    ``fold_dirs``). Fold folders, a ``roc.png`` and unit files that an earlier CV into the
    same ``out`` left and this one does not write are deleted once every fold has finished,
    so the results never mix two runs; the earlier run's summary files (``metrics.json``,
    out-of-fold predictions, plots) are deleted as soon as this run's first fold model is
    about to replace one of its models, so a run that is stopped (killed) part-way leaves fold
    folders without any summary, never the earlier summary beside new models. Rerunning the
    same command then resumes: finished folds are trained again, an unfinished one resumes
    from its backup, and the summary is written at the end.
    ``read_options`` (``mriscan.readers.ReadOptions``): how DICOM and NIfTI files in ``data``
    are read when it is ingested (default: ``DicomConfig``'s and ``NiftiConfig``'s defaults).
    """
    from mriscan import plots

    cfg = config if config is not None else CVConfig()
    tcfg = cfg.train
    t0 = time.perf_counter()
    store, task, kept = open_for_task(data, tcfg, store_path, read_options)
    cv = RunLayout(out).cv
    all_labels = task.labels(store.labels)
    labels, groups = all_labels[kept], store.groups[kept]
    start = None
    per_fold: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    fold_predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    preds: list[np.ndarray] = []
    data_labels: list[np.ndarray] = []  # the test slices' data classes, before the class map
    fold_levels: list[dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]]] = []
    cmp = _comparison(task)
    recs = store.index.records
    keys = [recs[i].group_key for i in kept]
    for line in oversized_groups(labels, groups, 1.0 / cfg.folds, task.class_names, keys):
        log.warning("folds: %s", line)
    splits = list(
        cv_splits(
            labels,
            groups,
            folds=cfg.folds,
            repeats=cfg.repeats,
            val_fraction=tcfg.split.val_fraction,
            seed=tcfg.seed,
        )
    )
    check_folds(labels, groups, splits, task, cfg.folds)
    mix = fold_class_mix(labels, groups, splits, task.class_names)
    for m in mix:
        if m["skewed"]:
            log.warning(
                "folds: repeat %d, fold %d's test part is skewed (%s; the whole set: %s): its "
                "numbers answer a different mix than the other folds' (whole groups are kept "
                "together: see the oversized groups above)",
                m["repeat"] + 1, m["fold"] + 1, _shares(m["test_share"]),
                _shares(class_shares(labels, task.class_names)),
            )  # fmt: skip
    cv.root.mkdir(parents=True, exist_ok=True)
    hw = setup_for(tcfg)
    # phantoms hold no real slice: one pre-training (or the user's file) serves every fold
    init = starting_weights(tcfg, hw, store.config)
    plan = []
    for rep, k, *parts in splits:
        train_idx, val_idx, test_idx = (kept[p] for p in parts)
        fold_cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 100 * rep + k)
        # every fold's backup is checked before the first is trained: an unfinished fold of
        # another run is refused here, not after earlier folds have replaced that run's models
        resume_state(store, train_idx, val_idx, fold_cfg, cv.fold(rep, k), init)
        plan.append((rep, k, train_idx, val_idx, test_idx, fold_cfg))
    summary_cleared = False
    for rep, k, train_idx, val_idx, test_idx, fold_cfg in plan:
        tag = f"repeat {rep + 1}/{cfg.repeats}, fold {k + 1}/{cfg.folds}"
        log.info("%s: train %d, val %d, test %d", tag, len(train_idx), len(val_idx), len(test_idx))
        split = {"train": train_idx, "val": val_idx, "test": test_idx}
        fold_layout = cv.fold(rep, k)
        run = fit_and_calibrate(store, split, fold_cfg, fold_layout, hw, init_weights=init)
        start = run.start
        seen = np.sort(np.concatenate([train_idx, val_idx]))
        if not summary_cleared:  # the first fold model of this run is about to land
            _remove_summary(cv)
            summary_cleared = True
        card = publish_model(
            run.model.save,
            card_for(store, fold_cfg, run.threshold, start, seen=seen, rule=run.threshold_rule),
            fold_layout.model,
        )
        if fold_layout.live_history.is_file():
            os.replace(fold_layout.live_history, fold_layout.history)
        for leftover in (fold_layout.backup, fold_layout.checkpoint.parent):
            shutil.rmtree(leftover, ignore_errors=True)
        thr, prob, m = run.threshold, run.test_prob, run.test
        assert m is not None  # a k-fold test part is never empty
        m.update(repeat=rep, fold=k, threshold=thr)
        per_fold.append(m)
        key = "roc_auc" if task.binary else "macro_roc_auc"
        log.info(
            "%s: accuracy %.3f, AUC %.3f%s",
            tag,
            m["accuracy"],
            m[key],
            f" (threshold {thr:.3f}: {run.threshold_rule})" if thr is not None else "",
        )
        y_fold = all_labels[test_idx]
        pred = _predicted(task, prob, thr)
        fold_predictions.append((y_fold, prob, store.groups[test_idx]))
        preds.append(pred)
        data_labels.append(store.labels[test_idx].astype(np.int64))
        rows += _rows(store, task, rep, k, test_idx, y_fold, prob, pred, thr)
        # the fold's test slices pooled per series / patient, as evaluate pools and scores them
        levels = grouped_levels(
            Scoring(cmp, card, store.class_names, cfg.n_boot),
            y_fold,
            prob,
            store.groups[test_idx],
            store.labels[test_idx].astype(np.int64),
            [recs[i].source for i in test_idx],
            [recs[i].group_key for i in test_idx],
            no_anatomy=no_anatomy_mask(store, test_idx),
        )
        fold_levels.append(levels)
        for level, (section, _) in levels.items():
            if section["available"] and section["n"]:
                log.info(
                    "%s: per %s accuracy %.3f (%d units)",
                    tag,
                    level,
                    section["accuracy"],
                    section["n"],
                )
    y = np.concatenate([f[0] for f in fold_predictions])
    prob = np.concatenate([f[1] for f in fold_predictions])
    pred = np.concatenate(preds)
    summary = summarize_folds(
        per_fold, fold_predictions, task=task, n_boot=cfg.n_boot, seed=tcfg.seed
    )
    summary["pooled"] = _pooled(task, y, prob, pred)
    by_source = recall_per_data_class(task, y, pred, np.concatenate(data_labels))
    if by_source is not None:
        summary["pooled"]["recall_per_data_class"] = by_source
    unit_levels = summarize_levels(task, per_fold, fold_levels, n_boot=cfg.n_boot, seed=tcfg.seed)
    for level, (section, _) in unit_levels.items():
        if section["available"]:
            section["predictions"] = cv.unit_predictions(level).name
        summary[f"per_{level}"] = section
    summary["task"] = task.describe()
    summary["headline"] = list(headline(task))
    summary["class_names"] = list(task.class_names)
    cm = np.array(summary["pooled"]["confusion_matrix"])
    protocol = Protocol(
        kind="cv",
        seed=tcfg.seed,
        val_fraction=tcfg.split.val_fraction,
        threshold_rule=mx.decision_rule(task.binary, tcfg.fit.threshold_rule),
        duplicate_threshold=DEFAULT_THRESHOLD,
        folds=cfg.folds,
        repeats=cfg.repeats,
        samples=len(kept),
        duplicate_groups=len(np.unique(groups)),
        select=tcfg.fit.select,
        n_boot=cfg.n_boot,
        **pretrain_protocol(tcfg),
    )
    summary["protocol"] = protocol.to_dict()
    summary["cv_config"] = cfg.to_dict()
    summary["init_weights"] = start_record(tcfg, start)  # the same file for every fold
    summary["hardware"] = hw.describe()
    summary["seconds"] = time.perf_counter() - t0
    summary["per_fold"] = per_fold
    summary["fold_class_mix"] = mix
    summary["fold_class_mix_rule"] = {
        "whole_share": class_shares(labels, task.class_names),
        "skew_points": MIX_SKEW_POINTS,
        "rule": "a class is flagged in a fold's test part when its share there lies more than "
        "skew_points percentage points from whole_share, or when the set holds it and the "
        "part lacks it; test_groups counts the split groups its test slices rest on",
    }
    summary["fold_dirs"] = [cv.fold(f["repeat"], f["fold"]).root.name for f in per_fold]
    written = tuple(lv for lv, (_, r) in unit_levels.items() if r is not None)
    _remove_stale(cv, summary["fold_dirs"], roc=task.binary, levels=written)
    write_json(cv.metrics, summary)
    with open(cv.predictions, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for level in written:
        write_unit_rows(
            cv.unit_predictions(level),
            unit_levels[level][1],
            task.class_names,
            lead=("repeat", "fold"),
        )
    if task.binary:
        fpr, tpr, _ = mx.roc_curve(y, prob[:, 1])
        plots.save_roc(fpr, tpr, summary["pooled"]["roc_auc"], cv.roc_plot)
    plots.save_confusion_matrix(
        cm,
        task.class_names,
        cv.confusion_plot,
        title=f"{cfg.folds}-fold CV, pooled (n={len(y)})",
    )
    return summary
