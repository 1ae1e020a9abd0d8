"""Training: store → group-aware split → pipeline → CNN under a strategy → artifacts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mriscan import metrics as mx
from mriscan.errors import ConfigError
from mriscan.hardware import PRECISIONS, STRATEGIES, Hardware, setup_hardware
from mriscan.ingest import IngestConfig, ingest
from mriscan.model import build_model, save_model_info
from mriscan.pipeline import StoreDataset, make_tf_dataset, resolve_pipeline
from mriscan.predict import predict_batch
from mriscan.preprocess import PreprocessConfig
from mriscan.splits import split_indices
from mriscan.store import ImageStore
from mriscan.synth import SynthConfig, implant_lesions, synthesize

__all__ = ["TrainConfig", "TrainResult", "open_or_ingest", "pretrain_on_phantoms", "train"]

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("data/processed/images.zarr")
# Bump when the phantoms or the pre-training recipe change: it is part of the weights' cache key.
PRETRAIN_VERSION = 1
# TrainConfig fields that do not change pre-trained weights (left out of their cache key)
_NOT_PRETRAIN = (
    "epochs", "select", "patience", "tta", "pipeline", "workers", "verbose",
    "val_fraction", "test_fraction", "implant",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated at construction).

    The learning rate is for a global batch of 32 and is scaled linearly with the global
    batch (``lr × global_batch / 32``), after a linear warm-up, with cosine decay to zero.
    ``select`` keeps the epoch with the best validation AUC (``best``) or the final one
    (``last``); ``patience`` (epochs without val-loss improvement) enables early stopping;
    ``tta`` averages each prediction with that of the mirrored slice (stored with the model).
    ``rotation`` (fraction of a turn), ``zoom`` and ``translation`` (fractions of the side) set
    the strength of the training-time augmentation. ``mirror`` adds |slice − mirrored slice|
    as a second channel inside the model (``build_model(mirror=...)``). ``strategy`` is
    ``setup_hardware``'s: ``auto`` mirrors over two or more devices, ``mirrored`` always.
    ``ema`` > 0 keeps an exponential moving average of the weights with that momentum and
    ends training with it (0 = off). ``pretrain`` phantoms (``mriscan.synth``; 0 = off) are
    generated and learnt for ``pretrain_epochs`` first, and training starts from those weights
    (``pretrain_on_phantoms``). ``implant`` > 0 adds that many copies of every healthy
    training slice with synthetic lesions drawn in (``mriscan.synth.implant_lesions``) to
    the training data as tumor examples (validation and test data stay real).
    """

    epochs: int = 45
    batch_size: int = 32
    image_size: int = 128
    precision: str = "auto"
    strategy: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    label_smoothing: float = 0.05
    ema: float = 0.0
    dropout: float = 0.3
    filters: tuple[int, int, int, int] = (24, 48, 96, 192)
    augment: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.0
    mirror: bool = True
    class_weight: bool = True
    pretrain: int = 3000
    pretrain_epochs: int = 5
    implant: int = 0
    patience: int | None = None
    select: str = "last"
    tta: bool = True
    pipeline: str = "auto"
    workers: int = 2
    verbose: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size", "workers", "pretrain_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {PRECISIONS}. Received: precision={self.precision!r}."
            )
        if (
            not isinstance(self.pretrain, int)
            or isinstance(self.pretrain, bool)
            or self.pretrain < 0
        ):
            raise ConfigError(
                f"pretrain must be 0 (off) or a number of phantoms. Received: {self.pretrain!r}."
            )
        if not isinstance(self.implant, int) or isinstance(self.implant, bool) or self.implant < 0:
            raise ConfigError(
                f"implant must be 0 (off) or a number of copies. Received: {self.implant!r}."
            )
        if 0 < self.pretrain < 20:
            raise ConfigError(f"pretrain needs at least 20 phantoms. Received: {self.pretrain}.")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be one of {STRATEGIES}. Received: strategy={self.strategy!r}."
            )
        if not (
            0 <= self.val_fraction < 1
            and 0 <= self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ConfigError(
                "val_fraction and test_fraction must be in [0, 1) with a sum "
                f"below 1. Received: {self.val_fraction}, {self.test_fraction}."
            )
        for name in ("rotation", "zoom", "translation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"{name} must be in [0, 1). Received: {name}={getattr(self, name)!r}."
                )
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1) (0 = off). Received: ema={self.ema!r}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0. Received: {self.learning_rate}.")
        if self.warmup_epochs < 0 or (self.patience is not None and self.patience < 1):
            raise ConfigError("warmup_epochs must be >= 0 and patience >= 1 (or None).")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select must be 'best' or 'last'. Received: {self.select!r}.")
        if self.verbose not in ("auto", "bar", "line", "silent"):
            raise ConfigError(f"verbose must be auto|bar|line|silent. Received: {self.verbose!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = dataclasses.asdict(self)
        d["filters"] = list(self.filters)
        return d


@dataclass
class TrainResult:
    """Paths and numbers of a finished run."""

    out: Path
    model_path: Path
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    hardware: Hardware
    split: dict[str, np.ndarray]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def open_or_ingest(
    data: str | os.PathLike[str], *, store_path: str | os.PathLike[str] | None, image_size: int
) -> ImageStore:
    """Open ``data`` if it is a store; otherwise ingest the class folders into ``store_path``."""
    path = Path(data)
    if (path / "index.json").is_file() or str(data).startswith("memory://"):
        return ImageStore.open(data)
    target = Path(store_path) if store_path is not None else DEFAULT_STORE
    cfg = IngestConfig(preprocess=PreprocessConfig(size=image_size))
    report = ingest(path, target, cfg)
    log.info("ingested %s: %d new, %d in store %s", path, report.n_added, report.total, target)
    return ImageStore.open(target)


class _JsonHistory(keras.callbacks.Callback):
    """Writes history.json after every epoch; on a resumed run it keeps the earlier epochs."""

    def __init__(self, path: Path, resume: bool) -> None:
        super().__init__()
        self.path = path
        self.epochs: dict[int, dict[str, float]] = {}
        if resume and path.is_file():
            for rec in json.loads(path.read_text()).get("epochs", []):
                self.epochs[int(rec["epoch"])] = rec

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rec = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        rec.pop("learning_rate", None)
        self.epochs[epoch] = rec
        ordered = [self.epochs[k] for k in sorted(self.epochs)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epochs": ordered}, indent=1))
        os.replace(tmp, self.path)

    def as_dict(self) -> dict[str, list[float]]:
        """History as metric name → list over epochs."""
        out: dict[str, list[float]] = {}
        for k in sorted(self.epochs):
            for name, v in self.epochs[k].items():
                if name != "epoch":
                    out.setdefault(name, []).append(v)
        return out


def _class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 · count) so the minority class counts as much."""
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    return {k: float(labels.size / (2 * max(c, 1))) for k, c in enumerate(counts)}


def _verbosity(v: str) -> int:
    if v == "auto":
        return 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "line": 2, "silent": 0}[v]


def compile_model(model: keras.Model, cfg: TrainConfig, hw: Hardware, steps_per_epoch: int) -> None:
    """AdamW with warm-up + cosine decay (lr scaled by global batch / 32), BCE, acc, AUC."""
    lr = cfg.learning_rate * hw.global_batch / 32
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10 if warm else lr,
        decay_steps=max(total - warm, 1),
        warmup_target=lr if warm else None,
        warmup_steps=warm,
        alpha=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=cfg.weight_decay,
            use_ema=cfg.ema > 0,
            ema_momentum=cfg.ema or 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def predict_indices(
    model: keras.Model,
    store: ImageStore,
    indices: np.ndarray,
    batch_size: int = 64,
    *,
    tta: bool = False,
) -> np.ndarray:
    """Probabilities of class 1 for store samples, in the order given."""
    ds = StoreDataset(store, indices, batch_size=batch_size, shuffle=False)
    return np.concatenate(
        [predict_batch(model, ds[i][0], batch_size, tta=tta) for i in range(len(ds))]
    )


def _with_implants(
    store: ImageStore, train_idx: np.ndarray, cfg: TrainConfig, folder: Path
) -> ImageStore:
    """A store in ``folder`` with the training slices plus ``cfg.implant`` lesion-implanted
    copies of each healthy one (labelled as tumors)."""
    images, labels = store.read_batch(np.sort(train_idx))
    implants = implant_lesions(images[labels == 0], cfg.implant, cfg.seed)
    out = ImageStore.create(folder / "implants.zarr", store.image_size, store.config)
    out.set_class_names(list(store.class_names))
    out.append(
        np.concatenate([images, implants]),
        np.concatenate([labels, np.ones(len(implants), np.uint8)]),
    )
    out.commit()
    log.info("training on %d slices + %d with implanted lesions", len(images), len(implants))
    return out


def fit_model(
    store: ImageStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    out: Path,
    hw: Hardware,
    *,
    callbacks: list | None = None,
    checkpoint: bool = True,
    init_weights: Path | None = None,
) -> tuple[keras.Model, dict[str, list[float]], Path]:
    """Build, compile and fit one model (from ``init_weights`` if given); return the selected
    model, its history and path."""
    (out / "models").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    if not cfg.implant:
        return _fit(
            store, train_idx, store, val_idx, cfg, out, hw, callbacks, checkpoint, init_weights
        )
    with (
        tempfile.TemporaryDirectory(prefix="mriscan_implants_") as tmp,
        _with_implants(store, train_idx, cfg, Path(tmp)) as train_store,
    ):
        every = np.arange(len(train_store), dtype=np.int64)
        return _fit(
            train_store, every, store, val_idx, cfg, out, hw, callbacks, checkpoint, init_weights
        )


def _fit(
    store: ImageStore,
    train_idx: np.ndarray,
    val_store: ImageStore,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    out: Path,
    hw: Hardware,
    callbacks: list | None,
    checkpoint: bool,
    init_weights: Path | None,
) -> tuple[keras.Model, dict[str, list[float]], Path]:
    """``fit_model`` once the training data are settled (training and validation stores)."""
    model_path = out / "models" / "best_model.keras"
    kind = resolve_pipeline(cfg.pipeline)
    gb = hw.global_batch
    labels = store.labels
    backup = out / "backup"
    resume = backup.is_dir()
    history_cb = _JsonHistory(out / "history.json", resume)
    # BackupAndRestore resumes after the last finished epoch, which history.json also records
    first_epoch = min(max(history_cb.epochs, default=-1) + 1, cfg.epochs - 1)
    if kind == "tfdata":
        train_data, steps = make_tf_dataset(
            store,
            train_idx,
            batch_size=gb,
            shuffle=True,
            seed=cfg.seed,
            epochs=cfg.epochs,
            first_epoch=first_epoch,
            drop_remainder=True,
        )
        val_data, _ = make_tf_dataset(val_store, val_idx, batch_size=gb)
        fit_kw = {"steps_per_epoch": steps, "shuffle": False}  # shuffled in the dataset
    else:
        train_data = StoreDataset(
            store,
            train_idx,
            batch_size=gb,
            shuffle=True,
            seed=cfg.seed,
            workers=cfg.workers,
            drop_remainder=True,
        )
        val_data = StoreDataset(val_store, val_idx, batch_size=gb, workers=cfg.workers)
        steps, fit_kw = len(train_data), {}
    log.info("training on %s", hw.describe(kind))
    with hw.scope():
        model = build_model(
            store.image_size,
            filters=cfg.filters,
            dropout=cfg.dropout,
            augment=cfg.augment,
            rotation=cfg.rotation,
            zoom=cfg.zoom,
            translation=cfg.translation,
            mirror=cfg.mirror,
            seed=cfg.seed,
        )
        if init_weights is not None:
            model.load_weights(init_weights)
        compile_model(model, cfg, hw, steps)
    monitor_best = None
    if resume and history_cb.epochs:
        monitor_best = max(r.get("val_auc", -math.inf) for r in history_cb.epochs.values())
        log.info("resuming from %s (best val_auc so far %.4f)", backup, monitor_best)
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.TerminateOnNaN(),
        history_cb,
    ]
    if cfg.patience is not None:
        cbs.insert(2, keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience))
    if checkpoint and cfg.select == "best":
        cbs.insert(
            1,
            keras.callbacks.ModelCheckpoint(
                str(model_path),
                monitor="val_auc",
                mode="max",
                save_best_only=True,
                initial_value_threshold=monitor_best,
            ),
        )
    cbs += list(callbacks or [])
    cw = _class_weights(labels[train_idx]) if cfg.class_weight else None
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.epochs,
        callbacks=cbs,
        class_weight=cw,
        verbose=_verbosity(cfg.verbose),
        **fit_kw,
    )
    if checkpoint and cfg.select == "best" and model_path.is_file():
        model = keras.saving.load_model(model_path, safe_mode=True)
    elif checkpoint:
        model.save(model_path)
    return model, history_cb.as_dict(), model_path


def pretrain_cache_dir() -> Path:
    """Where pre-trained weights are kept: ``$MRISCAN_CACHE`` or ``~/.cache/mriscan``."""
    root = os.environ.get("MRISCAN_CACHE") or Path.home() / ".cache" / "mriscan"
    return Path(root) / "pretrain"


def _pretrain_key(cfg: TrainConfig, preprocess: PreprocessConfig) -> str:
    """Cache key of pre-trained weights: everything that shapes them."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_PRETRAIN}
    blob = json.dumps(
        {"train": d, "preprocess": preprocess.to_dict(), "version": PRETRAIN_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain_on_phantoms(
    cfg: TrainConfig,
    hw: Hardware,
    preprocess: PreprocessConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Weights of the model after ``cfg.pretrain_epochs`` on ``cfg.pretrain`` phantoms.

    The phantoms (1–2 focal lesions, or none, in T1/T2-like heads) hold no real data, so one
    set of weights serves every fold of a cross-validation. They are cached under
    ``cache_dir`` (default ``pretrain_cache_dir()``) by a key of the architecture, the
    optimisation settings and ``preprocess``; a second run with the same settings reuses them.
    """
    if cfg.pretrain < 1:
        raise ConfigError("pretrain_on_phantoms needs cfg.pretrain >= 1 phantoms.")
    cache = Path(cache_dir) if cache_dir is not None else pretrain_cache_dir()
    path = cache / f"phantoms_{_pretrain_key(cfg, preprocess)}.weights.h5"
    if path.is_file():
        log.info("phantom pre-training: reusing %s", path)
        return path
    t0 = time.perf_counter()
    log.info("phantom pre-training: %d phantoms, %d epochs", cfg.pretrain, cfg.pretrain_epochs)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mriscan_pretrain_") as tmp:
        raw, store_path = Path(tmp) / "raw", Path(tmp) / "phantoms.zarr"
        # a seed stream of its own, so pre-training phantoms never equal `mriscan synth`'s
        synthesize(raw, SynthConfig(count=cfg.pretrain, seed=10_000 + cfg.seed))
        ingest(raw, store_path, IngestConfig(preprocess=preprocess))
        pcfg = dataclasses.replace(
            cfg,
            epochs=cfg.pretrain_epochs,
            warmup_epochs=min(cfg.warmup_epochs, 1),
            patience=None,
            implant=0,
        )
        with ImageStore.open(store_path) as store:
            order = np.random.default_rng(cfg.seed).permutation(len(store))
            n_val = max(2, len(store) // 20)  # only to show that the phantoms are being learnt
            model, history, _ = fit_model(
                store, order[n_val:], order[:n_val], pcfg, Path(tmp) / "run", hw, checkpoint=False
            )
        part = path.with_name(path.name + f".{os.getpid()}.part.weights.h5")
        model.save_weights(part)
        os.replace(part, path)
    auc = history.get("val_auc", [float("nan")])[-1]
    log.info(
        "phantom pre-training done in %.0f s (phantom val AUC %.3f)", time.perf_counter() - t0, auc
    )
    return path


def train(
    data: str | os.PathLike[str] | ImageStore,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike[str] = "artifacts",
    store_path: str | os.PathLike[str] | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train the classifier and write every artifact.

    Parameters
    ----------
    data : path, URL or ImageStore
        A class-folder directory (ingested into ``store_path`` first) or a store.
    config : TrainConfig, optional
    out : path
        Artifacts folder: ``models/best_model.keras`` (+ ``.json`` sidecar), ``history.json``,
        ``metrics.json``, ``split.json``, ``plots/training_history.png``,
        ``plots/confusion_matrix.png``, ``plots/roc.png``.
    store_path : path, optional
        Where raw folders are ingested (default ``data/processed/images.zarr``).
    callbacks : list of keras.callbacks.Callback, optional
        Run after mriscan's own callbacks.
    """
    from mriscan import plots

    cfg = config if config is not None else TrainConfig()
    t0 = time.perf_counter()
    out = Path(out)
    store = (
        data
        if isinstance(data, ImageStore)
        else open_or_ingest(data, store_path=store_path, image_size=cfg.image_size)
    )
    if len(store.class_names) != 2:
        raise ConfigError(
            f"Training needs exactly two classes; the store has {list(store.class_names)}."
        )
    split = split_indices(
        store.labels,
        store.groups,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )
    if min(len(split["train"]), len(split["val"])) == 0:
        raise ConfigError(
            f"The split left an empty train or validation set "
            f"({ {k: len(v) for k, v in split.items()} }); add data or change "
            "--val-fraction/--test-fraction."
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_split(out / "split.json", store, split, cfg)
    hw = setup_hardware(
        precision=cfg.precision, per_replica_batch=cfg.batch_size, strategy=cfg.strategy
    )
    init = pretrain_on_phantoms(cfg, hw, store.config) if cfg.pretrain else None
    model, history, model_path = fit_model(
        store, split["train"], split["val"], cfg, out, hw, callbacks=callbacks, init_weights=init
    )
    labels = store.labels.astype(np.int64)
    val_prob = predict_indices(model, store, split["val"], tta=cfg.tta)
    threshold = mx.youden_threshold(labels[split["val"]], val_prob)
    info = {
        "preprocess": store.config.to_dict(),
        "class_names": list(store.class_names),
        "threshold": threshold,
        "tta": cfg.tta,
        "threshold_rule": "Youden's J on the validation split",
        "train_config": cfg.to_dict(),
        "image_size": store.image_size,
        "keras_backend": keras.backend.backend(),
    }
    save_model_info(model_path, info)
    result_metrics: dict[str, Any] = {
        "protocol": _protocol(cfg, split),
        "hardware": hw.describe(resolve_pipeline(cfg.pipeline)),
        "validation": mx.binary_metrics(
            labels[split["val"]], val_prob, threshold=threshold, class_names=store.class_names
        ),
    }
    plots.save_history(history, out / "plots" / "training_history.png")
    if len(split["test"]):
        test_prob = predict_indices(model, store, split["test"], tta=cfg.tta)
        test = mx.binary_metrics(
            labels[split["test"]], test_prob, threshold=threshold, class_names=store.class_names
        )
        result_metrics["test"] = test
        plots.save_confusion_matrix(
            np.array(test["confusion_matrix"]),
            store.class_names,
            out / "plots" / "confusion_matrix.png",
            title=f"Test split (n={test['n']})",
        )
        fpr, tpr, _ = mx.roc_curve(labels[split["test"]], test_prob)
        plots.save_roc(fpr, tpr, test["roc_auc"], out / "plots" / "roc.png")
    result_metrics["seconds"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(result_metrics, indent=2))
    if (out / "backup").is_dir():  # a finished run needs no resume point
        shutil.rmtree(out / "backup", ignore_errors=True)
    return TrainResult(
        out, model_path, result_metrics, history, hw, split, time.perf_counter() - t0
    )


def _protocol(cfg: TrainConfig, split: dict[str, np.ndarray]) -> dict[str, Any]:
    """How the reported numbers were obtained."""
    return {
        "split": "stratified, duplicate-group-aware train/val/test (mriscan.splits)",
        "sizes": {k: len(v) for k, v in split.items()},
        "seed": cfg.seed,
        "threshold": "chosen on validation only (Youden's J)",
        "pretrain": {"phantoms": cfg.pretrain, "epochs": cfg.pretrain_epochs}
        if cfg.pretrain
        else None,
    }


def _write_split(
    path: Path, store: ImageStore, split: dict[str, np.ndarray], cfg: TrainConfig
) -> None:
    """Record the split (indices and source files) so it can be reproduced."""
    recs = store.index.records
    data = {
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "store": store.location,
        **{
            k: {"indices": v.tolist(), "sources": [recs[i].source for i in v]}
            for k, v in split.items()
        },
    }
    path.write_text(json.dumps(data, indent=1))
