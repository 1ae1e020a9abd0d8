"""Named accuracy experiments: each name re-runs one row of experiments/ACCURACY.md as measured.

Usage (from the repository root; see experiments/README.md)::

    python experiments/accuracy_experiments.py --dry-run [NAME ...]     # resolved configs, no run
    python experiments/accuracy_experiments.py --list                   # names, rows, caveats
    python experiments/accuracy_experiments.py NAME [NAME ...] [--data DIR] [--out DIR] [--log F]

Every entry is an *era* (the complete settings of one session's defaults, every field of
``CVConfig`` and ``PreprocessConfig`` written out) plus the row's own dotted changes. Nothing
falls back to today's defaults: if a setting is added to ``mriscan.config`` later, resolving
any entry fails until the eras spell it out (with the value the old rows ran with), so a
default that changes can no longer silently change what an old name runs. ``reference`` pins
today's defaults; ``tests/test_experiments.py`` fails when they move away from it.

Keys of ``changes`` and of an era: ``TrainConfig`` dotted settings (``"model.filters"``,
``"fit.epochs"``, ``"seed"``), ``"cv.folds"`` / ``"cv.repeats"`` / ``"cv.n_boot"`` for
``CVConfig``, and ``"preprocess.<field>"`` for the ``PreprocessConfig`` the store is ingested
with (``image_size`` must equal ``preprocess.size``).

A run writes ``OUT/NAME-YYYYmmdd-HHMMSS/`` (``cv/`` as ``mriscan cv`` writes it, and
``experiment.json``: name, row, the full resolved config, the git commit and whether the
checkout was dirty, the headline numbers) and appends the same record as one JSON line to the
log (default ``experiments/ACCURACY.jsonl``, beside the markdown log).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mriscan.config import CVConfig, override
from mriscan.errors import MriscanError
from mriscan.preprocess import PreprocessConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "brain_mri"
DEFAULT_OUT = HERE / "runs"
DEFAULT_LOG = HERE / "ACCURACY.jsonl"

log = logging.getLogger("experiments")


class ExperimentError(MriscanError, ValueError):
    """An experiment name, entry or data set is unusable (the message says which and why)."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def all_keys() -> frozenset[str]:
    """Every setting an era must spell out: CVConfig's own (``cv.*``), TrainConfig's (dotted)
    and PreprocessConfig's (``preprocess.*``), read from the dataclasses themselves."""
    cv = CVConfig().to_dict()
    train = cv.pop("train")
    keys = {f"cv.{k}" for k in cv}
    keys |= set(_flatten(train))
    keys |= {f"preprocess.{k}" for k in PreprocessConfig().to_dict()}
    return frozenset(keys)


def _derive(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(base)
    if unknown:
        raise ExperimentError(f"unknown settings {sorted(unknown)}; known: {sorted(base)}")
    return {**base, **changes}


def _size(n: int) -> dict[str, int]:
    """The model input and the ingested slice side (they must agree)."""
    return {"image_size": n, "preprocess.size": n}


# ---------------------------------------------------------------------------------------------
# Eras: the complete settings of each session's defaults (git commits where they became them).
# ---------------------------------------------------------------------------------------------

# First session, commit 6988345 (rows 3-5): 64² unaligned slices, filters 16-32-64-128,
# batch-norm momentum 0.99 (Keras's), no mirror channel, no pre-training, keep the best
# val-AUC epoch, no TTA, MirroredStrategy over the one CPU fed by a PyDataset.
# TensorFlow CPU, float32; the harness ran Keras silently.
S1: dict[str, Any] = {
    "cv.folds": 5,
    "cv.repeats": 1,
    "cv.n_boot": 1000,
    "seed": 0,
    "image_size": 64,
    "model.filters": (16, 32, 64, 128),
    "model.dropout": 0.3,
    "model.augment": True,
    "model.rotation": 0.05,
    "model.zoom": 0.1,
    "model.translation": 0.0,
    "model.contrast": 0.2,
    "model.gamma": 0.0,
    "model.invert": 0.0,
    "model.curve": 0.0,
    "model.noise": 0.0,
    "model.blur": 0.0,
    "model.mirror": False,
    "model.channels": 1,
    "model.convs_per_block": 1,
    "model.block_dropout": 0.0,
    "model.dense_units": 128,
    "model.batch_norm": True,
    "model.bn_momentum": 0.99,
    "optimizer.learning_rate": 1e-3,
    "optimizer.weight_decay": 1e-4,
    "optimizer.warmup_epochs": 3,
    "optimizer.label_smoothing": 0.05,
    "optimizer.ema": 0.0,
    "optimizer.batch_size": 32,
    "optimizer.class_weight": True,
    "fit.epochs": 60,
    "fit.patience": None,
    "fit.select": "best",
    "fit.implant": 0,
    "fit.tta": False,
    "fit.threshold_rule": "youden",
    "fit.init_weights": None,
    "hardware.precision": "float32",
    "hardware.strategy": "mirrored",
    "runtime.pipeline": "pydataset",
    "runtime.workers": 2,
    "runtime.verbose": "silent",
    "split.val_fraction": 0.15,
    "split.test_fraction": 0.15,
    "pretrain.phantoms": 0,
    "pretrain.epochs": 5,
    # the task settings came in session 8; every row before ran the data's own yes/no classes
    "task.class_map": (),
    "task.positive": None,
    "task.healthy": None,
    "preprocess.size": 64,
    "preprocess.crop": True,
    "preprocess.margin": 0.02,
    "preprocess.threshold": 0.1,
    "preprocess.min_fraction": 0.02,
    "preprocess.aspect": "pad",
    "preprocess.normalization": "zscore",
    "preprocess.align": False,
    # every row so far aligned (when it did) with the brute-force search; "fast" came later
    "preprocess.align_method": "search",
    # no slice was low-passed before the tenth session
    "preprocess.smooth": 0.0,
}
# 2d76d07, the first session's defaults (row 6): 96², keep the last epoch, flip TTA
S1_DEFAULTS = _derive(S1, {**_size(96), "fit.select": "last", "fit.tta": True})
# aa5ae7d, second session (rows 7-9): batch-norm momentum 0.9 (and nearest-border fill, which
# is code, not a setting: every era from here on has it)
S2 = _derive(S1_DEFAULTS, {"model.bn_momentum": 0.9})
# adec20d, third session (rows 10-11): the mirror channel
S3 = _derive(S2, {"model.mirror": True})
# 06fd666, fourth session (rows 13-14): TensorFlow's default strategy on one device, tf.data
# (``auto`` on TensorFlow); rows 13-14 ran before pre-training existed
S4 = _derive(S3, {"hardware.strategy": "auto", "runtime.pipeline": "auto"})
# 06fd666, the fourth session's defaults (rows 15-18): 128², 5 epochs on 3,000 phantoms first
S4_PRETRAIN = _derive(S4, {**_size(128), "pretrain.phantoms": 3000})
# 3a8c607, fifth session (rows 19-22, 24-26): slices (and phantoms) aligned to their midline
S5_ALIGN = _derive(S4_PRETRAIN, {"preprocess.align": True})
# 9898ff0, sixth session (rows 23, 27-28 base): 45 epochs
S6_E45 = _derive(S5_ALIGN, {"fit.epochs": 45})
# d1f7ea6, seventh session (rows 28-32): filters 24-48-96-192
S7_W24 = _derive(S6_E45, {"model.filters": (24, 48, 96, 192)})
# eighth session: the fast midline alignment (issue 20) replaces the brute-force search
S8_FAST_ALIGN = _derive(S7_W24, {"preprocess.align_method": "fast"})
# thirteenth session (rows 60-65): 48² slices, which ranked another collection far better
# (issue 16 target 1: mean AUC 0.970 over three seeds against 0.866 at 128²; 64² 0.964, 32²
# 0.946) and brain_mri itself no worse (CV AUC 0.947 / 0.940 against 0.930 / 0.929)
S13_S48 = _derive(S8_FAST_ALIGN, _size(48))
# fourteenth session (row 66): the decision threshold from class-balanced Platt scaling of the
# training and validation predictions (Youden's J on ~34 validation slices moved 0.14-0.62
# between seeds; re-scored on the log's saved models: CV accuracy +0.015, balanced accuracy on
# another collection +0.017)
S14_PLATT = _derive(S13_S48, {"fit.threshold_rule": "platt"})

# Today's defaults, written out (not read from mriscan.config, so that they cannot drift):
# ``CVConfig()`` with image_size 48 (what None resolves to on ingest) and silent Keras.
# The rows pin float32 (what their CPU ran); today's default is "auto" (float32 on a CPU,
# mixed_float16 on a CUDA GPU). tests/test_experiments.py checks this equals the defaults.
REFERENCE: dict[str, Any] = {
    "cv.folds": 5,
    "cv.repeats": 1,
    "cv.n_boot": 1000,
    "seed": 0,
    "image_size": 48,
    "model.filters": (24, 48, 96, 192),
    "model.dropout": 0.3,
    "model.augment": True,
    "model.rotation": 0.05,
    "model.zoom": 0.1,
    "model.translation": 0.0,
    "model.contrast": 0.2,
    "model.gamma": 0.0,
    "model.invert": 0.0,
    "model.curve": 0.0,
    "model.noise": 0.0,
    "model.blur": 0.0,
    "model.mirror": True,
    "model.channels": 1,
    "model.convs_per_block": 1,
    "model.block_dropout": 0.0,
    "model.dense_units": 128,
    "model.batch_norm": True,
    "model.bn_momentum": 0.9,
    "optimizer.learning_rate": 1e-3,
    "optimizer.weight_decay": 1e-4,
    "optimizer.warmup_epochs": 3,
    "optimizer.label_smoothing": 0.05,
    "optimizer.ema": 0.0,
    "optimizer.batch_size": 32,
    "optimizer.class_weight": True,
    "fit.epochs": 45,
    "fit.patience": None,
    "fit.select": "last",
    "fit.implant": 0,
    "fit.tta": True,
    "fit.threshold_rule": "platt",
    "fit.init_weights": None,
    "hardware.precision": "auto",
    "hardware.strategy": "auto",
    "runtime.pipeline": "auto",
    "runtime.workers": 2,
    "runtime.verbose": "silent",
    "split.val_fraction": 0.15,
    "split.test_fraction": 0.15,
    "pretrain.phantoms": 3000,
    "pretrain.epochs": 5,
    "task.class_map": (),
    "task.positive": None,
    "task.healthy": None,
    "preprocess.size": 48,
    "preprocess.crop": True,
    "preprocess.margin": 0.02,
    "preprocess.threshold": 0.1,
    "preprocess.min_fraction": 0.02,
    "preprocess.aspect": "pad",
    "preprocess.normalization": "zscore",
    "preprocess.align": True,
    "preprocess.align_method": "fast",
    "preprocess.smooth": 0.0,
}

ERAS: dict[str, dict[str, Any]] = {
    "s1": S1,
    "s1_defaults": S1_DEFAULTS,
    "s2": S2,
    "s3": S3,
    "s4": S4,
    "s4_pretrain": S4_PRETRAIN,
    "s5_align": S5_ALIGN,
    "s6_e45": S6_E45,
    "s7_w24": S7_W24,
    "s8_fast_align": S8_FAST_ALIGN,
    "s13_s48": S13_S48,
    "s14_platt": S14_PLATT,
    "reference": REFERENCE,
}

# What a config cannot express: code that the row ran and that is gone or changed since.
CONSTANT_FILL = (
    "ran with rotation/zoom filling a constant -5 (before aa5ae7d); mriscan.model now always "
    "fills from the nearest border pixel, so a re-run differs in the augmentation"
)
THROWAWAY_PRETRAIN = (
    "the row ran from a throw-away script (other phantom seeds, a 200-slice phantom "
    "validation split); this entry runs cross_validate, with the phantoms the real command "
    "drew (for row 15's settings the real command gave 0.785 / 0.880)"
)
NO_ROW_SCREEN = "registered for the fifth session's GPU screen; no run finished, so no row"
NO_ROW_S1 = "registered in the first session; no row records a result"


@dataclass(frozen=True)
class Experiment:
    """One named experiment: an era plus the row's changes.

    ``row``: the row of experiments/ACCURACY.md it reproduces (None: never measured).
    ``caveat``: what a re-run cannot reproduce because the row depended on code, data or
    a script that is gone ("" when the settings are the whole story, as far as known).
    """

    era: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    row: int | None = None
    caveat: str = ""


EXPERIMENTS: dict[str, Experiment] = {
    # today's defaults (row 65's recipe, 48² since the thirteenth session; before it, row 28's
    # at 128²; the rows pinned float32, as their CPU ran it)
    "reference": Experiment("reference", row=66),
    # a few minutes' check that the harness runs end to end (no row)
    "smoke": Experiment(
        "reference", {"fit.epochs": 2, "pretrain.phantoms": 40, "pretrain.epochs": 1}
    ),
    # first session (64², keep the best epoch, no TTA unless said)
    "s64_e60": Experiment("s1", {"fit.patience": 15}, row=3, caveat=CONSTANT_FILL),
    "s64_e60_last": Experiment("s1", {"fit.select": "last"}, row=4, caveat=CONSTANT_FILL),
    "s64_e60_last_tta": Experiment(
        "s1", {"fit.select": "last", "fit.tta": True}, row=5, caveat=CONSTANT_FILL
    ),
    "s96_e60_last_tta": Experiment("s1_defaults", row=6, caveat=CONSTANT_FILL),
    "s64_e60_best_noes": Experiment("s1", caveat=NO_ROW_S1),
    "s96_e60": Experiment("s1", _size(96), caveat=NO_ROW_S1),
    "s128_e60": Experiment("s1", _size(128), caveat=NO_ROW_S1),
    "s64_e60_wide": Experiment("s1", {"model.filters": (32, 64, 128, 256)}, caveat=NO_ROW_S1),
    "s64_e100": Experiment("s1", {"fit.epochs": 100, "fit.patience": 30}, caveat=NO_ROW_S1),
    "s64_e60_lr3": Experiment("s1", {"optimizer.learning_rate": 3e-3}, caveat=NO_ROW_S1),
    "s64_e60_nocw": Experiment("s1", {"optimizer.class_weight": False}, caveat=NO_ROW_S1),
    "s64_e100_last_tta": Experiment(
        "s1", {"fit.epochs": 100, "fit.select": "last", "fit.tta": True}, caveat=NO_ROW_S1
    ),
    "s64_e60_last_tta_wide": Experiment(
        "s1",
        {"fit.select": "last", "fit.tta": True, "model.filters": (32, 64, 128, 256)},
        caveat=NO_ROW_S1,
    ),
    # second session: 96², batch-norm momentum 0.9
    "bn09": Experiment("s2", row=7, caveat=CONSTANT_FILL),
    "fill_nearest": Experiment("s2", row=8),
    "aug_strong": Experiment(
        "s2", {"model.rotation": 0.08, "model.zoom": 0.2, "model.translation": 0.1}, row=9
    ),
    # third session: the mirror channel
    "mirror": Experiment("s3", row=10),
    "mirror_b16": Experiment("s3", {"optimizer.batch_size": 16}, row=11),
    # fourth session: default strategy + tf.data, then 128² and phantom pre-training
    "s96": Experiment("s4", row=13),
    "s128": Experiment("s4", _size(128), row=14),
    "pretrain": Experiment("s4_pretrain", row=15, caveat=THROWAWAY_PRETRAIN),
    "pretrain6k_ft40": Experiment(
        "s4_pretrain",
        {"pretrain.phantoms": 6000, "fit.epochs": 40},
        row=16,
        caveat=THROWAWAY_PRETRAIN,
    ),
    # fifth session, before midline alignment
    "ema": Experiment("s4_pretrain", {"optimizer.ema": 0.99}, row=18),
    "wd1e2": Experiment("s4_pretrain", {"optimizer.weight_decay": 1e-2}, caveat=NO_ROW_SCREEN),
    "drop05": Experiment("s4_pretrain", {"model.dropout": 0.5}, caveat=NO_ROW_SCREEN),
    "ls0": Experiment("s4_pretrain", {"optimizer.label_smoothing": 0.0}, caveat=NO_ROW_SCREEN),
    "lr2e3": Experiment("s4_pretrain", {"optimizer.learning_rate": 2e-3}, caveat=NO_ROW_SCREEN),
    "e40": Experiment("s4_pretrain", {"fit.epochs": 40}, caveat=NO_ROW_SCREEN),
    "e100": Experiment("s4_pretrain", {"fit.epochs": 100}, caveat=NO_ROW_SCREEN),
    "pt1500x10": Experiment(
        "s4_pretrain", {"pretrain.phantoms": 1500, "pretrain.epochs": 10}, caveat=NO_ROW_SCREEN
    ),
    "pt3000x10": Experiment("s4_pretrain", {"pretrain.epochs": 10}, caveat=NO_ROW_SCREEN),
    "wide": Experiment("s4_pretrain", {"model.filters": (32, 64, 128, 256)}, caveat=NO_ROW_SCREEN),
    "s160": Experiment("s4_pretrain", _size(160), caveat=NO_ROW_SCREEN),
    # fifth session, midline alignment (60 epochs)
    "align": Experiment(
        "s5_align",
        row=19,
        caveat=(
            "row 19 aligned a copy of the store with SciPy (the same search) and pre-trained "
            "on unaligned phantoms; with PreprocessConfig.align the phantoms are aligned too "
            "(the real command with these settings gave 0.836 / 0.923)"
        ),
    ),
    "rot02": Experiment(
        "s5_align",
        {"model.rotation": 0.02},
        row=20,
        caveat=(
            "ran on a store whose duplicate signatures were computed on aligned slices "
            "(197 groups, fixed in 5ffe12b): today's store has 201 groups and other folds"
        ),
    ),
    # sixth session: implants, 45 epochs, a second seed, 160², wider filters
    "implant1_e45": Experiment("s5_align", {"fit.implant": 1, "fit.epochs": 45}, row=22),
    "e45": Experiment("s5_align", {"fit.epochs": 45}, row=23),
    "implant2_e35": Experiment("s5_align", {"fit.implant": 2, "fit.epochs": 35}, row=24),
    "seed1": Experiment("s5_align", {"seed": 1}, row=25),
    "seed1_e45": Experiment("s5_align", {"seed": 1, "fit.epochs": 45}, row=26),
    "seed1_implant1_e45": Experiment(
        "s5_align",
        {"seed": 1, "fit.implant": 1, "fit.epochs": 45},
        caveat="registered in the sixth session; no row records a result",
    ),
    "s160_e45": Experiment("s6_e45", _size(160), row=27),
    "w24_e45": Experiment("s6_e45", {"model.filters": (24, 48, 96, 192)}, row=28),
    "seed1_w24_e45": Experiment("s6_e45", {"seed": 1, "model.filters": (24, 48, 96, 192)}, row=29),
    # seventh session: the wider defaults
    "seed2": Experiment("s7_w24", {"seed": 2}, row=30),
    "val25": Experiment("s7_w24", {"split.val_fraction": 0.25}, row=31),
    "seed2_val25": Experiment("s7_w24", {"seed": 2, "split.val_fraction": 0.25}, row=32),
    # ninth session: the recipe re-decided across collections (issue 16). Run with
    # experiments/cross_collection.py (train on one collection, evaluate on another) or as CV.
    "xc_ref": Experiment("s8_fast_align"),
    "xc_noalign": Experiment("s8_fast_align", {"preprocess.align": False}),
    "xc_nomirror": Experiment("s8_fast_align", {"model.mirror": False}),
    "xc_noalign_nomirror": Experiment(
        "s8_fast_align", {"preprocess.align": False, "model.mirror": False}
    ),
    "xc_ref_seed1": Experiment("s8_fast_align", {"seed": 1}),
    "xc_nomirror_seed1": Experiment("s8_fast_align", {"seed": 1, "model.mirror": False}),
    "xc_intensity": Experiment(
        "s8_fast_align",
        {"model.gamma": 0.4, "model.noise": 0.1, "model.blur": 1.0, "model.contrast": 0.4},
    ),
    # issue 16 target 3: the 4-class figshare model at 96², 12 epochs (row 41's settings), with
    # the head's intensities reversed in half of the training slices (contrast randomisation)
    "fig4_s96_e12": Experiment("s8_fast_align", {**_size(96), "fit.epochs": 12}),
    "fig4_s96_e12_invert": Experiment(
        "s8_fast_align", {**_size(96), "fit.epochs": 12, "model.invert": 0.5}
    ),
    # issue 16 target 3, tenth session: a test-time probe showed the 4-class model keys on
    # high-frequency texture (a Gaussian blur of sigma 1 px turns 0.14 -> 0.64 of brain_mri's
    # tumors into tumor calls; sharpening turns figshare's own tumors 0.94 -> 0.22), so the
    # texture is randomised in training: noise on every slice, a random blur up to 1.5 px
    "fig4_s96_e12_texture": Experiment(
        "s8_fast_align", {**_size(96), "fit.epochs": 12, "model.noise": 0.1, "model.blur": 1.5}
    ),
    # the probes also showed the brain_mri model calling blurred slices tumors and noisy ones
    # healthy (on figshare: sharpening 0.66 -> 0.26 of gliomas called tumors, a 1 px blur 0.98):
    # texture is a shortcut in both collections, so it is removed for good before the model
    # sees a slice (a Gaussian low-pass of 1 px in preprocessing, train and test alike)
    "xc_smooth": Experiment("s8_fast_align", {"preprocess.smooth": 1.0}),
    "xc_smooth_seed1": Experiment("s8_fast_align", {"seed": 1, "preprocess.smooth": 1.0}),
    "xc_smooth15": Experiment("s8_fast_align", {"preprocess.smooth": 1.5}),
    "fig4_s96_e12_smooth": Experiment(
        "s8_fast_align", {**_size(96), "fit.epochs": 12, "preprocess.smooth": 1.0}
    ),
    # thirteenth session: 64² slices ranked figshare far better for the brain_mri model (target
    # 1); whether the coarser input also helps the 4-class figshare model on brain_mri (target 3)
    "fig4_s64_e12": Experiment("s8_fast_align", {**_size(64), "fit.epochs": 12}),
    # eleventh session: the defaults not yet re-decided across collections (issue 16: phantom
    # pre-training, resolution, width, epochs, class weights), each on seeds 0 and 1
    **{
        f"xc_{name}{suffix}": Experiment("s8_fast_align", {**changes, **seed})
        for name, changes in (
            ("nopretrain", {"pretrain.phantoms": 0}),
            ("s96", _size(96)),
            ("wide", {"model.filters": (32, 64, 128, 256)}),
            ("e30", {"fit.epochs": 30}),
            ("e60", {"fit.epochs": 60}),
            ("nocw", {"optimizer.class_weight": False}),
        )
        for suffix, seed in (("", {}), ("_seed1", {"seed": 1}))
    },
    # twelfth session: the two changes that each ranked figshare better (96² slices, rows 56-57;
    # the 1 px low-pass, rows 51-54) together, and a third seed for the 96² decision
    **{
        f"xc_{name}{suffix}": Experiment("s8_fast_align", {**changes, **seed})
        for name, changes in (
            ("s96_smooth", {**_size(96), "preprocess.smooth": 1.0}),
            ("s96", _size(96)),
            ("ref", {}),
        )
        for suffix, seed in (("_seed2", {"seed": 2}),)
    },
    # thirteenth session: does the coarse-input trend go on? 96² beat 128² across collections
    # on all three seeds (rows 56, 59: mean AUC 0.903 vs 0.866), so 64² and 80² on seeds 0-2
    **{
        f"xc_{name}{suffix}": Experiment("s8_fast_align", {**changes, **seed})
        # 48² and 32²: where the trend stops (64² was best: mean AUC 0.964, row 60)
        for name, changes in (
            ("s64", _size(64)),
            ("s80", _size(80)),
            ("s48", _size(48)),
            ("s32", _size(32)),
        )
        for suffix, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))
    },
    # fourteenth session (row 66): today's defaults with the Platt threshold, seeds 0-2 (the
    # same models as xc_s48*, which ran with Youden's J; only the threshold differs)
    **{
        f"xc_platt{suffix}": Experiment("s14_platt", seed, row=66)
        for suffix, seed in (("", {}), ("_seed1", {"seed": 1}), ("_seed2", {"seed": 2}))
    },
    # fifteenth session (issue 16 target 2, tumor typing): the 4-class figshare model with more
    # input detail or more depth, each against row 68(b) (today's defaults, same split and seed)
    "fig4_s64": Experiment("s14_platt", _size(64), row=69),
    "fig4_c2": Experiment("s14_platt", {"model.convs_per_block": 2}, row=69),
    "fig4_s64_c2": Experiment("s14_platt", {**_size(64), "model.convs_per_block": 2}),
    "fig4_e70": Experiment(
        "s14_platt",
        {"fit.epochs": 70},
        caveat="registered in the fifteenth session; not run (the CPU went to fig4_c2_e70)",
    ),
    "fig4_c2_e70": Experiment("s14_platt", {"model.convs_per_block": 2, "fit.epochs": 70}, row=69),
    "fig4_c3": Experiment("s14_platt", {"model.convs_per_block": 3}, row=69),
    "fig4_c2_nomirror": Experiment(
        "s14_platt", {"model.convs_per_block": 2, "model.mirror": False}, row=69
    ),
    # the no-mirror arm's lead on one split, checked on a second (seed 1: other split, weights)
    "fig4_c2_seed1": Experiment("s14_platt", {"model.convs_per_block": 2, "seed": 1}, row=69),
    "fig4_c2_nomirror_seed1": Experiment(
        "s14_platt", {"model.convs_per_block": 2, "model.mirror": False, "seed": 1}, row=69
    ),
    "fig4_c2_wide": Experiment(
        "s14_platt",
        {"model.convs_per_block": 2, "model.filters": (32, 64, 128, 256)},
        row=74,
    ),
    # twenty-third session: row 69's best arm (two convs, no mirror channel) with 64² input:
    # one conv at 64² lost to 48² (fig4_s64), but typing may need detail and depth together
    "fig4_s64_c2_nomirror": Experiment(
        "s14_platt", {**_size(64), "model.convs_per_block": 2, "model.mirror": False}, row=75
    ),
    # row 69(a)'s best arm (two convolutions per block, no mirror channel) with one more change
    # each, decided on brain_mri's ~200 slices and tried on figshare's 4,564:
    # - noalign (row 76): figshare mixes axial, coronal and sagittal slices, and row 75's
    #   typing errors (meningioma called pituitary) may come from aligning a "midline" in
    #   sagittal slices, which have none
    # - bdrop (77): spatial dropout after each block (0 stalled training on brain_mri);
    #   thousands of slices may want the regularisation
    # - shift (78): random shifts of up to a tenth of the side: figshare's tumors sit anywhere
    #   in the head, its heads anywhere in the frame
    # - ema (79): a moving average of the weights (Keras ``use_ema``): row 18 found no gain on
    #   brain_mri at 0.99; on figshare's ~100 steps per epoch 0.998 averages about 5 epochs
    # - nopretrain (81): phantom pre-training (rows 15-16) gives a small set a head start; on
    #   thousands it may only pull the filters toward phantom blobs
    **{
        f"fig4_c2_nomirror_{name}": Experiment(
            "s14_platt",
            {"model.convs_per_block": 2, "model.mirror": False, **change},
            row=row,
        )
        for name, change, row in (
            ("noalign", {"preprocess.align": False}, 76),
            ("bdrop", {"model.block_dropout": 0.1}, 77),
            ("shift", {"model.translation": 0.1}, 78),
            ("ema", {"optimizer.ema": 0.998}, 79),
            ("nopretrain", {"pretrain.phantoms": 0}, 81),
        )
    },
    # two convolutions per block ranked figshare's tumor types better (fig4_c2): the same
    # change on brain_mri, across collections (target 1) and in its own CV (target 4)
    **{
        f"xc_c2{suffix}": Experiment("s14_platt", {"model.convs_per_block": 2, **seed}, row=row)
        for suffix, seed, row in (
            ("", {}, 69),
            ("_seed1", {"seed": 1}, 69),
            ("_seed2", {"seed": 2}, None),
        )
    },
    # sixteenth session (issue 16 target 2, "the three tumor classes alone"): a model of the
    # three figshare tumor types only (notumor, i.e. Br35H, left out by the class map: no source
    # confound), two convolutions per block without the mirror channel (row 69's best arm)
    "fig3_c2_nomirror": Experiment(
        "s14_platt",
        {
            "model.convs_per_block": 2,
            "model.mirror": False,
            "task.class_map": tuple((t, (t,)) for t in ("glioma", "meningioma", "pituitary")),
        },
        row=71,
    ),
    # twenty-first session (issue 16 targets 1 and 3): today's defaults with the foreground's
    # histogram equalised when feeding the model (`preprocess.normalization = "rank"`), so that
    # a collection's grey curve (gain, offset, gamma, exporter) cannot be a shortcut; the same
    # names serve both directions (cross_collection.py --train/--eval)
    **{
        f"rank{suffix}": Experiment(
            "s14_platt", {"preprocess.normalization": "rank", **seed}, row=row
        )
        for suffix, seed, row in (("", {}, 72), ("_seed1", {"seed": 1}, None))
    },
    # rank made both directions worse (row 72): the shortcut is not a monotone grey curve.
    # Random non-monotone curves of the head's intensities (80% of training slices), so that
    # no sequence's tissue order (T1 against T2/FLAIR) can identify a class
    **{
        f"curve{suffix}": Experiment("s14_platt", {"model.curve": 0.8, **seed}, row=row)
        for suffix, seed, row in (("", {}, 73), ("_seed1", {"seed": 1}, None))
    },
    "xc_s96_smooth": Experiment("s8_fast_align", {**_size(96), "preprocess.smooth": 1.0}),
    "xc_s96_smooth_seed1": Experiment(
        "s8_fast_align", {**_size(96), "preprocess.smooth": 1.0, "seed": 1}
    ),
    "xc_nomirror_intensity": Experiment(
        "s8_fast_align",
        {
            "model.mirror": False,
            "model.gamma": 0.4,
            "model.noise": 0.1,
            "model.blur": 1.0,
            "model.contrast": 0.4,
        },
    ),
}

# Names that were registered once and cannot reproduce anything now: the reason instead.
RETIRED: dict[str, str] = {
    "default": (
        "meant 'whatever the defaults are today', so its runs drifted with the code; run "
        "'reference' (today's defaults, pinned) or the name of the row you want"
    ),
    "phantoms_v2": (
        "row 21's harder phantoms were a working-copy change to mriscan/synth.py that was not "
        "kept; with today's phantoms this would be 'align' again"
    ),
}


@dataclass(frozen=True)
class Resolved:
    """An entry's complete settings: the CV config and the preprocessing of its store."""

    name: str
    experiment: Experiment
    cv: CVConfig
    preprocess: PreprocessConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON form: name, row, era, changes, caveat, config (CVConfig.to_dict), preprocess."""
        return {
            "name": self.name,
            "row": self.experiment.row,
            "era": self.experiment.era,
            "changes": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.experiment.changes.items()
            },
            "caveat": self.experiment.caveat,
            "config": self.cv.to_dict(),
            "preprocess": self.preprocess.to_dict(),
        }


def resolve(name: str) -> Resolved:
    """Build the complete, validated settings of the experiment ``name``.

    Raises
    ------
    ExperimentError
        If the name is unknown or retired, the era does not spell out every setting of
        today's ``CVConfig`` / ``PreprocessConfig``, a change names no setting, or
        ``image_size`` differs from ``preprocess.size``.
    mriscan.errors.ConfigError
        If a value is invalid.
    """
    if name in RETIRED:
        raise ExperimentError(f"experiment {name!r} is retired: {RETIRED[name]}.")
    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}."
        )
    exp = EXPERIMENTS[name]
    if exp.era not in ERAS:
        raise ExperimentError(f"{name}: unknown era {exp.era!r}; known: {sorted(ERAS)}.")
    era = ERAS[exp.era]
    keys = all_keys()
    missing, extra = keys - set(era), set(era) - keys
    if missing or extra:
        raise ExperimentError(
            f"era {exp.era!r} must spell out every setting: missing {sorted(missing)}, "
            f"unknown {sorted(extra)}. Add the value the era's rows ran with (a new setting "
            "that did not exist then: the value that reproduces the old behaviour)."
        )
    flat = _derive(era, exp.changes)
    if flat["image_size"] != flat["preprocess.size"]:
        raise ExperimentError(
            f"{name}: image_size {flat['image_size']} differs from preprocess.size "
            f"{flat['preprocess.size']}; change both (use _size(n))."
        )
    cv_keys = {k: v for k, v in flat.items() if k.startswith("cv.")}
    pre = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("preprocess.")}
    train = {f"train.{k}": v for k, v in flat.items() if not k.startswith(("cv.", "preprocess."))}
    cv = override(CVConfig(), {**{k[3:]: v for k, v in cv_keys.items()}, **train})
    return Resolved(name, exp, cv, PreprocessConfig(**pre))


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": <git rev-parse HEAD>, "dirty": bool}`` of ``repo`` (tracked files only).

    Raises
    ------
    ExperimentError
        If ``repo`` is not a git checkout or git is missing: a result without its commit
        could not be reproduced, so the run does not start.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ExperimentError(
            f"cannot read the git commit of {repo} ({exc}); run from a git checkout."
        ) from exc
    return {"commit": commit, "dirty": bool(status.strip())}


def store_for(data: Path, preprocess: PreprocessConfig, stores: Path) -> Path:
    """A store of ``data`` preprocessed exactly with ``preprocess``.

    ``data`` is a store (used if its preprocessing equals ``preprocess``) or a folder of class
    folders (ingested once into ``stores/<size>-<hash>.zarr`` and reused).

    Raises
    ------
    ExperimentError
        If ``data`` is a store with other preprocessing, or does not exist.
    """
    import hashlib

    from mriscan.ingest import IngestConfig, ingest
    from mriscan.sources import is_store
    from mriscan.store import ImageStore

    if not data.exists():
        raise ExperimentError(f"{data} does not exist; pass --data (class folders or a store).")
    if is_store(data):
        have = ImageStore.open(data).config
        if have != preprocess:
            raise ExperimentError(
                f"{data} was ingested with {have.to_dict()}, this experiment needs "
                f"{preprocess.to_dict()}; pass the raw class folders as --data instead."
            )
        return data
    blob = json.dumps({"data": str(data.resolve()), **preprocess.to_dict()}, sort_keys=True)
    target = stores / f"{preprocess.size}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.zarr"
    if not (target / "index.json").is_file():
        log.info("ingesting %s into %s", data, target)
        ingest(data, target, IngestConfig(preprocess=preprocess))
    return target


def _new_folder(root: Path, stem: str) -> Path:
    """A folder that did not exist (``stem``, else ``stem-2``, ...): a run never resumes or
    mixes with another run's fold folders."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ExperimentError(f"no free run folder for {stem} under {root}.")


def run(res: Resolved, data: Path, out_root: Path, log_path: Path, stores: Path) -> dict[str, Any]:
    """Cross-validate one resolved experiment; write ``experiment.json``; append to the log.

    Returns the record written (see the module docstring).
    """
    import keras

    from mriscan.training.crossval import cross_validate

    git = git_state()
    if git["dirty"]:
        log.warning("the checkout has uncommitted changes: the record says dirty=true")
    if res.experiment.caveat:
        log.warning("%s: %s", res.name, res.experiment.caveat)
    store = store_for(data, res.preprocess, stores)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = _new_folder(out_root, f"{res.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    s = cross_validate(store, res.cv, out=out)
    record = {
        **res.to_dict(),
        **git,
        "started": started,
        "minutes": (time.perf_counter() - t0) / 60,
        "data": str(data),
        "store": str(store),
        "out": str(out),
        # the summary's own headline: the binary metrics, or the K-class ones (a 4-class CV
        # has no "roc_auc"; this line once assumed it and lost a finished run's record)
        **{k: {m: s[k][m] for m in ("mean", "std", "ci95", "per_fold")} for k in s["headline"]},
        "pooled_auc": s["pooled"].get("roc_auc", s["pooled"].get("macro_roc_auc")),
        **({} if "roc_auc" in s["pooled"] else {"pooled": s["pooled"]}),
        "backend": keras.backend.backend(),
        "precision": keras.mixed_precision.dtype_policy().name,
        "hardware": s["hardware"],
    }
    (out / "experiment.json").write_text(json.dumps(record, indent=2))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Re-run rows of experiments/ACCURACY.md by name (5-fold duplicate-aware CV)."
    )
    p.add_argument("names", nargs="*", help="experiment names (all with --dry-run/--list)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class folders or a store")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where run folders go")
    p.add_argument("--log", type=Path, default=DEFAULT_LOG, help="JSONL log to append to")
    p.add_argument(
        "--stores", type=Path, default=None, help="where ingested stores go [OUT/stores]"
    )
    p.add_argument("--dry-run", action="store_true", help="print resolved configs, run nothing")
    p.add_argument("--list", action="store_true", help="print names, rows and caveats")
    p.add_argument(
        "--ingest-only", action="store_true", help="ingest the stores the names need, then stop"
    )
    return p


def summary_line(rec: Mapping[str, Any]) -> str:
    """One line of a run's record: each headline metric it holds as mean ± std (a K-class
    record has macro-F1 and macro ROC AUC where a binary one has ROC AUC), and its minutes."""
    names = {
        "accuracy": "accuracy",
        "roc_auc": "ROC AUC",
        "macro_f1": "macro-F1",
        "macro_roc_auc": "macro ROC AUC",
    }
    parts = [
        f"{label} {rec[k]['mean']:.3f} ± {rec[k]['std']:.3f}"
        for k, label in names.items()
        if isinstance(rec.get(k), Mapping)
    ]
    return "  " + ", ".join([*parts, f"{rec['minutes']:.1f} min"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = args.names or (list(EXPERIMENTS) if args.dry_run or args.list else [])
    if not names:
        _parser().error("name at least one experiment (or use --dry-run / --list)")
    try:
        resolved = [resolve(n) for n in names]  # every name checked before anything runs
        if args.list:
            for r in resolved:
                row = "-" if r.experiment.row is None else str(r.experiment.row)
                print(f"{r.name:24} row {row:>3}  era {r.experiment.era:12} {r.experiment.caveat}")
            return 0
        if args.dry_run:
            for r in resolved:
                print(json.dumps(r.to_dict(), indent=1))
            return 0
        stores = args.stores or args.out / "stores"
        if args.ingest_only:
            for r in resolved:
                print(store_for(args.data, r.preprocess, stores))
            return 0
        for r in resolved:
            rec = run(r, args.data, args.out, args.log, stores)
            print(json.dumps({k: rec[k] for k in ("name", "row", "commit", "dirty", "out")}))
            print(summary_line(rec), flush=True)
    except MriscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
