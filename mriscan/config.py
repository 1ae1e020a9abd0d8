"""Every training and cross-validation setting, its one default, and its validation.

This module sits at the bottom of the import graph (it imports nothing of mriscan but errors and
nothing of Keras), so the CLI, the library and the experiment drivers read the same defaults:

========================  ===============================================================
``ModelConfig``           the network ``mriscan.model.build_model`` builds
``OptimizerConfig``       how each step changes the weights (AdamW, schedule, loss, batch)
``HardwareConfig``        precision policy and distribution strategy (they change numerics)
``RuntimeConfig``         input pipeline, reader threads, progress output (numerics unchanged)
``TaskConfig``            which classes: a class map (merge/rename), the positive and healthy class
``SplitConfig``           validation and test shares of the group-aware split
``PretrainConfig``        phantom pre-training (0 phantoms = off)
``FitConfig``             epochs, early stopping, model selection, implants, test-time flip
``TrainConfig``           all of the above plus seed and image size: one training run
``CVConfig``              folds × repeats of ``TrainConfig`` runs, bootstrap draws
========================  ===============================================================

Every dataclass is frozen and validated at construction (``ConfigError`` names the setting, the
value received and what is allowed). Field ``metadata`` carries the help text and choices from
which ``mriscan.cli`` derives its options, so a default or a choice list is written once, here.
``override(cfg, {"model.filters": (8, 8, 16, 32)})`` returns a copy with dotted fields replaced.
The weights that phantom pre-training produces depend on exactly the sub-configs listed in
``PRETRAIN_KEY_PARTS`` (by construction: whole sub-configs, not a list of field names).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mriscan.errors import ConfigError

__all__ = [
    "PIPELINES",
    "PRECISIONS",
    "PRETRAIN_KEY_PARTS",
    "SELECT_MODES",
    "STRATEGIES",
    "THRESHOLD_RULES",
    "VERBOSITY",
    "CVConfig",
    "FitConfig",
    "HardwareConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PretrainConfig",
    "RuntimeConfig",
    "SplitConfig",
    "TaskConfig",
    "TrainConfig",
    "check_class_map",
    "class_map_sources",
    "config_from_dict",
    "override",
    "parse_class_map",
]

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored")
PIPELINES = ("auto", "pydataset", "tfdata")
SELECT_MODES = ("last", "best")
#: how a two-class model's decision threshold is chosen (``mriscan.metrics.choose_threshold``)
THRESHOLD_RULES = ("platt", "youden")
VERBOSITY = ("auto", "bar", "line", "silent")
#: explain's class-activation maps (mriscan.explain); LayerCAM is the default because it hit the
#: tumor boxes of figshare_br35h more often than Grad-CAM (experiments/ACCURACY.md row 49)
CAM_METHODS = ("layercam", "gradcam")
DEFAULT_CAM = "layercam"

C = TypeVar("C")


#: ``ModelConfig.convs_per_block`` above this is refused: a typo must not build for hours
MAX_CONVS_PER_BLOCK = 8
#: the model input side S: the network pools 4 times (16 leaves a 1×1 map); 2048 bounds memory
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048
#: the largest seed: NumPy's legacy ``np.random.seed`` (set by ``keras.utils.set_random_seed``)
#: takes 32 bits
MAX_SEED = 2**32 - 1
#: the most implanted copies of each healthy training slice (``FitConfig.implant``)
MAX_IMPLANT = 8
#: the largest per-replica batch: the learning rate scales linearly with the global batch
#: (``OptimizerConfig``), validated up to 8,192 by Goyal et al. 2017
MAX_BATCH_SIZE = 8192


def _opt(default: Any, help: str = "", choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose metadata the CLI turns into an option."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def _positive_int(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}.")


def _fraction(owner: object, *names: str, upper_open: bool = True) -> None:
    for name in names:
        value = getattr(owner, name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
            upper = ")" if upper_open else "]"
            raise ConfigError(f"{name} must be in [0, 1{upper}. Received: {name}={value!r}.")


def _choice(owner: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}. Received: {name}={value!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """The 4-block CNN (``mriscan.model.build_model``); inputs (batch, S, S, 1) float32.

    ``filters``: width of each 3×3 conv block (then 2×2 max pooling). ``mirror`` adds
    |x − left-right mirror(x)| as a second channel (tumors break the symmetry of a centred
    slice). ``rotation`` (fraction of a turn), ``zoom`` and ``translation`` (fractions of the
    side) set the training-time augmentation, active only when ``augment``, as do the intensity
    changes a second collection brings: ``contrast`` (Keras ``RandomContrast`` factor),
    ``gamma`` (``mriscan.model.RandomGamma``: γ log-uniform in [e^−gamma, e^gamma]), ``invert``
    (``mriscan.model.RandomHeadInversion``: the probability of reversing the head's intensities,
    so that T1- and T2-like contrasts both occur in every class), ``curve``
    (``mriscan.model.RandomIntensityCurve``: the probability of a random, non-monotone curve of
    the head's intensities; at 0.8 it left ``figshare_br35h`` → ``brain_mri`` within its
    interval and cost 0.09 test accuracy and 0.10 balanced accuracy across collections,
    experiments/ACCURACY.md row 73, so it is off by default), ``noise``
    (Gaussian noise, standard deviation in units of the slice's own standard deviation) and
    ``blur`` (Gaussian blur of up to this σ in pixels). Gamma, noise and blur act on the slice
    before the mirror channel is formed, so that channel sees the changed slice. ``bn_momentum``:
    Keras's 0.99 averages over ~100 steps; a 45-epoch run on ~150 slices has ~225, so the
    inference statistics lagged the weights (experiments/ACCURACY.md). ``block_dropout``: spatial
    dropout after each block (0: on ~200 slices it stalled training, experiments/ACCURACY.md).
    """

    filters: tuple[int, int, int, int] = _opt((24, 48, 96, 192), "Width of the 4 conv blocks.")
    dropout: float = 0.3
    augment: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.0
    contrast: float = 0.2
    gamma: float = 0.0
    invert: float = 0.0
    curve: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    mirror: bool = _opt(
        True,
        "Feed the model |slice - mirrored slice| as a second channel (tumors are asymmetric; "
        "+0.05 CV AUC on the real set).",
    )
    channels: int = 1
    convs_per_block: int = _opt(
        1,
        "3×3 convolutions in each of the four blocks. 2 types figshare's tumors better (4-class "
        "test split accuracy 0.923 → 0.937) but carries worse from brain_mri's 228 slices to "
        "figshare (AUC 0.977 → 0.960, two seeds; experiments/ACCURACY.md row 69): for models "
        "trained on thousands of slices.",
    )
    block_dropout: float = 0.0
    dense_units: int = 128
    batch_norm: bool = True
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        if len(self.filters) != 4 or any(
            not isinstance(f, int) or isinstance(f, bool) or f < 1 for f in self.filters
        ):
            raise ConfigError(
                f"filters must be 4 positive integers. Received: filters={self.filters!r}."
            )
        _positive_int(self, "channels", "convs_per_block", "dense_units")
        if self.convs_per_block > MAX_CONVS_PER_BLOCK:
            raise ConfigError(
                f"convs_per_block (--convs-per-block) must be at most {MAX_CONVS_PER_BLOCK}: "
                f"each adds four 3×3 convolutions to the model. Received: "
                f"convs_per_block={self.convs_per_block!r}."
            )
        _fraction(self, "dropout", "block_dropout", "rotation", "zoom", "translation")
        _fraction(self, "contrast", "gamma", "noise")
        _fraction(self, "invert", "curve", upper_open=False)
        if not (isinstance(self.blur, int | float) and not isinstance(self.blur, bool)) or not (
            0.0 <= self.blur <= 3.0
        ):
            raise ConfigError(f"blur must be in [0, 3] pixels. Received: blur={self.blur!r}.")
        if not 0.0 < self.bn_momentum < 1.0:
            raise ConfigError(f"bn_momentum must be in (0, 1). Received: {self.bn_momentum!r}.")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a linear warm-up and cosine decay to zero, binary cross-entropy.

    ``learning_rate`` is for a global batch of 32 and is scaled linearly with the global batch
    (``lr × global_batch / 32``; Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    ``batch_size`` is per replica (global batch = this × replicas). ``ema`` > 0 keeps an
    exponential moving average of the weights with that momentum and ends on it (0 = off).
    ``class_weight``: balanced weights n / (2 · count) per class.
    """

    learning_rate: float = _opt(
        1e-3, "For a global batch of 32; scaled linearly with the global batch."
    )
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    label_smoothing: float = 0.05
    ema: float = 0.0
    batch_size: int = _opt(32, "Per-replica batch; global batch = this × replicas.")
    class_weight: bool = True

    def __post_init__(self) -> None:
        _positive_int(self, "batch_size")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(
                f"batch_size must be at most {MAX_BATCH_SIZE} per replica (the learning rate "
                "is scaled with the batch, which Goyal et al. 2017 validated up to 8k). "
                f"Received: batch_size={self.batch_size}."
            )
        lr = self.learning_rate
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning_rate must be a finite number > 0. Received: {lr!r}.")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0. Received: {self.warmup_epochs!r}.")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1) (0 = off). Received: ema={self.ema!r}.")
        _fraction(self, "label_smoothing")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0. Received: {self.weight_decay!r}.")


@dataclass(frozen=True)
class HardwareConfig:
    """Precision policy and distribution strategy (``mriscan.hardware.setup_hardware``)."""

    precision: str = _opt(
        "auto", "auto: mixed_float16 on CUDA GPUs (CC >= 7.0), else float32.", PRECISIONS
    )
    strategy: str = _opt(
        "auto",
        "TensorFlow: auto = MirroredStrategy over 2+ devices, the default strategy on one; "
        "mirrored = MirroredStrategy even on one device.",
        STRATEGIES,
    )

    def __post_init__(self) -> None:
        _choice(self, "precision", PRECISIONS)
        _choice(self, "strategy", STRATEGIES)


@dataclass(frozen=True)
class RuntimeConfig:
    """How batches reach the model and how progress is shown; the weights do not depend on it."""

    pipeline: str = _opt("auto", "Input pipeline (auto: tf.data on TensorFlow).", PIPELINES)
    workers: int = 2
    verbose: str = _opt("auto", "Keras progress: bar or one line/epoch.", VERBOSITY)

    def __post_init__(self) -> None:
        _positive_int(self, "workers")
        _choice(self, "pipeline", PIPELINES)
        _choice(self, "verbose", VERBOSITY)


def parse_class_map(
    text: str, *, min_targets: int = 2, origin: str | None = None
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``"yes=glioma,meningioma,pituitary;no=notumor"`` → ``(("yes", (...)), ("no", ...))``.

    Entries are separated by ``;`` (or given one per line); each is ``target=source,...``;
    ``#`` starts a comment. A source holding a comma is written in double quotes, as in a CSV
    file: ``yes="Meningioma, WHO I",glioma``. ``min_targets``: the fewest targets the map may leave
    (``check_class_map``): 2 for a map a model is trained with, 1 for ``mriscan evaluate``'s
    (e.g. ``yes=glioma,meningioma``: the sensitivity of a yes/no model on a tumor-only
    collection). ``origin``: where ``text`` came from, for the messages (e.g. ``"the class map
    file maps.txt"``; default: the text itself).

    A text with no entry (empty, blanks, separators or comments only: a truncated file, entries
    commented out) is refused, never read as "no map": that would train or score the data's
    classes as they are, another task than the one asked for.

    Raises
    ------
    ConfigError
        If the text names no class, an entry has no ``=``, an empty name, a source appears
        twice, or fewer than ``min_targets`` targets remain.
    """
    out: list[tuple[str, tuple[str, ...]]] = []
    what = origin or f"The class map {text!r}"
    text = text.lstrip("\ufeff")  # a byte-order mark, as Windows editors write one
    for raw in text.replace("\n", ";").split(";"):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        target, eq, sources = entry.partition("=")
        # csv's rules: a folder name holding a comma is written in double quotes
        fields = next(csv.reader([sources], skipinitialspace=True), [])
        names = tuple(f.strip() for f in fields if f.strip())
        if not eq or not target.strip() or not names:
            raise ConfigError(
                f"A class map entry must read target=source[,source...]. Received: {entry!r}."
            )
        out.append((target.strip(), names))
    if not out:
        raise ConfigError(
            f"{what} names no class: it holds no target=source entry (it is empty, or blanks, "
            "';' or '#' comment lines only). Give the entries, e.g. "
            "'yes=glioma,meningioma,pituitary;no=notumor' (in a file: one per line), or leave "
            "--class-map out to use the data's classes as they are."
        )
    return check_class_map(tuple(out), min_targets=min_targets)


def class_map_sources(class_map: Any) -> tuple[str, ...] | None:
    """The data classes a class map (``((target, (source, ...)), ...)``) names, in its order,
    or None for no map (every data class is used)."""
    return tuple(s for _, srcs in class_map for s in srcs) if class_map else None


def check_class_map(
    class_map: Any, *, min_targets: int = 2
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A class map (``((target, (source, ...)), ...)``) as tuples of str, checked: no target
    named twice (nor two differing only by case), no source named twice, and, for a non-empty
    map, at least ``min_targets`` targets (2: ``TaskConfig``'s rule, a model tells two or more
    classes apart; 1: ``mriscan evaluate``'s data side, which may score one class).

    Raises
    ------
    ConfigError
        Naming the targets or sources at fault.
    """
    cmap = tuple((str(t), tuple(str(s) for s in srcs)) for t, srcs in class_map)
    targets = [t for t, _ in cmap]
    sources = [s for _, srcs in cmap for s in srcs]
    if len(set(targets)) != len(targets):
        raise ConfigError(f"The class map (--class-map) names a target twice: {targets}.")
    folded: dict[str, list[str]] = {}
    for t in targets:
        folded.setdefault(t.casefold(), []).append(t)
    same = [names for names in folded.values() if len(names) > 1]
    if same:
        raise ConfigError(
            "class_map names targets that differ only by case: "
            + "; ".join(" and ".join(names) for names in same)
            + ". Classes are compared exactly, so they would be two classes: spell each "
            "class one way."
        )
    for t, srcs in cmap:
        twice = sorted({s for s in srcs if srcs.count(s) > 1})
        if twice:
            raise ConfigError(
                f"class_map names {twice} twice in the list of target {t!r}; name each folder once."
            )
    if len(set(sources)) != len(sources):
        dup = sorted({s for s in sources if sources.count(s) > 1})
        where = {s: [t for t, srcs in cmap if s in srcs] for s in dup}
        said = "; ".join(f"{s!r} to {' and '.join(map(repr, ts))}" for s, ts in where.items())
        raise ConfigError(
            f"class_map maps a folder to two targets ({said}); each folder has one class."
        )
    if cmap and len(targets) < min_targets:
        raise ConfigError(
            f"The class map (--class-map) must leave at least two classes. Received: {targets}."
        )
    return cmap


@dataclass(frozen=True)
class TaskConfig:
    """Which classes the model learns (``mriscan.tasks.resolve_task``).

    ``class_map`` merges or renames the data's class folders, e.g.
    ``(("yes", ("glioma", "meningioma", "pituitary")), ("no", ("notumor",)))``; classes not
    named are left out. Empty: the data's classes as they are. ``positive`` names the positive
    class of a two-class task (default: the one named like a tumor — yes, tumor, positive,
    abnormal — or the other one of a healthy-like name); never alphabetical order.
    ``healthy`` names the no-tumor class of a K-class task, so that a tumor-vs-no-tumor
    probability can be reported (default: a class named like no, notumor, normal, healthy).
    """

    class_map: tuple[tuple[str, tuple[str, ...]], ...] = _opt(
        (),
        "Merge or rename class folders: 'yes=glioma,meningioma,pituitary;no=notumor' (classes "
        "not named are left out), or @FILE with one entry per line.",
    )
    positive: str | None = _opt(
        None, "Positive class of a two-class task [default: the tumor-like name]."
    )
    healthy: str | None = _opt(
        None, "The no-tumor class of a K-class task [default: the healthy-like name]."
    )

    @property
    def used_classes(self) -> tuple[str, ...] | None:
        """The data classes the class map names (its sources), or None without a map (all)."""
        return class_map_sources(self.class_map)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_map", check_class_map(self.class_map))


@dataclass(frozen=True)
class SplitConfig:
    """Shares of the stratified, duplicate-group-aware split (``mriscan.splits``).

    In cross-validation ``val_fraction`` is the share of each training fold held out to choose
    the threshold, and ``test_fraction`` is not used (the test fold is). Each share is checked
    here on its own; that ``train``'s two held-out parts leave a training part
    (``check_holdout``) is checked by ``train`` only, so a cv run is never refused, nor told
    about, a test share it does not use (``CVConfig`` checks its own range of
    ``val_fraction``).
    """

    val_fraction: float = _opt(
        0.15,
        "Share held out for validation: per-epoch checks and the decision threshold, with the "
        "training slices or alone (--threshold-rule); in cv, of each training fold; 0.25 "
        "traded AUC for accuracy on two seeds, experiments/ACCURACY.md rows 31-32.",
    )
    test_fraction: float = _opt(0.15, "Share held out for the final test (train only).")

    def __post_init__(self) -> None:
        v, t = self.val_fraction, self.test_fraction
        if isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
            # without validation slices there is no threshold and no per-epoch check; the
            # split would otherwise fail later as "a class is missing from the val part"
            raise ConfigError(
                "val_fraction must be in (0, 1): a validation part is needed to choose the "
                "decision threshold and to report validation metrics each epoch. Received: 0."
            )
        if not 0 < v < 1:
            raise ConfigError(f"val_fraction must be in (0, 1). Received: {v}.")
        if not 0 <= t < 1:
            raise ConfigError(f"test_fraction must be in [0, 1). Received: {t}.")

    def check_holdout(self) -> None:
        """Refuse shares whose validation and test parts leave no training part (``train``'s
        split; cv holds out no test share, so it does not call this).

        Raises
        ------
        ConfigError
            If ``val_fraction + test_fraction`` is 1 or more.
        """
        v, t = self.val_fraction, self.test_fraction
        if v + t >= 1:
            raise ConfigError(
                "val_fraction and test_fraction must have a sum below 1 (the rest is the "
                f"training part). Received: {v}, {t}."
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Phantom pre-training (``mriscan.training.pretrain``): ``phantoms`` = 0 turns it off."""

    phantoms: int = _opt(
        3000,
        "Phantoms to pre-train on first (0: start from random weights). The weights are "
        "cached (~/.cache/mriscan or $MRISCAN_CACHE) and shared by all folds of cv.",
    )
    epochs: int = _opt(5, "Epochs of phantom pre-training.")

    def __post_init__(self) -> None:
        p = self.phantoms
        if not isinstance(p, int) or isinstance(p, bool) or p < 0:
            raise ConfigError(f"pretrain must be 0 (off) or a number of phantoms. Received: {p!r}.")
        if 0 < p < 20:
            raise ConfigError(f"pretrain needs at least 20 phantoms. Received: {p}.")
        _positive_int(self, "epochs")


@dataclass(frozen=True)
class FitConfig:
    """Length of training and which weights are kept.

    ``select`` keeps the epoch with the best validation AUC (``best``) or the final one
    (``last``); ``patience`` (epochs without val-loss improvement) enables early stopping;
    ``implant`` > 0 adds that many copies of every healthy training slice with synthetic
    lesions drawn in (``mriscan.synth.implant_lesions``) as tumor examples (validation and test
    data stay real); ``tta`` averages each prediction with that of the mirrored slice (stored
    with the model). ``init_weights`` names a weights file (``.weights.h5``, ``.keras`` or
    Keras 2 ``.h5``) to start from instead of the phantom pre-training: layers are loaded by
    name where their shapes match (``mriscan.weights.load_matching_weights``); its content
    enters the run's identity (resume) and the model card.
    """

    epochs: int = _opt(45, "Training epochs (45 was as good as 60 on two seeds).")
    patience: int | None = None
    select: str = _opt(
        "last",
        "Keep the last epoch, or the epoch with the best validation AUC "
        "(checkpointed to models/best_model.keras as it trains).",
        SELECT_MODES,
    )
    implant: int = _opt(
        0,
        "Also train on this many copies of every healthy training slice with synthetic "
        "lesions drawn in, as tumor examples (0: off; validation and test slices stay real).",
    )
    tta: bool = True
    threshold_rule: str = _opt(
        "platt",
        "Decision threshold of a two-class model: platt = class-balanced Platt scaling of the "
        "training and validation predictions (carried best to another collection); youden = "
        "Youden's J on the validation split alone (the rule of earlier versions).",
        THRESHOLD_RULES,
    )
    init_weights: str | None = _opt(
        None,
        "Start from this weights file (.weights.h5, .keras, or Keras 2 .h5) instead of the "
        "phantom pre-training: layers are loaded by name where their shapes match; an output "
        "layer for another number of classes is skipped.",
    )

    def __post_init__(self) -> None:
        _positive_int(self, "epochs")
        w = self.init_weights
        if isinstance(w, os.PathLike):
            w = os.fspath(w)
            object.__setattr__(self, "init_weights", w)
        if w is not None and (not isinstance(w, str) or not w.strip()):
            raise ConfigError(
                f"init_weights must be the path of a weights file or None. Received: {w!r}."
            )
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigError(f"patience must be >= 1 or None. Received: {self.patience!r}.")
        _choice(self, "select", SELECT_MODES)
        _choice(self, "threshold_rule", THRESHOLD_RULES)
        i = self.implant
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ConfigError(f"implant must be 0 (off) or a number of copies. Received: {i!r}.")
        if i > MAX_IMPLANT:
            raise ConfigError(
                f"implant must be at most {MAX_IMPLANT} copies of each healthy slice (each copy "
                f"is held in memory; 1-2 were tried, ACCURACY rows 22-24). Received: {i}."
            )


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the stage configs, the seed, and the slice size.

    ``image_size`` is the side S of the slices when class folders are ingested; ``None`` means
    ``PreprocessConfig``'s default when ingesting, and the store's own size for a store (a
    size given explicitly that differs from the store's is an error, never ignored).
    ``seed`` drives the split, the initial weights, the augmentation and the phantoms.
    """

    seed: int = _opt(0, "Seed of the split, initial weights, augmentation and phantoms.")
    image_size: int | None = _opt(
        None,
        "Side S of the S×S slices when ingesting [default: 48 (generalised best to another "
        "collection), or the store's size].",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0. Received: seed={self.seed!r}.")
        if self.seed > MAX_SEED:
            raise ConfigError(
                f"seed must be at most {MAX_SEED} (NumPy's legacy seeding, which Keras uses, "
                f"takes 32 bits). Received: seed={self.seed}."
            )
        if self.image_size is not None:
            _positive_int(self, "image_size")
            if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
                raise ConfigError(
                    f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (the network "
                    f"pools 4 times). Received: image_size={self.image_size}."
                )
        for name, cls in _SUBCONFIGS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"{name} must be a {cls.__name__}. Received: {getattr(self, name)!r}."
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON nested form (``config_from_dict(TrainConfig, d)`` is the inverse)."""
        return _to_json(self)


# phantom pre-training weights depend on exactly these parts of a TrainConfig (and the
# PreprocessConfig and pre-training version): see mriscan.training.pretrain.pretrain_key
PRETRAIN_KEY_PARTS = ("seed", "model", "optimizer", "hardware", "pretrain")

_SUBCONFIGS = {
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "fit": FitConfig,
    "hardware": HardwareConfig,
    "runtime": RuntimeConfig,
    "split": SplitConfig,
    "pretrain": PretrainConfig,
    "task": TaskConfig,
}


@dataclass(frozen=True)
class CVConfig:
    """Cross-validation: ``folds`` × ``repeats`` models trained with ``train``'s settings.

    Inside each training fold, ``train.split.val_fraction`` of it (group-aware) is held out to
    pick the checkpoint and the decision threshold; the test fold is only predicted, once.
    ``n_boot`` draws of the percentile bootstrap give the 95% CI of each fold mean.
    """

    folds: int = _opt(5, "Number of folds.")
    repeats: int = _opt(1, "Repeats of the k-fold split with other seeds.")
    n_boot: int = 1000
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.folds, int) or self.folds < 2:
            raise ConfigError(f"folds must be >= 2. Received: folds={self.folds!r}.")
        _positive_int(self, "repeats", "n_boot")
        self.check_val_fraction(self.train.split.val_fraction)

    @staticmethod
    def check_val_fraction(v: float) -> None:
        """Refuse a share of each training fold held out for validation outside (0, 0.5)
        (callers that build the ``TrainConfig`` first check with this before, so that cv's own
        range is the one named).

        Raises
        ------
        ConfigError
            If ``v`` is not in (0, 0.5).
        """
        if not (isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 0.5):
            raise ConfigError(f"val_fraction must be in (0, 0.5) for cv. Received: {v}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON nested form."""
        return _to_json(self)


def _to_json(cfg: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v: Any) -> Any:
    """A setting as JSON has it: nested configs as dicts, tuples at any depth as lists (a class
    map is a tuple of (name, tuple of folders) pairs)."""
    if dataclasses.is_dataclass(v):
        return _to_json(v)
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a (nested) config from its ``to_dict`` form; unknown keys are an error.

    Raises
    ------
    ConfigError
        On an unknown key or an invalid value.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} settings: {sorted(unknown)}.")
    kw: dict[str, Any] = {}
    for name, value in data.items():
        sub = _nested_type(cls, name)
        if sub is not None and isinstance(value, Mapping):
            kw[name] = config_from_dict(sub, value)
        elif isinstance(value, list):
            kw[name] = tuple(value)
        else:
            kw[name] = value
    return cls(**kw)


def _nested_type(cls: type, name: str) -> type | None:
    if cls is TrainConfig:
        return _SUBCONFIGS.get(name)
    if cls is CVConfig and name == "train":
        return TrainConfig
    return None


def override(cfg: C, changes: Mapping[str, Any], _at: str = "") -> C:
    """A copy of ``cfg`` with dotted settings replaced, e.g. ``{"fit.epochs": 3, "seed": 1}``.

    Raises
    ------
    ConfigError
        If a path names no setting, or a new value is invalid.
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(
                f"{type(cfg).__name__} has no setting {_at + key!r}; known: {sorted(names)}."
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = tuple(value) if isinstance(value, list) else value
    for head, sub in nested.items():
        direct[head] = override(getattr(cfg, head), sub, f"{_at}{head}.")
    try:
        return dataclasses.replace(cfg, **direct)  # type: ignore[type-var]
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
