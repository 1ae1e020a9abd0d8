"""``train``: one training run from data to a model card, metrics and plots.

Sequence: open or ingest the data → group-aware train/val/test split (``split.json``) →
hardware → phantom pre-training → ``fit_and_calibrate`` → model card, metrics, plots.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import Protocol, RunLayout, publish_model, remove_stale_plots, write_json
from mriscan.config import FitConfig, TrainConfig
from mriscan.duplicates import DEFAULT_THRESHOLD
from mriscan.errors import ConfigError
from mriscan.hardware import Hardware, setup_hardware
from mriscan.pipeline import resolve_pipeline
from mriscan.readers import ReadOptions, file_sha256
from mriscan.sources import open_or_ingest
from mriscan.splits import oversized_groups, split_indices
from mriscan.store import ImageStore
from mriscan.tasks import Task, resolve_task
from mriscan.training.fit import (
    Calibrated,
    card_for,
    check_implant,
    fit_and_calibrate,
    start_record,
)
from mriscan.training.pretrain import starting_weights

__all__ = [
    "TrainResult",
    "check_every_class_has_slices",
    "check_split",
    "open_for_task",
    "pretrain_protocol",
    "setup_for",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Paths and numbers of a finished run (``metrics`` is what ``metrics.json`` holds)."""

    out: Any
    model_path: Any
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    hardware: Hardware
    split: dict[str, np.ndarray]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def setup_for(cfg: TrainConfig) -> Hardware:
    """``setup_hardware`` with the run's precision, strategy and per-replica batch."""
    return setup_hardware(
        precision=cfg.hardware.precision,
        per_replica_batch=cfg.optimizer.batch_size,
        strategy=cfg.hardware.strategy,
    )


def train(
    data: str | os.PathLike[str] | ImageStore,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike[str] = "artifacts",
    store_path: str | os.PathLike[str] | None = None,
    callbacks: list | None = None,
    read_options: ReadOptions | None = None,
) -> TrainResult:
    """Train the classifier and write every artifact of ``RunLayout(out)``.

    Parameters
    ----------
    data : path, URL or ImageStore
        A class-folder directory (ingested into ``store_path`` first) or a store.
    config : TrainConfig, optional
    out : path
        The run folder (``mriscan.artifacts.RunLayout`` names every file in it). An
        ``evaluation/`` there that scored the model this run replaces is deleted when the new
        model is published (its ``metrics.json`` records the model's SHA-256).
    store_path : path, optional
        Where raw folders are ingested (default ``data/processed/images.zarr``).
    callbacks : list of keras.callbacks.Callback, optional
        Run after mriscan's own callbacks.
    read_options : mriscan.readers.ReadOptions, optional
        How DICOM and NIfTI files in ``data`` are read (``DicomConfig``, ``NiftiConfig``;
        default: their defaults).

    Raises
    ------
    ConfigError
        If the validation and test shares leave no training part
        (``SplitConfig.check_holdout``), the task's classes cannot be resolved, or a class is
        missing from a part of the split (too few slices: then every reported number would be
        undefined or anecdotal).
    TrainingDivergedError
        If training diverged (nothing is written over the previous model).
    ResumeError
        If ``out`` holds an unfinished run of other data or settings.
    """
    from mriscan import plots

    cfg = config if config is not None else TrainConfig()
    cfg.split.check_holdout()  # train's own: cv holds out no test share
    t0 = time.perf_counter()
    layout = RunLayout(out)
    store, task, kept = open_for_task(data, cfg, store_path, read_options)
    split = holdout_split(store, task, kept, cfg)
    layout.root.mkdir(parents=True, exist_ok=True)
    hw = setup_for(cfg)
    init = starting_weights(cfg, hw, store.config)
    run = fit_and_calibrate(store, split, cfg, layout, hw, init_weights=init, callbacks=callbacks)
    # the model, its card, split and metrics are written only now, together: a run that
    # stops earlier leaves the previous run's files as they were
    # what the model (and its threshold) saw: near-duplicates of these slices, and slices of
    # their patients, are removed when it is evaluated on other data; the test part is not
    seen = np.sort(np.concatenate([split["train"], split["val"]]))
    replaced = _published_sha256(layout)
    card = publish_model(
        run.model.save,
        card_for(store, cfg, run.threshold, run.start, seen=seen, rule=run.threshold_rule),
        layout.model,
        signatures=store.signatures()[seen],
    )
    _remove_stale_evaluation(layout, replaced, card.model_sha256)
    _write_split(layout, store, split, cfg, card.model_sha256)
    result_metrics = _run_metrics(cfg, split, hw, run)
    result_metrics["model_sha256"] = card.model_sha256
    if layout.live_history.is_file():
        os.replace(layout.live_history, layout.history)
    plots.save_history(run.history, layout.history_plot)
    written = [layout.history_plot]
    if run.test is not None:
        written += _plot_test(plots, layout, store, split["test"], run)
    remove_stale_plots(layout, written)  # e.g. a two-class run's roc.png, K classes now
    result_metrics["seconds"] = time.perf_counter() - t0
    write_json(layout.metrics, result_metrics)
    for leftover in (layout.backup, layout.checkpoint.parent):  # a finished run needs neither
        shutil.rmtree(leftover, ignore_errors=True)
    return TrainResult(
        layout.root,
        layout.model,
        result_metrics,
        run.history,
        hw,
        split,
        time.perf_counter() - t0,
    )


# why a stored sample was retired (``SampleRecord.flags``), in words
_RETIRED_WHY = {
    "conflict": "retired as label conflicts (the same bytes lie under another class folder)",
    "removed": "deleted since they were ingested",
    "replaced": "overwritten since they were ingested",
    "relabelled": "moved to another class folder since they were ingested",
}


def _published_sha256(layout: RunLayout) -> str | None:
    """SHA-256 of the model file now published in ``layout`` (None: none, or unreadable)."""
    try:
        return file_sha256(layout.model) if layout.model.is_file() else None
    except OSError:
        return None


def _remove_stale_evaluation(layout: RunLayout, replaced: str | None, new: str) -> None:
    """Delete ``layout.evaluation`` when it scored the model this run just replaced, so the run
    folder never shows an evaluation beside a model it was not made with.

    The evaluation's ``metrics.json`` records ``model_sha256`` (since session 12): it is stale
    when that is the replaced file's digest (``replaced``) and not the new one's (``new``). An
    older evaluation without it is stale when its ``model`` path is this run's model. An
    evaluation of another model written here with ``--out`` is kept, and so is a folder whose
    ``metrics.json`` cannot be read (nothing says which model it scored).
    """
    ev = layout.evaluation
    if not ev.metrics.is_file():
        return
    try:
        rec = json.loads(ev.metrics.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(rec, dict):
        return
    sha = rec.get("model_sha256")
    if sha:
        stale = sha != new and sha == replaced
    else:
        try:
            stale = Path(str(rec.get("model", ""))).resolve() == layout.model.resolve()
        except OSError:
            stale = False
    if stale:
        shutil.rmtree(ev.root)
        log.warning(
            "removed %s: it evaluated the model this run replaced (run `mriscan evaluate` "
            "again for the new one)",
            ev.root,
        )


def open_for_task(
    data: str | os.PathLike[str] | ImageStore,
    cfg: TrainConfig,
    store_path: str | os.PathLike[str] | None,
    read_options: ReadOptions | None,
) -> tuple[ImageStore, Task, np.ndarray]:
    """What ``train`` and ``cross_validate`` do before any training: open (or ingest) the
    data, resolve the task (its warnings said once, here), log it, and refuse a task that
    ``--implant`` cannot serve (``check_implant``: before the phantom pre-training, which can
    take minutes) or a class without a usable slice (``check_every_class_has_slices``).

    Returns
    -------
    (store, task, kept)
        ``kept``: sorted int64 positions of the usable samples (``Task.usable``).

    Raises
    ------
    ConfigError
        As ``open_or_ingest``, ``resolve_task``, ``check_implant`` and
        ``check_every_class_has_slices`` raise it.
    """
    store = open_or_ingest(
        data,
        store_path=store_path,
        image_size=cfg.image_size,
        check_classes=lambda names: resolve_task(names, cfg.task, warn=False),  # said below
        read_options=read_options,
        used_classes=cfg.task.used_classes,
    )
    task = resolve_task(store.class_names, cfg.task)
    log.info("task: %s", task.describe())
    if not task.binary and cfg.fit.threshold_rule != FitConfig.threshold_rule:
        # the rule never changes the weights, so a run goes on; but the user asked for it
        log.warning(
            "--threshold-rule %s is not used: it sets the threshold of two-class models, and "
            "this task has %d classes, decided by the most probable class",
            cfg.fit.threshold_rule,
            task.num_classes,
        )
    check_implant(task, cfg)
    kept = task.usable(store.labels, store.active_indices())
    check_every_class_has_slices(task.labels(store.labels)[kept], task, store)
    return store, task, kept


def check_every_class_has_slices(
    labels: np.ndarray, task: Task, store: ImageStore | None = None
) -> None:
    """Every class of the task must have at least one usable slice (``labels``: model labels of
    the usable samples, shape (n,), int). A class folder whose files were all unreadable is
    stored as a class with no slices; one whose slices were all retired (label conflicts,
    files deleted, overwritten or moved) keeps them only as retired records. A model cannot
    learn or be scored on such a class. ``store``: the store the task maps, so the message can
    say which of these happened (without it, every cause is named as possible).

    Raises
    ------
    ConfigError
        Naming the class(es), the counts per class, what happened to their files and the way
        out: fix the files, or a class map that leaves the class(es) out.
    """
    counts = np.bincount(labels, minlength=task.num_classes)
    missing = [task.class_names[k] for k in np.flatnonzero(counts == 0)]
    if not missing:
        return
    have = dict(zip(task.class_names, counts.tolist(), strict=True))
    if store is None:
        what = (
            "their files were all unreadable, retired as label conflicts, or deleted, "
            "overwritten or moved since they were ingested"
        )
    else:
        what = "; ".join(f"{name!r}: {_why_no_slice(store, task, name)}" for name in missing)
    keep = [(t, srcs) for t, srcs in _sources_of(task) if t not in missing]
    if len(keep) >= 2:
        cmap = ";".join(f"{t}={','.join(srcs)}" for t, srcs in keep)
        out = f"leave the class out with --class-map '{cmap}'"
    else:
        out = "leave the class out with --class-map (at least two classes must remain)"
    raise ConfigError(
        f"Class(es) {missing} have no usable slice (slices per class: {have}): {what}. "
        "`mriscan ingest` lists the skipped files and why. A model cannot learn a "
        f"class it never sees. Fix or add that class's files and ingest again, or {out}."
    )


def _sources_of(task: Task) -> list[tuple[str, list[str]]]:
    """(model class, its data classes) of ``task``, in the model's order."""
    return [
        (name, [d for j, d in enumerate(task.data_class_names) if task.label_map[j] == k])
        for k, name in enumerate(task.class_names)
    ]


def _why_no_slice(store: ImageStore, task: Task, name: str) -> str:
    """What became of the files of model class ``name``, which has no usable slice."""
    k = task.class_names.index(name)
    data_labels = np.flatnonzero(task.label_map == k)
    rows = np.flatnonzero(np.isin(store.labels, data_labels))
    if not rows.size:
        return (
            "none of its files was stored: ingest skipped each one, as unreadable or as a "
            "label conflict (the same bytes also lie under another class folder)"
        )
    records = store.index.records
    counts: dict[str, int] = {}
    for i in rows:
        flags = [f for f in records[int(i)].flags if f in _RETIRED_WHY]
        key = flags[0] if flags else "other"
        counts[key] = counts.get(key, 0) + 1
    parts = [
        f"{n} {_RETIRED_WHY.get(f, 'retired')}"
        for f, n in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    return f"its {rows.size} stored slice(s) were all retired: " + ", ".join(parts)


def holdout_split(
    store: ImageStore, task: Task, kept: np.ndarray, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """The train/val/test split ``train`` fits on: stratified and group-aware over the store
    positions ``kept`` (``mriscan.splits.split_indices`` with ``cfg.split`` and ``cfg.seed``),
    oversized groups warned about, every class checked in every part (``check_split``).

    Returns
    -------
    dict
        ``"train"``, ``"val"``, ``"test"``: ndarray of store positions, int64.

    Raises
    ------
    ConfigError
        If a class is missing from a part of the split.
    """
    labels = task.labels(store.labels)
    positive_parts = [f for f in (cfg.split.val_fraction, cfg.split.test_fraction) if f > 0]
    recs = store.index.records
    for line in oversized_groups(
        labels[kept],
        store.groups[kept],
        min(positive_parts, default=1.0),
        task.class_names,
        [recs[i].group_key for i in kept],
    ):
        log.warning("split: %s", line)
    inner = split_indices(
        labels[kept],
        store.groups[kept],
        val_fraction=cfg.split.val_fraction,
        test_fraction=cfg.split.test_fraction,
        seed=cfg.seed,
    )
    split = {k: kept[v] for k, v in inner.items()}
    check_split(split, labels, task, test=cfg.split.test_fraction > 0)
    return split


def check_split(
    split: dict[str, np.ndarray], labels: np.ndarray, task: Task, *, test: bool
) -> None:
    """Every class must appear in the training, validation and (when asked) test part.

    Raises
    ------
    ConfigError
        Naming the class, the part and the counts per class, with the way out.
    """
    parts = ("train", "val", "test") if test else ("train", "val")
    for part in parts:
        counts = np.bincount(labels[split[part]], minlength=task.num_classes)
        missing = [task.class_names[k] for k in np.flatnonzero(counts == 0)]
        if missing:
            have = dict(
                zip(
                    task.class_names,
                    np.bincount(labels[labels >= 0], minlength=task.num_classes).tolist(),
                    strict=True,
                )
            )
            raise ConfigError(
                f"The {part} part of the split holds no slice of {missing} (slices per class: "
                f"{have}; unreadable files are not counted). A group-aware split keeps every "
                "near-duplicate group (and patient) on one side, so a class needs at least as "
                "many groups as the split has parts (`mriscan info` and `mriscan audit` show "
                "the groups). Add data for that class, or leave it out with --class-map (map "
                "only the other classes). `mriscan cv` is no way around this: each of its "
                "folds needs every class in its training and validation parts too."
            )


def _run_metrics(
    cfg: TrainConfig, split: dict[str, np.ndarray], hw: Hardware, run: Calibrated
) -> dict[str, Any]:
    """The content of ``metrics.json``: protocol (numbers), hardware, validation, test."""
    protocol = Protocol(
        kind="holdout",
        seed=cfg.seed,
        val_fraction=cfg.split.val_fraction,
        test_fraction=cfg.split.test_fraction,
        threshold_rule=run.threshold_rule,
        duplicate_threshold=DEFAULT_THRESHOLD,
        sizes={k: len(v) for k, v in split.items()},
        select=cfg.fit.select,
        **pretrain_protocol(cfg),
    )
    out: dict[str, Any] = {
        "protocol": protocol.to_dict(),
        "task": run.task.describe(),
        "train_config": cfg.to_dict(),
        "init_weights": start_record(cfg, run.start),
        "hardware": hw.describe(resolve_pipeline(cfg.runtime.pipeline)),
        "validation": run.validation,
    }
    if run.test is not None:
        out["test"] = run.test
    return out


def pretrain_protocol(cfg: TrainConfig) -> dict[str, Any]:
    """The ``Protocol`` fields of the starting weights (a user's file replaces the phantoms)."""
    if cfg.fit.init_weights:
        return {"pretrain_phantoms": 0, "pretrain_epochs": 0, "init_weights": cfg.fit.init_weights}
    on = bool(cfg.pretrain.phantoms)
    return {
        "pretrain_phantoms": cfg.pretrain.phantoms,
        "pretrain_epochs": cfg.pretrain.epochs if on else 0,
    }


def _plot_test(
    plots: Any, layout: RunLayout, store: ImageStore, test_idx, run: Calibrated
) -> list[Path]:
    """Confusion matrix and ROC (two classes) of the test split; returns the plots written."""
    test = run.test
    assert test is not None
    plots.save_confusion_matrix(
        np.array(test["confusion_matrix"]),
        run.task.class_names,
        layout.confusion_plot,
        title=f"Test split (n={test['n']})",
    )
    if run.task.binary:
        y = run.task.labels(store.labels[test_idx])
        fpr, tpr, _ = mx.roc_curve(y, run.test_prob[:, 1])
        plots.save_roc(fpr, tpr, test["roc_auc"], layout.roc_plot)
        return [layout.confusion_plot, layout.roc_plot]
    return [layout.confusion_plot]


def _write_split(
    layout: RunLayout,
    store: ImageStore,
    split: dict[str, np.ndarray],
    cfg: TrainConfig,
    model_sha256: str,
) -> None:
    """Record the split (indices, source files and pixel checksums) so it can be reproduced
    and checked against the store later (``mriscan evaluate`` refuses a rebuilt store)."""
    recs = store.index.records
    data = {
        "model_sha256": model_sha256,
        "seed": cfg.seed,
        "val_fraction": cfg.split.val_fraction,
        "test_fraction": cfg.split.test_fraction,
        # absolute: `evaluate` without DATA finds it from any working folder (a URL as given)
        "store": store.location if "://" in store.location else os.path.abspath(store.location),
        # and from the run folder: a project folder moved whole keeps its run and store apart
        # by this path (None for a URL)
        "store_from_run": None
        if "://" in store.location
        else os.path.relpath(os.path.abspath(store.location), os.path.abspath(layout.root)),
        **{
            k: {
                "indices": v.tolist(),
                "sources": [recs[i].source for i in v],
                "pixel_sha256": [recs[i].pixel_sha256 for i in v],
            }
            for k, v in split.items()
        },
    }
    write_json(layout.split, data, indent=1)
