"""What a run writes and where: the run layout, the model card, the protocol, JSON on disk.

Every command names its output paths through ``RunLayout`` / ``CVLayout`` (after MONAI's
``FolderLayout``: one object names every output path), so renaming an artifact is a one-line
change here. The records are typed and versioned; reading one validates every value, so a
damaged or hand-edited file gives a clear error instead of a wrong prediction. Keras-free.

Layout of a training run (``mriscan train --out DIR``)::

    DIR/models/best_model.keras   the kept model (Keras 3 native format)
    DIR/models/best_model.json    its ModelCard (preprocessing, classes, threshold, config)
    DIR/history.json              per-epoch metrics, train and validation
    DIR/metrics.json              RunMetrics: protocol, hardware, validation and test metrics
    DIR/split.json                the split (indices and source files)
    DIR/plots/                    training_history.png, confusion_matrix.png, roc.png
    DIR/backup/                   per-epoch backup while a run is unfinished (all-or-nothing saves)
    DIR/evaluation/               written by ``mriscan evaluate``
    DIR/cv/                       written by ``mriscan cv`` (``CVLayout``)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mriscan.errors import ConfigError, MriscanError
from mriscan.preprocess import PreprocessConfig
from mriscan.readers import file_sha256
from mriscan.scan_config import INPUT_KINDS, ReaderSettings

__all__ = [
    "MODEL_CARD_VERSION",
    "CVLayout",
    "EvalLayout",
    "ModelCard",
    "ModelCardError",
    "Protocol",
    "RunLayout",
    "publish_model",
    "read_json",
    "remove_stale_plots",
    "signatures_path",
    "stale_plots",
    "training_signatures",
    "write_json",
]

log = logging.getLogger(__name__)

# 1: the sidecar before it had a version (same fields); 2: format_version written, validated
MODEL_CARD_VERSION = 2
MODEL_FILE = "best_model.keras"


class ModelCardError(MriscanError, ValueError):
    """A model card (the ``.json`` beside a ``.keras`` model) is missing or invalid."""


@dataclass(frozen=True)
class RunLayout:
    """Every path of one training run under ``root`` (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_model(cls, model_path: str | os.PathLike[str]) -> RunLayout | None:
        """The run a model file belongs to (``ROOT/models/X.keras``; a symbolic link outside
        a run: the file it links to), or None if it is loose."""
        p = Path(model_path)
        if p.parent.name != "models" and p.is_symlink():
            p = p.resolve()
        return cls(p.parent.parent) if p.parent.name == "models" else None

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def model(self) -> Path:
        return self.models / MODEL_FILE

    @property
    def card(self) -> Path:
        return card_path(self.model)

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def run_marker(self) -> Path:
        """Identity of the unfinished run whose state ``backup/`` holds."""
        return self.backup / "run.json"

    @property
    def checkpoint(self) -> Path:
        """Best-so-far model of a run in progress (published to ``model`` when it ends)."""
        return self.root / "checkpoint" / MODEL_FILE

    @property
    def live_history(self) -> Path:
        """``history.json`` of a run in progress (published to ``history`` when it ends, so a
        run that stops never replaces the finished run's history)."""
        return self.root / "checkpoint" / "history.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def history_plot(self) -> Path:
        return self.plots / "training_history.png"

    @property
    def confusion_plot(self) -> Path:
        return self.plots / "confusion_matrix.png"

    @property
    def roc_plot(self) -> Path:
        return self.plots / "roc.png"

    @property
    def plot_files(self) -> tuple[Path, ...]:
        """Every plot a training run may write (``stale_plots`` removes those it did not)."""
        return (self.history_plot, self.confusion_plot, self.roc_plot)

    @property
    def evaluation(self) -> EvalLayout:
        return EvalLayout(self.root / "evaluation")

    @property
    def cv(self) -> CVLayout:
        return CVLayout(self.root / "cv")


@dataclass(frozen=True)
class _ResultsLayout:
    """A folder of results: metrics, per-slice predictions and the two plots."""

    root: Path
    PREDICTIONS = "predictions.csv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.root / self.PREDICTIONS

    @property
    def roc_plot(self) -> Path:
        return self.root / "roc.png"

    @property
    def confusion_plot(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def plot_files(self) -> tuple[Path, ...]:
        """Every plot such a folder may hold (``stale_plots`` removes those a run did not
        write)."""
        return (self.confusion_plot, self.roc_plot)


@dataclass(frozen=True)
class CVLayout(_ResultsLayout):
    """Paths of a cross-validation under ``root`` (``<out>/cv``); one ``RunLayout`` per fold."""

    PREDICTIONS = "oof_predictions.csv"

    def unit_predictions(self, level: str) -> Path:
        """The pooled out-of-fold rows of one unit level ("series", "patient";
        ``mriscan.evaluate.LEVELS``): ``oof_<level>_predictions.csv``."""
        return self.root / f"oof_{level}_predictions.csv"

    def fold(self, repeat: int, fold: int) -> RunLayout:
        """The run folder of one fold model."""
        return RunLayout(self.root / f"r{repeat}_f{fold}")

    def fold_dirs(self) -> list[Path]:
        """The fold run folders present under ``root`` (``r<repeat>_f<fold>``), sorted."""
        import re

        if not self.root.is_dir():
            return []
        pattern = re.compile(r"r\d+_f\d+")
        return sorted(p for p in self.root.iterdir() if p.is_dir() and pattern.fullmatch(p.name))


@dataclass(frozen=True)
class EvalLayout(_ResultsLayout):
    """Paths written by ``mriscan evaluate`` under ``root`` (``<run>/evaluation``)."""


def stale_plots(
    layout: RunLayout | CVLayout | EvalLayout, written: Iterable[str | os.PathLike[str]]
) -> list[Path]:
    """The plots of ``layout`` (its ``plot_files``) on disk that a run which wrote ``written``
    did not write: an earlier run's into the same folder, such as a two-class model's
    ``roc.png`` beside the results of a K-class one (which has no ROC curve), or a test-split
    plot beside a run without a test split. ``train``, ``evaluate`` and ``cv`` delete them once
    they have written their own, so a folder never shows one run's plot beside another run's
    results."""
    keep = {Path(p) for p in written}
    return [p for p in layout.plot_files if p not in keep and p.is_file()]


def remove_stale_plots(
    layout: RunLayout | CVLayout | EvalLayout, written: Iterable[str | os.PathLike[str]]
) -> list[Path]:
    """Delete ``stale_plots(layout, written)``, logging each; returns the deleted paths."""
    gone = stale_plots(layout, written)
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:
        log.info(
            "removed plots an earlier run left in %s that this one does not write: %s",
            gone[0].parent,
            ", ".join(p.name for p in gone),
        )
    return gone


def publish_model(
    save: Any,
    card: ModelCard,
    model_path: str | os.PathLike[str],
    *,
    signatures: Any = None,
) -> ModelCard:
    """Write a model and its card so that the previous pair stays intact until the new one is
    complete: ``save(tmp_path)`` writes the model beside its destination, the card records the
    file's SHA-256, then both are moved in place with ``os.replace`` (model first). A kill
    between the two moves leaves a model whose card does not match it, which ``load_model``
    reports (``ModelCard.check_model_file``) instead of using the pair.

    Keras writes model files in place, not atomically; this is why the temp file is needed.
    ``signatures`` (uint8 (N, 16, 16) thumbnails of the training slices) are written first to
    ``signatures_path(model_path)``, their digest kept in the card.
    """
    import numpy as np

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f".{model_path.stem}.{os.getpid()}.tmp{model_path.suffix}")
    if signatures is not None:
        sig_path = signatures_path(model_path)
        sig_tmp = sig_path.with_name(f".{sig_path.name}.{os.getpid()}.tmp.npy")
        np.save(sig_tmp, np.ascontiguousarray(signatures, np.uint8))
        card = dataclasses.replace(card, train_signatures_sha256=file_sha256(sig_tmp))
        os.replace(sig_tmp, sig_path)
    try:
        save(tmp)
        card = dataclasses.replace(card, model_sha256=file_sha256(tmp))
        card_tmp = card_path(tmp)
        write_json(card_tmp, card.to_dict())
        os.replace(tmp, model_path)
        os.replace(card_tmp, card_path(model_path))
    finally:
        for leftover in (tmp, card_path(tmp)):
            leftover.unlink(missing_ok=True)
    return card


def signatures_path(model_path: str | os.PathLike[str]) -> Path:
    """Thumbnails of a model's training slices (``X.keras`` → ``X.signatures.npy``)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".signatures.npy")


def card_path(model_path: str | os.PathLike[str]) -> Path:
    """Path of the model card of ``model_path`` (``X.keras`` → ``X.json``)."""
    return Path(model_path).with_suffix(".json")


def _finite(x: Any) -> Any:
    """JSON-safe copy: NaN and ±inf become None (JSON has no NaN: it would not parse)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON atomically (temp file + ``os.replace``).

    Undefined numbers (NaN, ±inf) are written as ``null``: a reader sees "undefined", never a
    file that standard JSON parsers reject.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=indent, allow_nan=False))
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file, or raise ``MriscanError`` naming ``what`` it should hold."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MriscanError(f"{path} is missing ({what}).") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MriscanError(f"{path} is not readable JSON ({what}): {exc}.") from exc


@dataclass(frozen=True)
class ModelCard:
    """What a saved model needs beside its weights; stored as ``X.json`` beside ``X.keras``.

    Two classes: ``class_names[1]`` is the positive class whose probability the sigmoid
    outputs; a slice is assigned to it when that probability >= ``threshold`` (chosen on
    validation by ``threshold_rule``). K > 2 classes: softmax outputs in the order of
    ``class_names``, the most probable class is predicted, ``threshold`` is None; ``healthy``
    names the no-tumor class when there is one. ``tta``: predictions average the slice and its
    left-right mirror image. ``train_signatures_sha256``: digest of the training slices'
    thumbnails saved beside the model (``signatures_path``), used to drop near-duplicates of
    the training data from an evaluation on another collection. ``init_weights``: what the
    training started from — None for random weights, else ``source`` (``"file"``: the user's
    ``--init-weights``; ``"phantoms"``: the phantom pre-training), the file's ``path`` and
    ``sha256``, and how many layers were loaded (``layers_loaded`` of
    ``layers_with_weights``; ``loaded``, ``kept_initial``, ``head_skipped``). ``reader``: how
    the training store's DICOM and NIfTI files were read (``ReaderSettings``, the store's
    ``reader_settings``), the settings ``predict``, ``explain`` and ``evaluate`` read scanner
    files with unless told otherwise; None for a card written before mriscan recorded them, or
    a store that records none (then the defaults, as before). ``train_patients``: the patients
    of the training and validation slices, so that ``evaluate`` can remove slices of the same
    patients from another collection: ``{"key_id": the store's identifier-key fingerprint,
    "patients": sorted keyed hashes "patient:<h>"}`` (HMAC pseudonyms under the user's key,
    ``mriscan.keys``, as the store holds them; never the IDs); None where the card predates it
    or the store has no key fingerprint (an older store that keeps its own salt).
    ``train_kinds``: the kinds of input file the training and validation slices were read from
    (of ``"image"``, ``"dicom"``, ``"nifti"``, in that order: ``scan_config.INPUT_KINDS``), so
    that a reading setting of a kind the model never saw is not reported as differing from its
    training data's; None for a card written before mriscan recorded them (unknown: the
    settings of both scanner kinds are compared, as before).
    """

    preprocess: PreprocessConfig
    class_names: tuple[str, ...]
    threshold: float | None
    tta: bool = False
    healthy: str | None = None
    train_signatures_sha256: str = ""
    threshold_rule: str = ""
    image_size: int | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    keras_backend: str = ""
    model_sha256: str = ""
    init_weights: dict[str, Any] | None = None
    reader: ReaderSettings | None = None
    train_patients: dict[str, Any] | None = None
    train_kinds: tuple[str, ...] | None = None
    format_version: int = MODEL_CARD_VERSION

    def __post_init__(self) -> None:
        names = self.class_names
        if (
            not isinstance(names, tuple)
            or len(names) < 2
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ModelCardError(
                f"class_names must be two or more distinct non-empty names. Received: {names!r}."
            )
        t = self.threshold
        if len(names) == 2 and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0
        ):
            raise ModelCardError(
                f"threshold must be a number in [0, 1]. Received: {t!r} (a diverged training "
                "run gives NaN: retrain with a lower --learning-rate)."
            )
        if len(names) > 2 and t is not None:
            raise ModelCardError(
                f"a {len(names)}-class model predicts the most probable class; its threshold "
                f"must be null. Received: {t!r}."
            )
        if self.healthy is not None and self.healthy not in names:
            raise ModelCardError(f"healthy {self.healthy!r} is not one of {list(names)}.")
        if not isinstance(self.tta, bool):
            raise ModelCardError(f"tta must be true or false. Received: {self.tta!r}.")
        if self.init_weights is not None and not isinstance(self.init_weights, dict):
            raise ModelCardError(
                f"init_weights must be an object or null. Received: {self.init_weights!r}."
            )
        tp = self.train_patients
        if tp is not None and (
            not isinstance(tp, dict)
            or not isinstance(tp.get("key_id"), str)
            or not isinstance(tp.get("patients"), list)
            or not all(isinstance(p, str) and p.startswith("patient:") for p in tp["patients"])
        ):
            raise ModelCardError(
                "train_patients must be null or {'key_id': str, 'patients': ['patient:<h>', "
                f"...]}}. Received: {str(tp)[:200]!r}."
            )
        if self.train_kinds is not None:
            object.__setattr__(self, "train_kinds", _kinds(self.train_kinds))
        if self.image_size is not None and self.image_size != self.preprocess.size:
            raise ModelCardError(
                f"image_size {self.image_size!r} disagrees with preprocess.size "
                f"{self.preprocess.size}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "format_version": self.format_version,
            "preprocess": self.preprocess.to_dict(),
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "tta": self.tta,
            "healthy": self.healthy,
            "train_signatures_sha256": self.train_signatures_sha256,
            "threshold_rule": self.threshold_rule,
            "train_config": self.train_config,
            "image_size": self.preprocess.size,
            "keras_backend": self.keras_backend,
            "model_sha256": self.model_sha256,
            "init_weights": self.init_weights,
            "reader": None if self.reader is None else self.reader.to_dict(),
            "train_patients": self.train_patients,
            "train_kinds": None if self.train_kinds is None else list(self.train_kinds),
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "model card") -> ModelCard:
        """Validate and rebuild a card; cards without ``format_version`` are version 1.

        Raises
        ------
        ModelCardError
            On a missing or invalid field, naming ``source`` and the field.
        """
        if not isinstance(data, dict):
            raise ModelCardError(f"{source} must hold a JSON object. Received: {type(data)}.")
        version = data.get("format_version", 1)
        if version not in (1, MODEL_CARD_VERSION):
            raise ModelCardError(
                f"{source} has format_version {version!r}; this mriscan reads 1 and "
                f"{MODEL_CARD_VERSION}. Upgrade mriscan or retrain."
            )
        try:
            pre = PreprocessConfig.from_dict(data["preprocess"])
            size = data.get("image_size")
            return cls(
                preprocess=pre,
                class_names=tuple(data["class_names"]),
                threshold=data.get("threshold", 0.5 if len(data["class_names"]) == 2 else None),
                tta=data.get("tta", False),
                healthy=data.get("healthy"),
                train_signatures_sha256=str(data.get("train_signatures_sha256", "")),
                threshold_rule=_card_rule(data),
                image_size=size,
                train_config=dict(data.get("train_config") or {}),
                keras_backend=str(data.get("keras_backend", "")),
                model_sha256=str(data.get("model_sha256", "")),
                init_weights=data.get("init_weights"),
                reader=(
                    None if data.get("reader") is None else ReaderSettings.from_dict(data["reader"])
                ),
                train_patients=data.get("train_patients"),
                train_kinds=data.get("train_kinds"),
                format_version=MODEL_CARD_VERSION,
            )
        except KeyError as exc:
            raise ModelCardError(f"{source} lacks the field {exc}.") from None
        except (ConfigError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelCardError):
                raise ModelCardError(f"{source}: {exc}") from None
            raise ModelCardError(f"{source} is invalid: {exc}") from exc

    def save(self, model_path: str | os.PathLike[str]) -> Path:
        """Write the card beside ``model_path`` (atomically)."""
        return write_json(card_path(model_path), self.to_dict())

    @classmethod
    def load(cls, model_path: str | os.PathLike[str]) -> ModelCard:
        """Read and validate the card of ``model_path`` (beside it, or, for a symbolic link,
        beside the file it links to).

        Raises
        ------
        ModelCardError
            If it is missing, not JSON, or invalid.
        """
        path = card_path(model_path)
        if not path.is_file() and Path(model_path).is_symlink():
            # a link to a model file: its card lies beside the file linked to
            path = card_path(Path(model_path).resolve())
        if not path.is_file():
            raise ModelCardError(
                f"{path} is missing: it holds the preprocessing the model was "
                "trained with. Keep it next to the .keras file: train writes both, with "
                f"{signatures_path(model_path).name}, into RUN/models/; copy the three "
                "together, or give the model in its run folder."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelCardError(f"{path} is not readable JSON ({exc}); retrain.") from exc
        return cls.from_dict(data, source=str(path))

    def check_model_file(self, model_path: str | os.PathLike[str]) -> None:
        """Raise ``ModelCardError`` unless ``model_path`` is the file this card was written for
        (cards of version 1 carry no digest and are not checked)."""
        if self.model_sha256 and file_sha256(model_path) != self.model_sha256:
            raise ModelCardError(
                f"{card_path(model_path)} belongs to another model file than {model_path} "
                "(a run was interrupted while publishing its model, or files were mixed up). "
                "Retrain, or restore the matching pair."
            )

    def decide(self, probs: Any, threshold: float | None = None) -> str:
        """The class name assigned to one slice's class probabilities (length K).

        Two classes: ``class_names[1]`` when its probability >= ``threshold`` (default: the
        card's); more: the most probable class.
        """
        if len(self.class_names) == 2:
            thr = self.threshold if threshold is None else threshold
            return self.class_names[1] if float(probs[1]) >= thr else self.class_names[0]
        return self.class_names[int(max(range(len(probs)), key=lambda k: probs[k]))]

    def decision_text(self, probs: Any, threshold: float | None = None) -> str:
        """Why ``decide`` gave its class, for a person: two classes, the positive class's
        probability against the threshold (``"P(yes) = 0.536 < threshold 0.540"``), since
        the threshold is rarely 0.5 and "P(no) = 0.46, predicted no" reads as a contradiction
        without it; more classes, ``"most probable of K classes"``."""
        if len(self.class_names) == 2:
            thr = self.threshold if threshold is None else threshold
            p = float(probs[1])
            digits = 3  # up to 9, until the two differ: not "0.486 < threshold 0.486"
            while digits < 9 and f"{p:.{digits}f}" == f"{thr:.{digits}f}":
                digits += 1
            return (
                f"P({self.class_names[1]}) = {p:.{digits}f} {'≥' if p >= thr else '<'} "
                f"threshold {thr:.{digits}f}"
            )
        return f"most probable of {len(self.class_names)} classes"

    @property
    def binary(self) -> bool:
        """True for a two-class (sigmoid) model."""
        return len(self.class_names) == 2


@dataclass(frozen=True)
class Protocol:
    """How reported numbers were obtained, as numbers (``describe()`` gives the prose).

    ``kind`` is ``"holdout"`` (train/val/test) or ``"cv"`` (k folds × repeats).
    ``val_fraction`` is the share held out to choose the threshold (in cv: of each training
    fold); ``duplicate_threshold`` the thumbnail correlation above which slices share a group.
    ``init_weights``: the user's starting-weights file, when one replaced the phantom
    pre-training (then ``pretrain_phantoms`` is 0).
    """

    kind: str
    seed: int
    val_fraction: float
    threshold_rule: str
    duplicate_threshold: float
    test_fraction: float | None = None
    folds: int | None = None
    repeats: int | None = None
    sizes: dict[str, int] | None = None
    samples: int | None = None
    duplicate_groups: int | None = None
    select: str = "last"
    pretrain_phantoms: int = 0
    pretrain_epochs: int = 0
    n_boot: int | None = None
    init_weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Numbers and names, plus ``description`` (prose for people, never parsed)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["description"] = self.describe()
        return d

    def describe(self) -> str:
        """One paragraph of prose for reports."""
        pre = (
            f"; pre-trained on {self.pretrain_phantoms} phantoms for {self.pretrain_epochs} "
            "epochs (no real slice)"
            if self.pretrain_phantoms
            else ""
        )
        if self.init_weights:
            pre = f"; started from the weights file {self.init_weights} (no phantom pre-training)"
        groups = (
            f"every near-duplicate group (16x16 thumbnail correlation > "
            f"{self.duplicate_threshold}) on one side; exact duplicate files stored once"
        )
        if self.kind == "cv":
            return (
                f"stratified {self.folds}-fold CV x {self.repeats} (seed {self.seed}); {groups}; "
                f"{self.val_fraction:.0%} of each training fold (group-aware) is its "
                "validation part"
                + (", which chooses the checkpoint by val AUC" if self.select == "best" else "")
                + f"; decision: {self.threshold_rule}, never from test slices; each test fold "
                f"predicted once{pre}"
            )
        return (
            f"stratified train/val/test split (seed {self.seed}, val {self.val_fraction:.0%}, "
            f"test {self.test_fraction:.0%}); {groups}; decision: {self.threshold_rule}, "
            f"never from test slices{pre}"
        )


def _kinds(kinds: Any) -> tuple[str, ...]:
    """``ModelCard.train_kinds`` checked, in ``INPUT_KINDS`` order, or ``ModelCardError``."""
    if (
        not isinstance(kinds, list | tuple)
        or not all(isinstance(k, str) and k in INPUT_KINDS for k in kinds)
        or len(set(kinds)) != len(kinds)
    ):
        raise ModelCardError(
            f"train_kinds must be null or a list of distinct kinds of {list(INPUT_KINDS)}. "
            f"Received: {kinds!r}."
        )
    return tuple(k for k in INPUT_KINDS if k in kinds)


def _card_rule(data: dict[str, Any]) -> str:
    """A card's ``threshold_rule``; cards written before it was recorded (format_version 1,
    all thresholded by Youden's J on validation) get those words, not an empty string."""
    rule = str(data.get("threshold_rule") or "")
    if rule or data.get("threshold") is None:
        return rule
    return "Youden's J on the validation split (recorded before mriscan named its rule)"


def training_signatures(model_path: str | os.PathLike[str], card: Any) -> Any:
    """The thumbnails of the model's training slices (uint8 (n, 16, 16),
    ``mriscan.duplicates.signatures``), or None for a model saved without them.

    Raises
    ------
    ModelCardError
        If the card records them but the file beside the model is missing or other (its
        SHA-256 differs): naming the file and what to do.
    """
    import numpy as np

    path = signatures_path(model_path)
    if not card.train_signatures_sha256:
        return None
    if not path.is_file() or file_sha256(path) != card.train_signatures_sha256:
        raise ModelCardError(
            f"{path} is missing or does not belong to {model_path}: it holds the thumbnails of "
            "the training slices, by which their near-duplicates are recognised (evaluate "
            "removes them, explain flags them). "
            f"Restore it (train writes it beside the model as {path.name}; copy it with the "
            ".keras and .json files), or retrain."
        )
    return np.load(path)
