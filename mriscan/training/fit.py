"""Fitting one model, and the one sequence that turns a split into a calibrated model.

``fit_and_calibrate`` is the recipe every command ships: fit on the training part, choose the
decision threshold on the validation and training predictions
(``mriscan.metrics.choose_threshold``), predict the test part once. ``train`` and
``cross_validate`` both call it, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import ModelCard, RunLayout, write_json
from mriscan.config import TrainConfig
from mriscan.errors import ConfigError, ResumeError, TrainingDivergedError
from mriscan.hardware import Hardware
from mriscan.inference import predict_store
from mriscan.model import build_model
from mriscan.pipeline import StoreDataset, make_tf_dataset, resolve_pipeline
from mriscan.readers import file_sha256
from mriscan.scan_config import INPUT_KINDS
from mriscan.scratch import scratch_dir
from mriscan.splits import patient_keys
from mriscan.store import ImageStore
from mriscan.synth import implant_lesions
from mriscan.tasks import Task, canonical_class_map, resolve_task
from mriscan.training.backup import AtomicBackupAndRestore, BestCheckpoint, epochs_done
from mriscan.training.history import JsonHistory
from mriscan.training.optimizer import class_weights, compile_model
from mriscan.weights import WeightsReport, load_matching_weights

__all__ = [
    "Calibrated",
    "Fitted",
    "ResumeState",
    "card_for",
    "check_implant",
    "fit_and_calibrate",
    "fit_model",
    "identity_differences",
    "resume_state",
    "run_fingerprint",
    "run_identity",
    "score",
    "start_record",
]

log = logging.getLogger(__name__)


def _verbosity(v: str) -> int:
    if v == "auto":
        return 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "line": 2, "silent": 0}[v]


def check_implant(task: Task, cfg: TrainConfig) -> None:
    """Refuse ``cfg.fit.implant`` > 0 for a task it cannot serve: implants are drawn into the
    healthy class's slices and labelled as the tumor class, so the task must have exactly
    those two classes. train and cv call it before the phantom pre-training, so that the
    refusal does not wait for it.

    Raises
    ------
    ConfigError
        Naming the task and a class map that would make one.
    """
    if cfg.fit.implant and (not task.binary or task.healthy is None):
        raise ConfigError(
            "--implant needs a two-class task of a healthy and a tumor class (e.g. no/ and "
            f"yes/, or a --class-map such as 'yes=glioma,meningioma;no=notumor'); this task is "
            f"{task.describe()}."
        )


def _with_implants(
    store: ImageStore, train_idx: np.ndarray, cfg: TrainConfig, folder: Path
) -> ImageStore:
    """A store in ``folder`` with the training slices plus ``cfg.fit.implant`` lesion-implanted
    copies of each healthy one (labelled as tumors).

    The task decides which slices are healthy and which data class an implanted copy gets (the
    first data class the task maps to its positive class), so a class map works as without
    one: the copies carry data labels, and training maps them as it maps every slice.

    Raises
    ------
    ConfigError
        Unless the task is a two-class task with a healthy class (implants are drawn into
        healthy slices and labelled as the tumor class).
    """
    task = resolve_task(store.class_names, cfg.task, warn=False)
    check_implant(task, cfg)
    images, labels = store.read_batch(np.sort(train_idx))
    tumor = 1 - task.healthy
    tumor_data_label = int(np.flatnonzero(task.label_map == tumor)[0])
    healthy = task.labels(labels) == task.healthy
    implants = implant_lesions(images[healthy], cfg.fit.implant, cfg.seed)
    out = ImageStore.create(folder / "implants.zarr", store.image_size, store.config)
    out.set_class_names(list(store.class_names))
    out.append(
        np.concatenate([images, implants]),
        np.concatenate([labels, np.full(len(implants), tumor_data_label, np.uint8)]),
    )
    out.commit()
    log.info("training on %d slices + %d with implanted lesions", len(images), len(implants))
    return out


#: settings that change what is shown, how fast batches arrive or what is decided after the
#: last epoch, never the weights: a run may resume with other values of them
#: (``RuntimeConfig``: batches follow the seed and epoch; the threshold rule runs after fitting)
OUTPUT_ONLY = (("runtime", "verbose"), ("runtime", "workers"), ("fit", "threshold_rule"))


def run_identity(
    store: ImageStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    init_weights: Path | None,
) -> dict[str, Any]:
    """What makes a run the same run, as plain JSON: its config without the output-only
    settings (``OUTPUT_ONLY``) and with its class map in canonical form
    (``mriscan.tasks.canonical_class_map``: the order of the sources, and of a two-class map's
    entries, does not change the task), its store's location, the SHA-256 of its
    starting-weights file (a file replaced under the same name is another run; "" for random
    weights), the sizes of its training and validation parts and a SHA-256 of their positions
    and pixel checksums."""
    conf = json.loads(json.dumps(cfg.to_dict()))  # plain JSON, as the backup records it
    for section, name in OUTPUT_ONLY:
        conf.get(section, {}).pop(name, None)
    # a class map written in another order that makes the same task is the same run
    conf["task"]["class_map"] = canonical_class_map(cfg.task.class_map)
    recs = store.index.records
    h = hashlib.sha256()
    for part in (train_idx, val_idx):
        h.update(np.asarray(part, np.int64).tobytes())
        h.update("".join(recs[int(i)].pixel_sha256 for i in part).encode())
    return {
        "config": conf,
        "store": str(store.location),
        "init_weights_sha256": file_sha256(init_weights) if init_weights is not None else "",
        "train_slices": len(train_idx),
        "val_slices": len(val_idx),
        "slices_sha256": h.hexdigest(),
    }


def run_fingerprint(identity: dict[str, Any]) -> str:
    """A run's identity (``run_identity``'s record) as 32 hex digits: the first half of the
    SHA-256 of its JSON with sorted keys. A backup may only be resumed by a run with the same
    fingerprint. Takes the record rather than its inputs so that a caller that keeps the
    record too (``fit_model``: for ``_check_resume``'s account of what differs) hashes the
    starting-weights file once."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"fit": {"epochs": 4}}`` → ``{"fit.epochs": 4}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two ``run_identity`` records, one line per setting or part:
    ``"fit.epochs: 40 in the backup, 60 now"``, both sides in one notation (plain JSON; a
    class map as --class-map text, with a note when only its entries' order differs); the
    data as sizes and a note."""
    lines = []
    # both sides as plain JSON (the backup's is read from JSON): one notation on both sides
    a = _flat(json.loads(json.dumps(old.get("config", {}))))
    b = _flat(json.loads(json.dumps(new.get("config", {}))))
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "(unset)"), b.get(key, "(unset)")
        if va != vb:
            if key == "task.class_map":
                lines.append(_class_map_difference(va, vb))
            else:
                lines.append(f"{key}: {va!r} in the backup, {vb!r} now")
    if old.get("store") != new.get("store"):
        lines.append(f"store: {old.get('store')} in the backup, {new.get('store')} now")
    if old.get("init_weights_sha256") != new.get("init_weights_sha256"):
        lines.append(
            "starting weights: another file (SHA-256 "
            f"{str(old.get('init_weights_sha256'))[:12] or 'none'} in the backup, "
            f"{str(new.get('init_weights_sha256'))[:12] or 'none'} now)"
        )
    if old.get("slices_sha256") != new.get("slices_sha256"):
        lines.append(
            _data_difference(old, new, seeded="seed" in {k for k in a if a[k] != b.get(k)})
        )
    return lines


def _data_difference(old: dict[str, Any], new: dict[str, Any], seeded: bool) -> str:
    """The data line of ``identity_differences``: the training/validation counts on both
    sides, or, when they are equal, that the same counts hold other slices (and, when the seed
    differs too, that the split is drawn from the seed)."""
    was = f"{old.get('train_slices')}/{old.get('val_slices')}"
    now = f"{new.get('train_slices')}/{new.get('val_slices')}"
    if was != now:
        return f"data: other training/validation slices ({was} in the backup, {now} now)"
    why = ": the split is drawn from the seed" if seeded else " (or the same slices' pixels)"
    return f"data: other training/validation slices, in equal numbers ({now}){why}"


def _class_map_difference(old: Any, new: Any) -> str:
    """The ``task.class_map`` line of ``identity_differences``: both maps as --class-map
    text, and, when they hold the same entries in another order (a map of more than two
    classes: the entries' order is the order of the model's classes), that this is why."""

    def text(cmap: Any) -> str:
        if not cmap:
            return "(none)"
        try:
            return "'" + ";".join(f"{t}={','.join(srcs)}" for t, srcs in cmap) + "'"
        except (TypeError, ValueError):
            return repr(cmap)

    line = f"task.class_map: {text(old)} in the backup, {text(new)} now"
    try:
        same_entries = sorted(canonical_class_map(old)) == sorted(canonical_class_map(new))
    except (TypeError, ValueError):
        same_entries = False
    if same_entries:
        line += (
            " (the same entries in another order: the order of a class map's entries is the "
            "order of the model's classes, so it is another model; give the entries in the "
            "backup's order to resume it)"
        )
    return line


def _check_resume(layout: RunLayout, run_id: str, identity: dict[str, Any] | None = None) -> bool:
    """Whether ``layout.backup`` holds this run's state to resume (False: start afresh).

    ``identity``: this run's ``run_identity``, compared with the one the backup records to name
    what differs when the run ids do not match.

    Raises
    ------
    ResumeError
        If it holds another run's state (naming the settings that differ, old and new value,
        where the backup records them), or a damaged one.
    """
    backup = layout.backup
    if not backup.is_dir():
        return False
    fix = f"Delete {backup} to start afresh, or use another --out."
    try:
        marker = json.loads(layout.run_marker.read_text())
    except (OSError, ValueError):
        marker = {}
    if not isinstance(marker, dict) or marker.get("run_id") != run_id:
        old = marker.get("identity") if isinstance(marker, dict) else None
        diff = identity_differences(old, identity) if isinstance(old, dict) and identity else []
        if diff:
            what = "it differs from this run in: " + "; ".join(diff) + "."
            how = (
                " Rerun with the backup's values to resume it, or delete "
                f"{backup} to start afresh (its progress is lost), or use another --out."
            )
            raise ResumeError(f"{backup} holds an unfinished run; {what}{how}")
        raise ResumeError(
            f"{backup} holds an unfinished run with other data, settings, seed or starting "
            "weights (it records no details to say which: written by an older mriscan, or "
            f"damaged); only the same run may resume from it. {fix}"
        )
    weights = backup / "latest.weights.h5"
    if (weights.is_file() or weights.with_name(weights.name + ".bkp").is_file()) and (
        epochs_done(weights) is None
    ):
        # mriscan before the fourteenth session saved in place (Keras' BackupAndRestore): a
        # kill could tear the file so that it still opens, then crash or drop the optimizer
        raise ResumeError(
            f"{backup} cannot be trusted: its weights record no finished epoch (written by an "
            f"older mriscan, whose saves a kill could tear, or damaged). {fix}"
        )
    return True


class ResumeState(NamedTuple):
    """A run's ``run_identity`` record, its ``run_fingerprint`` and whether ``layout.backup``
    holds its state to resume (``resume_state``)."""

    identity: dict[str, Any]
    run_id: str
    resume: bool


def resume_state(
    store: ImageStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    layout: RunLayout,
    init_weights: Path | None,
) -> ResumeState:
    """The backup check of one run, as ``fit_model`` makes it, without training: the run's
    identity over the data it is given (before any ``--implant`` copies are added, which are
    drawn from the seed and the settings), and whether ``layout.backup`` may be resumed by it.
    ``mriscan.training.crossval`` calls it for every fold before the first is trained.

    Raises
    ------
    ResumeError
        If ``layout.backup`` holds another run's state (naming what differs) or a damaged one.
    """
    identity = run_identity(store, train_idx, val_idx, cfg, init_weights)
    run_id = run_fingerprint(identity)
    return ResumeState(identity, run_id, _check_resume(layout, run_id, identity))


class Fitted(NamedTuple):
    """What ``fit_model`` returns: the kept model, its history (metric → list over epochs) and
    what was loaded from the starting weights (None when it started from random weights)."""

    model: Any
    history: dict[str, list[float]]
    start: WeightsReport | None


def fit_model(
    store: ImageStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    layout: RunLayout,
    hw: Hardware,
    *,
    callbacks: list | None = None,
    checkpoint: bool = True,
    init_weights: Path | None = None,
) -> Fitted:
    """Build, compile and fit one model (from ``init_weights`` if given).

    ``init_weights``: a weights file whose layers are loaded by name where their shapes match
    (``mriscan.weights.load_matching_weights``: the phantom pre-training's, or a user's file).
    Returns the kept model (``cfg.fit.select``: the last epoch, or the best validation AUC
    from ``layout.checkpoint`` when ``checkpoint``), its history and the load report. Nothing
    is published to ``layout.model``: the caller does that once the model is calibrated
    (``mriscan.artifacts.publish_model``). A run killed mid-way resumes from ``layout.backup``
    only when rerun with the same data, config and starting weights.

    Raises
    ------
    ResumeError
        If ``layout.backup`` holds another run's state or a damaged one.
    InitWeightsError
        If ``init_weights`` is missing, damaged, or matches no layer (or conflicts in shape).
    TrainingDivergedError
        If the training loss became NaN or infinite.
    """
    keras.utils.set_random_seed(cfg.seed)
    state = resume_state(store, train_idx, val_idx, cfg, layout, init_weights)
    rest = (cfg, layout, hw, callbacks, checkpoint, init_weights, state)
    if not cfg.fit.implant:
        return _fit(store, train_idx, store, val_idx, *rest)
    with (
        scratch_dir("implants") as tmp,
        _with_implants(store, train_idx, cfg, Path(tmp)) as train_store,
    ):
        every = np.arange(len(train_store), dtype=np.int64)
        return _fit(train_store, every, store, val_idx, *rest)


def _fit(
    store: ImageStore,
    train_idx: np.ndarray,
    val_store: ImageStore,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    layout: RunLayout,
    hw: Hardware,
    callbacks: list | None,
    checkpoint: bool,
    init_weights: Path | None,
    state: ResumeState,
) -> Fitted:
    """``fit_model`` once the training data are settled (training and validation stores) and
    the backup checked (``state``: ``resume_state`` of the data before any implants)."""
    task = resolve_task(store.class_names, cfg.task, warn=False)
    k = task.num_classes
    kind = resolve_pipeline(cfg.runtime.pipeline)
    gb = hw.global_batch
    epochs = cfg.fit.epochs
    backup = layout.backup
    identity, run_id, resume = state
    best_path = layout.checkpoint
    history_cb = JsonHistory(layout.live_history, resume, run_id)
    # the backup resumes after the last epoch it records as finished; the input pipeline
    # starts its shuffling at the same epoch
    done = epochs_done(backup / "latest.weights.h5") if resume else None
    first_epoch = min(done or 0, epochs - 1)
    if kind == "tfdata":
        train_data, steps = make_tf_dataset(
            store,
            train_idx,
            batch_size=gb,
            shuffle=True,
            seed=cfg.seed,
            epochs=epochs,
            first_epoch=first_epoch,
            drop_remainder=True,
            label_map=task.label_map,
            num_classes=k,
        )
        val_data, _ = make_tf_dataset(
            val_store, val_idx, batch_size=gb, label_map=task.label_map, num_classes=k
        )
        fit_kw: dict[str, Any] = {"steps_per_epoch": steps, "shuffle": False}  # shuffled there
    else:
        train_data = StoreDataset(
            store,
            train_idx,
            batch_size=gb,
            shuffle=True,
            seed=cfg.seed,
            workers=cfg.runtime.workers,
            drop_remainder=True,
            label_map=task.label_map,
            num_classes=k,
        )
        val_data = StoreDataset(
            val_store,
            val_idx,
            batch_size=gb,
            workers=cfg.runtime.workers,
            label_map=task.label_map,
            num_classes=k,
        )
        steps, fit_kw = len(train_data), {}
    log.info("training on %s", hw.describe(kind))
    with hw.scope():
        model = build_model(store.image_size, cfg.model, num_classes=k, seed=cfg.seed)
        start = load_matching_weights(model, init_weights) if init_weights is not None else None
        compile_model(model, cfg.optimizer, hw, steps, epochs, num_classes=k)
    # the run's own files are made only now that the model builds: a run refused for its
    # settings leaves nothing that could block the next one
    if not resume:
        shutil.rmtree(best_path.parent, ignore_errors=True)  # another run's best-so-far
    best_path.parent.mkdir(parents=True, exist_ok=True)
    backup.mkdir(parents=True, exist_ok=True)
    write_json(layout.run_marker, {"run_id": run_id, "identity": identity})
    monitor_best = None
    if resume and history_cb.epochs:
        aucs = [r.get("val_auc") for r in history_cb.epochs.values()]
        monitor_best = max((a for a in aucs if isinstance(a, float)), default=-math.inf)
        log.info("resuming from %s (best val_auc so far %.4f)", backup, monitor_best)
    cbs: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), history_cb]
    if cfg.fit.patience is not None:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.fit.patience))
    best = checkpoint and cfg.fit.select == "best"
    if best:
        cbs.append(BestCheckpoint(best_path, "val_auc", initial_value_threshold=monitor_best))
    # the backup comes last: it declares an epoch finished only once the epoch's history row
    # and best-so-far model are written (all-or-nothing saves, mriscan.training.backup); a
    # kill in between re-runs that epoch, whose rows are then written again
    cbs.append(AtomicBackupAndRestore(str(backup)))
    cbs += list(callbacks or [])
    train_labels = task.labels(store.labels[train_idx])
    cw = class_weights(train_labels, k) if cfg.optimizer.class_weight else None
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        callbacks=cbs,
        class_weight=cw,
        verbose=_verbosity(cfg.runtime.verbose),
        **fit_kw,
    )
    history = history_cb.as_dict()
    losses = np.asarray(
        [v if isinstance(v, float) else np.nan for v in history.get("loss", [])], np.float64
    )
    if losses.size == 0 or not np.isfinite(losses).all():
        shutil.rmtree(backup, ignore_errors=True)  # nothing worth resuming
        raise TrainingDivergedError(
            f"Training diverged: the loss became {losses[-1] if losses.size else 'undefined'} "
            f"at epoch {losses.size}. No model was written (the previous one, if any, is "
            "untouched). Lower --learning-rate or --batch-size (the learning rate is scaled "
            "with the batch, lr × batch / 32), or check the data for unreadable slices."
        )
    if best and best_path.is_file():
        model = keras.saving.load_model(best_path, safe_mode=True)
    return Fitted(model, history, start)


@dataclass
class Calibrated:
    """A fitted model with its threshold and its predictions on validation and test.

    ``val_prob`` / ``test_prob``: float64 class probabilities of shape (n, K), in the order of
    the split's indices (``test_prob`` has no rows when there is no test part); ``test`` holds
    the metrics of the test part (``binary_metrics`` at ``threshold`` for two classes,
    ``multiclass_metrics`` otherwise; None without a test part). ``threshold`` is None for
    K > 2 (the most probable class is predicted). ``start``: what was loaded from the
    starting weights (None: random initial weights). ``threshold_rule``: how the class is
    decided, in words (``mriscan.metrics.choose_threshold``'s, or ``ARGMAX_RULE``).
    """

    model: Any
    history: dict[str, list[float]]
    threshold: float | None
    val_prob: np.ndarray
    test_prob: np.ndarray
    validation: dict[str, Any]
    test: dict[str, Any] | None
    task: Task
    start: WeightsReport | None = None
    threshold_rule: str = ""


def score(task: Task, y: np.ndarray, prob: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """The metrics of predictions ``prob`` (n, K) against model labels ``y`` (n,)."""
    if task.binary:
        return mx.binary_metrics(y, prob[:, 1], threshold=threshold, class_names=task.class_names)
    return mx.multiclass_metrics(y, prob, task.class_names)


#: training slices predicted for the threshold (``mriscan.metrics.choose_threshold``): enough
#: to place a two-parameter logistic fit, few enough to stay seconds at millions of slices
THRESHOLD_TRAIN_SAMPLE = 4096


def threshold_sample(train_idx: np.ndarray, seed: int) -> np.ndarray:
    """The training positions whose predictions join the validation ones for the threshold:
    all of them up to ``THRESHOLD_TRAIN_SAMPLE``, else a seeded random sample of that size,
    sorted (store reads in order). ndarray of shape (min(n, 4096),), int64."""
    idx = np.asarray(train_idx, np.int64)
    if len(idx) <= THRESHOLD_TRAIN_SAMPLE:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, THRESHOLD_TRAIN_SAMPLE, replace=False))


def fit_and_calibrate(
    store: ImageStore,
    split: dict[str, np.ndarray],
    cfg: TrainConfig,
    layout: RunLayout,
    hw: Hardware,
    *,
    init_weights: Path | None = None,
    callbacks: list | None = None,
) -> Calibrated:
    """Fit on ``split["train"]``, choose the threshold on the validation and training
    predictions (``mriscan.metrics.choose_threshold``; never test), score ``split["test"]``.

    Raises
    ------
    TrainingDivergedError
        If the loss or any validation prediction is not finite (then no threshold exists).
    mriscan.errors.ConfigError
        If a part of the split is empty where it is needed (from the pipeline).
    """
    model, history, start = fit_model(
        store,
        split["train"],
        split["val"],
        cfg,
        layout,
        hw,
        callbacks=callbacks,
        init_weights=init_weights,
    )
    task = resolve_task(store.class_names, cfg.task, warn=False)
    labels = task.labels(store.labels)
    val_prob = predict_store(model, store, split["val"], tta=cfg.fit.tta)
    if not np.isfinite(val_prob).all():
        raise TrainingDivergedError(
            f"The model predicts {int((~np.isfinite(val_prob)).sum())} of {val_prob.size} "
            "validation slices as NaN: training diverged. No model was written. Lower "
            "--learning-rate or --batch-size (the learning rate is scaled with the batch)."
        )
    y_val = labels[split["val"]]
    threshold, rule = None, mx.ARGMAX_RULE
    if task.binary and cfg.fit.threshold_rule == "youden":
        threshold, rule = mx.choose_threshold(y_val, val_prob[:, 1], rule="youden")
    elif task.binary:
        seen = threshold_sample(split["train"], cfg.seed)
        train_prob = predict_store(model, store, seen, tta=cfg.fit.tta)
        threshold, rule = mx.choose_threshold(y_val, val_prob[:, 1], labels[seen], train_prob[:, 1])
    validation = score(task, y_val, val_prob, threshold)
    test_idx = split.get("test", np.empty(0, np.int64))
    test_prob, test = np.empty((0, task.num_classes), np.float64), None
    if len(test_idx):
        test_prob = predict_store(model, store, test_idx, tta=cfg.fit.tta)
        test = score(task, labels[test_idx], test_prob, threshold)
    return Calibrated(
        model, history, threshold, val_prob, test_prob, validation, test, task, start, rule
    )


def start_record(cfg: TrainConfig, start: WeightsReport | None) -> dict[str, Any] | None:
    """What a run started from, for the model card and metrics: None (random weights), or the
    load report with ``source`` = ``"file"`` (``cfg.fit.init_weights``) or ``"phantoms"``."""
    if start is None:
        return None
    return {"source": "file" if cfg.fit.init_weights else "phantoms", **start.to_dict()}


def card_for(
    store: ImageStore,
    cfg: TrainConfig,
    threshold: float | None,
    start: WeightsReport | None = None,
    seen: np.ndarray | None = None,
    rule: str | None = None,
) -> ModelCard:
    """The model card of a model trained on ``store`` with ``cfg`` (threshold from training
    and validation) that started from the weights ``start`` reports (None: random initial
    weights); ``seen``: the positions of its training and validation slices, whose patients
    the card lists (``ModelCard.train_patients``; None: not listed) and whose kinds of input
    file it records (``ModelCard.train_kinds``; None: those of every active slice of the
    store); ``rule``: how the threshold was decided, in words (``Calibrated.threshold_rule``;
    None: the configured rule's)."""
    task = resolve_task(store.class_names, cfg.task, warn=False)
    patients = None
    if seen is not None and store.key_id:
        keys = store.table.strings("group_key")
        found = {p for i in np.asarray(seen).tolist() for p in patient_keys(keys[i])}
        patients = {"key_id": store.key_id, "patients": sorted(found)}
    # the kinds the model saw: a reading setting of another kind (NIfTI for a model trained on
    # JPEGs) cannot differ from its training data's, and is not reported as differing
    used = store.active_indices() if seen is None else np.asarray(seen, np.int64)
    kinds = store.table.strings("kind")
    train_kinds = tuple(k for k in INPUT_KINDS if k in {kinds[i] for i in used.tolist()})
    return ModelCard(
        preprocess=store.config,
        class_names=task.class_names,
        threshold=threshold,
        tta=cfg.fit.tta,
        healthy=None if task.healthy is None else task.class_names[task.healthy],
        threshold_rule=rule or mx.decision_rule(task.binary, cfg.fit.threshold_rule),
        image_size=store.image_size,
        train_config=cfg.to_dict(),
        keras_backend=keras.backend.backend(),
        init_weights=start_record(cfg, start),
        reader=store.reader_settings,
        train_patients=patients,
        train_kinds=train_kinds,
    )
