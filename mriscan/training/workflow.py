"""``train``: one training run from data to a model card, metrics and plots.

Sequence: open or ingest the data → group-aware train/val/test split (``split.json``) →
hardware → phantom pre-training → ``fit_and_calibrate`` → model card, metrics, plots.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import Protocol, RunLayout, publish_model, write_json
from mriscan.config import TrainConfig
from mriscan.duplicates import DEFAULT_THRESHOLD
from mriscan.errors import ConfigError
from mriscan.hardware import Hardware, setup_hardware
from mriscan.pipeline import resolve_pipeline
from mriscan.sources import open_or_ingest
from mriscan.splits import split_indices
from mriscan.store import ImageStore
from mriscan.training.fit import Calibrated, card_for, fit_and_calibrate
from mriscan.training.pretrain import pretrain_on_phantoms

__all__ = ["TrainResult", "setup_for", "train"]

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
) -> TrainResult:
    """Train the classifier and write every artifact of ``RunLayout(out)``.

    Parameters
    ----------
    data : path, URL or ImageStore
        A class-folder directory (ingested into ``store_path`` first) or a store.
    config : TrainConfig, optional
    out : path
        The run folder (``mriscan.artifacts.RunLayout`` names every file in it).
    store_path : path, optional
        Where raw folders are ingested (default ``data/processed/images.zarr``).
    callbacks : list of keras.callbacks.Callback, optional
        Run after mriscan's own callbacks.

    Raises
    ------
    ConfigError
        If the store does not hold exactly two classes or the split leaves an empty part.
    TrainingDivergedError
        If training diverged (nothing is written over the previous model).
    ResumeError
        If ``out`` holds an unfinished run of other data or settings.
    """
    from mriscan import plots

    cfg = config if config is not None else TrainConfig()
    t0 = time.perf_counter()
    layout = RunLayout(out)
    store = open_or_ingest(data, store_path=store_path, image_size=cfg.image_size)
    if len(store.class_names) != 2:
        raise ConfigError(
            f"Training needs exactly two classes; the store has {list(store.class_names)}."
        )
    split = split_indices(
        store.labels,
        store.groups,
        val_fraction=cfg.split.val_fraction,
        test_fraction=cfg.split.test_fraction,
        seed=cfg.seed,
    )
    if min(len(split["train"]), len(split["val"])) == 0:
        raise ConfigError(
            f"The split left an empty train or validation set "
            f"({ {k: len(v) for k, v in split.items()} }); add data or change "
            "--val-fraction/--test-fraction."
        )
    layout.root.mkdir(parents=True, exist_ok=True)
    hw = setup_for(cfg)
    init = pretrain_on_phantoms(cfg, hw, store.config) if cfg.pretrain.phantoms else None
    run = fit_and_calibrate(store, split, cfg, layout, hw, init_weights=init, callbacks=callbacks)
    # the model, its card, split and metrics are written only now, together: a run that
    # stops earlier leaves the previous run's files as they were
    card = publish_model(run.model.save, card_for(store, cfg, run.threshold), layout.model)
    _write_split(layout, store, split, cfg, card.model_sha256)
    result_metrics = _run_metrics(cfg, split, hw, run)
    result_metrics["model_sha256"] = card.model_sha256
    plots.save_history(run.history, layout.history_plot)
    if run.test is not None:
        _plot_test(plots, layout, store, split["test"], run)
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


def _run_metrics(
    cfg: TrainConfig, split: dict[str, np.ndarray], hw: Hardware, run: Calibrated
) -> dict[str, Any]:
    """The content of ``metrics.json``: protocol (numbers), hardware, validation, test."""
    protocol = Protocol(
        kind="holdout",
        seed=cfg.seed,
        val_fraction=cfg.split.val_fraction,
        test_fraction=cfg.split.test_fraction,
        threshold_rule=mx.THRESHOLD_RULE,
        duplicate_threshold=DEFAULT_THRESHOLD,
        sizes={k: len(v) for k, v in split.items()},
        select=cfg.fit.select,
        pretrain_phantoms=cfg.pretrain.phantoms,
        pretrain_epochs=cfg.pretrain.epochs if cfg.pretrain.phantoms else 0,
    )
    out: dict[str, Any] = {
        "protocol": protocol.to_dict(),
        "train_config": cfg.to_dict(),
        "hardware": hw.describe(resolve_pipeline(cfg.runtime.pipeline)),
        "validation": run.validation,
    }
    if run.test is not None:
        out["test"] = run.test
    return out


def _plot_test(plots: Any, layout: RunLayout, store: ImageStore, test_idx, run: Calibrated):
    """Confusion matrix and ROC of the test split."""
    test = run.test
    assert test is not None
    plots.save_confusion_matrix(
        np.array(test["confusion_matrix"]),
        store.class_names,
        layout.confusion_plot,
        title=f"Test split (n={test['n']})",
    )
    y = store.labels.astype(np.int64)[test_idx]
    fpr, tpr, _ = mx.roc_curve(y, run.test_prob)
    plots.save_roc(fpr, tpr, test["roc_auc"], layout.roc_plot)


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
        "store": store.location,
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
