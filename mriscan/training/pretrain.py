"""Phantom pre-training: learn what a focal mass looks like from drawn ones, cached per recipe.

No pretrained network can be downloaded here, so the model first learns on ``mriscan.synth``
phantoms (T1/T2-like heads with 1–2 focal lesions, or none). They hold no real slice, so one set
of weights serves every fold of a cross-validation; the weights are cached under
``pretrain_cache_dir()`` by ``pretrain_key``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from mriscan.artifacts import RunLayout
from mriscan.config import PRETRAIN_KEY_PARTS, TaskConfig, TrainConfig, override
from mriscan.errors import ConfigError
from mriscan.hardware import Hardware
from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.scan import new_salt
from mriscan.scratch import scratch_dir
from mriscan.store import ImageStore
from mriscan.synth import SynthConfig, synthesize
from mriscan.training.fit import fit_model
from mriscan.weights import read_layer_weights

__all__ = [
    "PRETRAIN_VERSION",
    "pretrain_cache_dir",
    "pretrain_key",
    "pretrain_on_phantoms",
    "starting_weights",
]

log = logging.getLogger(__name__)

# Bump when the phantoms or the pre-training recipe change: it is part of the weights' cache key.
PRETRAIN_VERSION = 2


def pretrain_cache_dir() -> Path:
    """Where pre-trained weights are kept: ``$MRISCAN_CACHE`` or ``~/.cache/mriscan``."""
    root = os.environ.get("MRISCAN_CACHE") or Path.home() / ".cache" / "mriscan"
    return Path(root) / "pretrain"


def pretrain_key(cfg: TrainConfig, preprocess: PreprocessConfig) -> str:
    """Cache key of pre-trained weights: the parts of ``cfg`` that shape them
    (``mriscan.config.PRETRAIN_KEY_PARTS``, whole sub-configs), the preprocessing and
    ``PRETRAIN_VERSION``; 16 hex digits of a SHA-256."""
    full = cfg.to_dict()
    blob = json.dumps(
        {
            "train": {k: full[k] for k in PRETRAIN_KEY_PARTS},
            "preprocess": preprocess.to_dict(),
            "version": PRETRAIN_VERSION,
        },
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
    """Weights (``.weights.h5``) of the model after ``cfg.pretrain.epochs`` epochs on
    ``cfg.pretrain.phantoms`` phantoms preprocessed with ``preprocess``.

    A second call with the same key returns the cached file.

    Raises
    ------
    ConfigError
        If ``cfg.pretrain.phantoms`` is 0 (pre-training off).
    """
    pre = cfg.pretrain
    if pre.phantoms < 1:
        raise ConfigError("pretrain_on_phantoms needs cfg.pretrain.phantoms >= 1.")
    cache = Path(cache_dir) if cache_dir is not None else pretrain_cache_dir()
    path = cache / f"phantoms_{pretrain_key(cfg, preprocess)}.weights.h5"
    if path.is_file():
        log.info("phantom pre-training: reusing %s", path)
        return path
    t0 = time.perf_counter()
    log.info("phantom pre-training: %d phantoms, %d epochs", pre.phantoms, pre.epochs)
    cache.mkdir(parents=True, exist_ok=True)
    with scratch_dir("pretrain") as tmp:
        raw, store_path = Path(tmp) / "raw", Path(tmp) / "phantoms.zarr"
        # a seed stream of its own, so pre-training phantoms never equal `mriscan synth`'s
        synthesize(raw, SynthConfig(count=pre.phantoms, seed=10_000 + cfg.seed))
        # phantoms have no patient to key, and the store is thrown away: a key of this run
        # only, so that pre-training never creates the user's key file (a mistyped
        # $MRISCAN_KEY_FILE was left holding a stray key by `train STORE`)
        ingest(raw, store_path, IngestConfig(preprocess=preprocess), key=new_salt())
        pcfg = override(
            cfg,
            {
                # the phantoms are yes/no whatever the user's classes: a class map, positive
                # or healthy class of the real task names classes they do not have
                "task": TaskConfig(),
                "fit.epochs": pre.epochs,
                "optimizer.warmup_epochs": min(cfg.optimizer.warmup_epochs, 1),
                "fit.patience": None,
                "fit.implant": 0,
            },
        )
        with ImageStore.open(store_path) as store:
            order = np.random.default_rng(cfg.seed).permutation(len(store))
            n_val = max(2, len(store) // 20)  # only to show that the phantoms are being learnt
            model, history, _ = fit_model(
                store,
                order[n_val:],
                order[:n_val],
                pcfg,
                RunLayout(Path(tmp) / "run"),
                hw,
                checkpoint=False,
            )
        part = path.with_name(path.name + f".{os.getpid()}.part.weights.h5")
        model.save_weights(part)
        os.replace(part, path)
    auc = history.get("val_auc", [float("nan")])[-1]
    log.info(
        "phantom pre-training done in %.0f s (phantom val AUC %.3f)", time.perf_counter() - t0, auc
    )
    return path


def starting_weights(cfg: TrainConfig, hw: Hardware, preprocess: PreprocessConfig) -> Path | None:
    """The weights file a run starts from: ``cfg.fit.init_weights`` when given (the phantom
    pre-training is then skipped, and logged as such), else the phantom pre-training's
    (``pretrain_on_phantoms``) when ``cfg.pretrain.phantoms`` > 0, else None (random weights).

    Raises
    ------
    InitWeightsError
        If ``cfg.fit.init_weights`` is missing, damaged or holds no layer with weights
        (checked here, before any training).
    """
    if cfg.fit.init_weights:
        path = Path(cfg.fit.init_weights)
        read_layer_weights(path)  # a missing or damaged file stops the run before it starts
        if cfg.pretrain.phantoms:
            log.info("starting from the weights in %s: phantom pre-training skipped", path)
        return path
    return pretrain_on_phantoms(cfg, hw, preprocess) if cfg.pretrain.phantoms else None
