"""What the model is asked to tell apart: the data's classes mapped onto the model's classes.

Keras-free. A store keeps the classes of its folders as they are (e.g. glioma, meningioma,
notumor, pituitary); a ``Task`` maps them onto the classes one model learns (the same four, or
yes = the three tumor types and no = notumor). The positive class of a two-class task is
decided by name or by ``TaskConfig.positive``, never by alphabetical order, and is always
label 1 (the sigmoid's output); the healthy class of a K-class task is named too, so a
tumor-vs-no-tumor probability can be reported.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mriscan.config import TaskConfig, check_class_map
from mriscan.errors import ConfigError

__all__ = [
    "HEALTHY_NAMES",
    "POSITIVE_NAMES",
    "TUMOR_TYPE_NAMES",
    "Comparison",
    "Task",
    "canonical_class_map",
    "compare_classes",
    "healthy_like",
    "positive_like",
    "resolve_task",
    "tumor_like",
]

log = logging.getLogger(__name__)

# names of a tumor / a healthy class in public brain-MRI sets (compared case-insensitively,
# ignoring "_", "-" and spaces)
POSITIVE_NAMES = frozenset({"yes", "tumor", "tumour", "positive", "abnormal", "lesion"})
HEALTHY_NAMES = frozenset(
    {
        "no",
        "notumor",
        "notumour",
        "normal",
        "healthy",
        "negative",
        "control",
        "none",
        "nofinding",
        "nofindings",
        # tester31: scored as tumour boxes by the pointing game
        "nontumor",
        "nontumour",
        "tumorfree",
        "tumourfree",
        "healthybrain",
        "normalbrain",
    }
)
# tumor types of the public sets (figshare: glioma, meningioma, pituitary; the Kaggle "Brain
# Tumor Classification" set: glioma_tumor, ...): a class of one of these names, alone or
# followed by "tumor"/"tumour", is a tumor class
TUMOR_TYPE_NAMES = frozenset(
    {
        "glioma",
        "meningioma",
        "pituitary",
        "astrocytoma",
        "glioblastoma",
        "oligodendroglioma",
        "ependymoma",
        "medulloblastoma",
        "schwannoma",
        "neurocytoma",
        "metastasis",
        "metastases",
        "lymphoma",
    }
)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def positive_like(name: str) -> bool:
    """True for names such as ``yes`` or ``tumor``."""
    return _norm(name) in POSITIVE_NAMES


def healthy_like(name: str) -> bool:
    """True for names such as ``no``, ``notumor``, ``normal``, ``no_finding``."""
    return _norm(name) in HEALTHY_NAMES


def tumor_like(name: str) -> bool:
    """True for a tumor name (``positive_like``) or a tumor type: ``glioma``, ``meningioma``,
    ``pituitary``, ... (``TUMOR_TYPE_NAMES``), alone or followed by ``tumor``/``tumour``
    (``glioma_tumor``); compared case-insensitively, ignoring ``_``, ``-`` and spaces."""
    return positive_like(name) or _class_key(name) in TUMOR_TYPE_NAMES


@dataclass(frozen=True)
class Task:
    """A resolved task.

    ``class_names``: the model's K classes, label k = ``class_names[k]``; for K = 2,
    ``class_names[1]`` is the positive class. ``label_map``: int64 array over the data's
    labels, data label → model label, −1 where the data class is left out. ``healthy``: index
    of the no-tumor class among ``class_names``, or None. ``positive_guess``: for a two-class
    task whose positive class was not named (by ``--positive`` or a tumor-like name) but taken
    as the one beside a healthy-like name, why; empty otherwise.
    """

    class_names: tuple[str, ...]
    data_class_names: tuple[str, ...]
    label_map: np.ndarray
    healthy: int | None
    positive_guess: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    def labels(self, data_labels: np.ndarray) -> np.ndarray:
        """Model labels (int64, −1 = left out) of data labels."""
        return self.label_map[np.asarray(data_labels, np.int64)]

    def kept(self, data_labels: np.ndarray) -> np.ndarray:
        """Indices of the samples whose class the task keeps."""
        return np.flatnonzero(self.labels(data_labels) >= 0)

    def usable(self, data_labels: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Sorted indices of the samples that are ``active`` (not retired: their file was not
        deleted, overwritten or moved) and of a class the task keeps."""
        return np.intersect1d(self.kept(data_labels), active)

    @property
    def left_out(self) -> tuple[str, ...]:
        """The data classes the task leaves out (a class map does not name them)."""
        return tuple(d for j, d in enumerate(self.data_class_names) if self.label_map[j] < 0)

    def describe(self) -> str:
        """e.g. ``no = notumor; yes = glioma + meningioma (positive); left out: pituitary``."""
        parts = []
        for k, name in enumerate(self.class_names):
            srcs = [d for j, d in enumerate(self.data_class_names) if self.label_map[j] == k]
            src = " + ".join(srcs)
            tag = ""
            if self.binary and k == 1:
                guessed = f", guessed: {self.positive_guess}" if self.positive_guess else ""
                tag = f" (positive{guessed})"
            tag += " (healthy)" if self.healthy == k and not self.binary else ""
            parts.append(f"{name} = {src}{tag}" if src != name else f"{name}{tag}")
        left = self.left_out
        return "; ".join(parts) + (f"; left out: {', '.join(left)}" if left else "")


def canonical_class_map(class_map: Any) -> list[list[Any]]:
    """A class map (``((target, (source, ...)), ...)``) as plain JSON in the form that
    ``resolve_task`` makes one task of: ``[[target, [source, ...]], ...]`` with each entry's
    sources sorted (a data class's model label depends on its target only) and, for a
    two-class map, the entries sorted too (the negative and positive class are told by
    ``--positive`` or the names, never by the entries' order). A map of more than two targets
    keeps its entries' order: it is the order of the model's classes (label k = k-th entry).

    Two maps with the same canonical form resolve to the same task on any data; used for a
    run's identity (``mriscan.training.fit.run_identity``), so that
    ``no=notumor;yes=pituitary,glioma`` resumes a run of ``yes=glioma,pituitary;no=notumor``.
    """
    entries = [[str(t), sorted(str(s) for s in srcs)] for t, srcs in class_map]
    return sorted(entries) if len(entries) == 2 else entries


def resolve_task(
    data_class_names: Sequence[str], config: TaskConfig | None = None, *, warn: bool = True
) -> Task:
    """Map the data's classes onto the model's, as ``config`` says.

    Logs a warning (``mriscan.tasks`` logger) when the names contradict the choice made:
    a two-class task's positive class named like a healthy one (or the negative like a tumor),
    ``--healthy`` naming a tumor-like class of a K-class task, or a K-class task left without
    a healthy class because two of its classes are named like one (``no`` and ``notumor``).
    ``warn=False`` resolves the same task without them: for the repeated resolutions of one
    run (fitting, calibrating, the model card), so that a run says each warning once, where
    it announces its task.

    Raises
    ------
    ConfigError
        If the map names a class the data lack (naming those that differ from a data class
        only by case), fewer than two classes remain, or the positive class of a two-class
        task cannot be told from the names (then ``--positive`` is needed).
    """
    cfg = config if config is not None else TaskConfig()
    data = tuple(data_class_names)
    if cfg.class_map:
        unknown = sorted(set(cfg.used_classes or ()) - set(data))
        if unknown:
            raise ConfigError(
                f"The class map names {unknown}, but the data's classes are {list(data)}."
                f"{_case_hint(unknown, data)}"
            )
        names = [t for t, _ in cfg.class_map]
        source_of = {s: t for t, srcs in cfg.class_map for s in srcs}
    else:
        names = list(data)
        source_of = {d: d for d in data}
    if len(names) < 2:
        raise ConfigError(
            f"A task needs at least two classes; the data have {list(data)}. Add a class "
            "folder or give a class map."
        )
    if cfg.positive is not None and cfg.positive == cfg.healthy:
        raise ConfigError(
            f"--positive and --healthy both name {cfg.positive!r}: the tumor class cannot also "
            "be the no-tumor class."
        )
    if len(names) == 2:
        positive = cfg.positive
        if positive is None and cfg.healthy is not None:
            if cfg.healthy not in names:
                raise ConfigError(f"--healthy {cfg.healthy!r} is not one of the classes {names}.")
            positive = next(n for n in names if n != cfg.healthy)  # the other one
        names, guess = _order_binary(names, positive)
        two_tumors = _healthy_index(names, cfg.healthy, data, source_of) is None
        if warn and two_tumors:
            log.info(
                "both classes (%r, %r) hold tumors: the task has no healthy class, so no tumor "
                "vs no tumor call is made from it",
                *names,
            )
        elif warn and (healthy_like(names[1]) or tumor_like(names[0])):
            log.warning(
                "the positive (tumor) class is %r and the negative one %r: their names say the "
                "opposite; check --positive/--healthy",
                names[1],
                names[0],
            )
    else:
        guess = ""
    if len(names) != 2 and cfg.positive is not None:
        raise ConfigError(
            f"--positive applies to two-class tasks; this one has {len(names)} classes "
            f"{names}. Use --healthy to name the no-tumor class."
        )
    if warn and cfg.class_map:
        _warn_renamed_onto_others(cfg.class_map, data)
    healthy = _healthy_index(names, cfg.healthy, data, source_of)
    if warn and cfg.healthy is not None and len(names) > 2:
        _check_healthy_name(names, cfg.healthy, data, source_of)
    if warn and healthy is None and len(names) > 2:
        _warn_many_healthy(names, data, source_of)
    label_map = np.array([names.index(source_of[d]) if d in source_of else -1 for d in data])
    return Task(tuple(names), data, label_map.astype(np.int64), healthy, guess)


def _case_hint(unknown: Sequence[str], data: Sequence[str]) -> str:
    """`` 'Glioma' and 'glioma' differ only by case: ...`` for the names of a class map that
    match a data class only when case is ignored (``str.casefold``, as ingest compares
    labels), then `` Did you mean 'meningioma' for 'menigioma'?`` for the others that are
    near a data class (``difflib.get_close_matches``), or "" when none is."""
    pairs = [
        f"{u!r} and {d!r}" for u in unknown for d in data if u != d and u.casefold() == d.casefold()
    ]
    cased = {u for u in unknown for d in data if u != d and u.casefold() == d.casefold()}
    # near misses (a typo): difflib's ratio of matching characters, its default cutoff 0.6
    close = {
        u: m[0]
        for u in unknown
        if u not in cased and (m := difflib.get_close_matches(u, list(data), n=1))
    }
    hint = "".join(f" Did you mean {m!r} for {u!r}?" for u, m in close.items())
    if not pairs:
        return hint
    return (
        " " + "; ".join(pairs) + " differ only by case: class names are compared "
        "exactly, so write them in the data's spelling." + hint
    )


def _order_binary(names: list[str], positive: str | None) -> tuple[list[str], str]:
    """([negative, positive], why the positive class is a guess or "") of a two-class task.

    Without ``positive``: the one tumor-like name (``tumor_like``) is positive; else the one
    beside the only healthy-like name, announced as a guess. Two tumor-like, two healthy-like
    or two neutral names are refused (``--positive`` decides).
    """
    guess = ""
    if positive is not None:
        if positive not in names:
            raise ConfigError(f"--positive {positive!r} is not one of the classes {names}.")
    else:
        pos = [n for n in names if tumor_like(n)]
        neg = [n for n in names if healthy_like(n)]
        if len(pos) == 2 or len(neg) == 2:
            kind = "a tumor" if len(pos) == 2 else "a healthy (no-tumor)"
            raise ConfigError(
                f"Both classes {names} are named like {kind} class, so the names cannot tell "
                "which is the positive (tumor) class. Name it with --positive (or merge or "
                "rename the classes with --class-map)."
            )
        if len(pos) == 1:
            positive = pos[0]
        elif len(neg) == 1:
            positive = next(n for n in names if n != neg[0])
            guess = f"{neg[0]!r} is named like a healthy class; confirm with --positive"
        else:
            raise ConfigError(
                f"Which of {names} is the positive (tumor) class? Name it with --positive "
                "(the order of folders never decides it)."
            )
    return [next(n for n in names if n != positive), positive], guess


def _check_healthy_name(
    names: list[str], healthy: str, data: tuple[str, ...], source_of: dict[str, str]
) -> None:
    """Warn when ``--healthy`` names a K-class task's no-tumor class against the names: the
    class is named like a tumor (``tumor_like``: glioma, yes, ...), or another class is named
    like a healthy one (``healthy_like``: notumor, no, ...). The counterpart of the two-class
    warning on ``--positive``; the choice stands (the names may mislead), but the tumor
    probability and ``is_tumor`` of the model are then 1 − P(``healthy``): another
    healthy-like class counts as tumor in them (said, with a class map that merges it)."""
    others = [n for n in names if n != healthy and healthy_like(n)]
    said = " and ".join(map(repr, others))
    if healthy_like(healthy):
        if others:
            log.warning(
                "the no-tumor class (--healthy) is %r, and %s %s named like a healthy class "
                "too: a class of its own, counted as tumor by the model's tumor probability "
                "(1 - P(%s))%s",
                healthy,
                said,
                "is" if len(others) == 1 else "are",
                healthy,
                _merge_hint(data, source_of, "; merge them"),
            )
        return
    why = [f"{healthy!r} is named like a tumor class"] if tumor_like(healthy) else []
    if others:
        why.append(f"{said} {'is' if len(others) == 1 else 'are'} named like a healthy class")
    if why:
        log.warning(
            "the no-tumor class (--healthy) is %r, but %s: their names say the opposite; check "
            "--healthy (the model's tumor probability is 1 - P(%s))",
            healthy,
            " and ".join(why),
            healthy,
        )


def _warn_many_healthy(names: list[str], data: tuple[str, ...], source_of: dict[str, str]) -> None:
    """Warn when a K-class task has no healthy class because two or more of its classes are
    named like one (``no`` and ``notumor`` of a merged store): the model then reports no
    tumor probability and ``is_tumor``, and learns the healthy slices of two collections as
    two classes. The two-class counterpart (two healthy-like names) is refused, since no
    positive class can be told; a K-class task may have no healthy class (tumor types only),
    so this one trains, with the ways out: ``--healthy`` or a class map that merges them
    (``_merge_hint``)."""
    found = [n for n in names if healthy_like(n)]
    if len(found) < 2:
        return
    log.warning(
        "the classes %s are %s named like a healthy (no-tumor) class, so the task has no "
        "healthy class: the model will report no tumor probability and learns them as "
        "separate classes; name the one healthy class with --healthy%s",
        " and ".join(map(repr, found)),
        "both" if len(found) == 2 else "all",
        _merge_hint(data, source_of, ", or merge them"),
    )


def _merge_hint(data: tuple[str, ...], source_of: dict[str, str], lead: str) -> str:
    """``lead`` + `` with --class-map 'yes=<tumor-like data classes>;no=<healthy-like>'``:
    a two-class map built from the data classes the task uses (by their classes' names), with
    the neutral ones it would leave out named; "" when no data class is tumor-like."""
    used = [d for d in data if d in source_of]
    tumor = [d for d in used if tumor_like(source_of[d])]
    well = [d for d in used if healthy_like(source_of[d])]
    other = [d for d in used if d not in tumor and d not in well]
    if not tumor or not well:
        return ""
    hint = f"{lead} with --class-map 'yes={','.join(tumor)};no={','.join(well)}'"
    if other:
        hint += f" (it leaves out {', '.join(other)}: add entries for them to keep them)"
    return hint


def _warn_renamed_onto_others(class_map: Any, data: Sequence[str]) -> None:
    """Warn when a class map gives a target the name of a data class it does not include
    (``glioma=meningioma`` while glioma/ exists; swaps): classes are matched by name later
    (evaluate, other collections), so such a map is most likely a typo."""
    for target, srcs in class_map:
        if target in data and target not in srcs:
            log.warning(
                "the class map names the class %r after the data class %r but gives it the "
                "slices of %s; check --class-map (a swap or typo here scores or trains every "
                "slice of those classes as the other)",
                target,
                target,
                ", ".join(map(repr, srcs)),
            )


def _held_by(name: str, data: Sequence[str], source_of: dict[str, str], like) -> bool:
    """Whether a task class is of a kind (``like``: ``tumor_like`` or ``healthy_like``) by the
    data classes it holds: it holds some, and every one is of that kind (``n=notumor``)."""
    srcs = [d for d in data if source_of.get(d) == name]
    return bool(srcs) and all(like(d) for d in srcs)


def _all_tumor_like(names: Sequence[str], data: Sequence[str], source_of: dict[str, str]) -> bool:
    """Whether every class of a task holds tumors: named like a tumor (``tumor_like``), or
    every data class mapped to it is (``a=glioma;b=meningioma``)."""
    return all(tumor_like(n) or _held_by(n, data, source_of, tumor_like) for n in names)


def _healthy_index(
    names: list[str],
    healthy: str | None,
    data: Sequence[str] = (),
    source_of: dict[str, str] | None = None,
) -> int | None:
    """The no-tumor class of a task: ``healthy`` (``--healthy``); a two-class task's negative
    class, or None when both classes hold tumors (``_all_tumor_like``); else the one class
    named like a healthy class (``healthy_like``), or, when none is, the one class whose data
    classes all are (``n=notumor``); None when there is no such one."""
    if healthy is not None:
        if healthy not in names:
            raise ConfigError(f"--healthy {healthy!r} is not one of the classes {names}.")
        return names.index(healthy)
    if len(names) == 2:
        # the negative class of a binary task, unless both hold tumors (glioma vs meningioma)
        return None if source_of and _all_tumor_like(names, data, source_of) else 0
    found = [k for k, n in enumerate(names) if healthy_like(n)]
    if not found and source_of:
        found = [k for k, n in enumerate(names) if _held_by(n, data, source_of, healthy_like)]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Comparison:
    """How a labelled data set is scored against a model trained on other classes.

    ``mode`` ``"same"``: the data's classes (after ``class_map``) are model classes; labels are
    model labels and the model's own decision rule applies. ``"tumor_vs_healthy"``: the data
    and the model each have a healthy class; every other class counts as tumor, the model's
    tumor probability is 1 − P(healthy), and recall is also reported per data class (e.g. per
    tumor type). ``class_names``: the scored classes, in ``"same"`` mode the model's, in
    ``"tumor_vs_healthy"`` the model's healthy class and the tumor side, named after the
    model's other class for a two-class model (its ``yes``: that is the class it predicts) and
    ``tumor`` (any class but the healthy one) for more. ``label_map``: data label → scored
    label (−1: left out). ``model_class_names``: the model's classes (``model_classes_of``).
    """

    mode: str
    class_names: tuple[str, ...]
    data_class_names: tuple[str, ...]
    label_map: np.ndarray
    model_healthy: int | None
    model_class_names: tuple[str, ...] = ()

    def data_classes_of(self, k: int) -> tuple[str, ...]:
        """The data classes scored as scored class ``k`` (``class_names[k]``)."""
        return tuple(d for j, d in enumerate(self.data_class_names) if self.label_map[j] == k)

    def model_classes_of(self, k: int) -> tuple[str, ...]:
        """The model's classes that scored class ``k`` stands for: itself in ``"same"`` mode;
        in ``"tumor_vs_healthy"`` the healthy class (k = 0) or every other class (k = 1: a
        two-class model's positive class, a K-class model's tumor types). Empty when the
        model's classes were not given."""
        if not self.model_class_names:
            return ()
        if self.mode == "same":
            return (self.class_names[k],)
        h = self.model_healthy
        return tuple(n for i, n in enumerate(self.model_class_names) if (i == h) == (k == 0))

    def describe(self) -> str:
        """Which data classes are scored as which, in words."""
        groups = []
        for k, name in enumerate(self.class_names):
            groups.append(f"{name} = {' + '.join(self.data_classes_of(k)) or '(none)'}")
        left = [d for j, d in enumerate(self.data_class_names) if self.label_map[j] < 0]
        tail = f"; left out: {', '.join(left)}" if left else ""
        return f"{self.mode}: " + "; ".join(groups) + tail


def compare_classes(
    data_class_names: Sequence[str],
    model_class_names: Sequence[str],
    model_healthy: str | None,
    class_map: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> Comparison:
    """Decide how data with ``data_class_names`` are scored by a model.

    Every data class (after ``class_map``) named like a model class: scored as the model's
    classes (``"same"``). Otherwise, when the model has a healthy class, tumor vs no tumor: a
    data class is healthy when it is the model's healthy class or named like one
    (``healthy_like``), tumor when it is another model class or named like a tumor or tumor
    type (``tumor_like``: yes, tumor, glioma, ...). A data class that is neither is never
    guessed to be either.

    The data may hold one side only (an external tumor-only or healthy-only collection; the
    metrics that need the other side are then undefined, ``mriscan.metrics``): one class (after
    ``class_map``) that is a model class is scored as that class (``"same"``), except the
    model's healthy class of a K-class model, which is scored tumor vs no tumor (so that the
    specificity, the share of healthy slices given no tumor class, is reported); tumor classes
    without a healthy one, or one healthy class alone, are scored tumor vs no tumor.

    Tumor vs no tumor scores two classes (``Comparison.class_names``): the model's healthy
    class and, for a two-class model, its other class (a yes/no model's ``yes``: the class it
    predicts, whatever the data's tumor classes are called), for a K-class model ``tumor``
    (any of its other classes).

    Raises
    ------
    ConfigError
        When the classes cannot be matched: a data class that is neither a model class nor
        named like a tumor or healthy class (named, with the ``--class-map`` that maps or leaves
        it out), a class map target that is neither (named, with the model's classes to
        rename it to), two healthy classes, or a model without a healthy class. The message
        lists both sides and the way out.
    """
    data = tuple(data_class_names)
    model = tuple(model_class_names)
    sides = f"The data have classes {list(data)}, the model {list(model)}."
    if class_map:
        check_class_map(class_map, min_targets=1)  # one class may be scored (not trained)
        _warn_renamed_onto_others(class_map, data)
        source_of = {s: t for t, srcs in class_map for s in srcs}
        unknown = sorted(set(source_of) - set(data))
        if unknown:
            raise ConfigError(
                f"The class map names {unknown}, which are not classes of the data. {sides}"
                f"{_case_hint(unknown, data)} {_map_hint(data, model, model_healthy)}"
            )
    else:
        source_of = {d: d for d in data}
    targets = set(source_of.values())
    # one class alone is scored as that model class, but the healthy class of a K-class model
    # tumor vs no tumor (its specificity)
    alone_healthy = len(targets) == 1 and len(model) > 2 and targets == {model_healthy}
    if targets <= set(model) and not alone_healthy:
        lm = np.array([model.index(source_of[d]) if d in source_of else -1 for d in data])
        h = model.index(model_healthy) if model_healthy in model else None
        return Comparison("same", model, data, lm.astype(np.int64), h, model)
    if model_healthy is None or model_healthy not in model:
        raise ConfigError(
            f"{sides} The model has no healthy class, so it cannot score tumor vs no tumor; "
            f"every class scored must be one of its classes. {_map_hint(data, model, None)}"
        )
    healthy_t = sorted(t for t in targets if t == model_healthy or healthy_like(t))
    tumor_t = sorted(t for t in targets if t not in healthy_t and ((t in model) or tumor_like(t)))
    neither = sorted(targets - set(healthy_t) - set(tumor_t))
    if neither and class_map:
        raise ConfigError(_target_hint(neither, class_map, model))
    if neither:
        many = len(neither) > 1
        what = "data class" + ("es" if many else "")
        raise ConfigError(
            f"The {what} {neither} {'are' if many else 'is'} neither one of the model's "
            f"classes {list(model)} nor named like a tumor or a healthy class, so mriscan "
            f"cannot tell how to score {'them' if many else 'it'} (never assumed to be a "
            "tumor). "
            f"{_map_hint(data, model, model_healthy, neither)}"
        )
    if len(healthy_t) > 1:
        found = f"healthy-like: {healthy_t}; tumor: {tumor_t or 'none'}"
        raise ConfigError(
            f"{sides} Scoring tumor vs no tumor needs one healthy class (or none, for tumor "
            f"slices only) among the data's classes ({found}). "
            f"{_map_hint(data, model, model_healthy)}"
        )
    healthy = healthy_t[0] if healthy_t else None
    if len(model) > 2 and (spelled := _spelling_map(data, model)):
        log.warning(
            "the data's classes %s look like the model's %s spelled another way, so they are "
            "scored as tumor vs no tumor only; to score them as the model's classes, give "
            "--class-map '%s'",
            list(data),
            list(model),
            spelled,
        )
    lm = np.array([(0 if source_of[d] == healthy else 1) if d in source_of else -1 for d in data])
    # the tumor side is the class the model predicts: a two-class model's other class (its
    # "yes"), or "tumor" for any of a K-class model's tumor classes
    tumor = next(m for m in model if m != model_healthy) if len(model) == 2 else "tumor"
    return Comparison(
        "tumor_vs_healthy",
        (model_healthy, tumor),
        data,
        lm.astype(np.int64),
        model.index(model_healthy),
        model,
    )


def _class_key(name: str) -> str:
    """A class name compared loosely: case, ``_``, ``-``, spaces and a ``tumor`` suffix of a
    tumor type ignored (``Glioma_Tumor`` and ``glioma``, ``No_Tumor`` and ``notumor`` agree)."""
    n = _norm(name)
    for suffix in ("tumor", "tumour"):
        if n.endswith(suffix) and n[: -len(suffix)] in TUMOR_TYPE_NAMES:
            return n[: -len(suffix)]  # glioma_tumor -> glioma
    return n.replace("tumour", "tumor")


def _spelling_map(data: Sequence[str], model: Sequence[str]) -> str:
    """``--class-map`` text mapping each data class to the one model class spelled like it
    (``_class_key``), in the model's class order, or "" unless every data class has exactly
    one such model class and some name is spelled otherwise. The data may hold some of the
    model's classes only (a tumor-only collection, a subset of the types)."""
    sources: dict[str, list[str]] = {}
    for d in data:
        same = [m for m in model if _class_key(m) == _class_key(d)]
        if len(same) != 1:
            return ""
        sources.setdefault(same[0], []).append(d)
    if all(srcs == [m] for m, srcs in sources.items()):
        return ""
    return ";".join(f"{m}={','.join(sources[m])}" for m in model if m in sources)


def _target_hint(
    neither: Sequence[str],
    class_map: tuple[tuple[str, tuple[str, ...]], ...],
    model: tuple[str, ...],
) -> str:
    """Why class map targets ``neither`` (no model class, not named like a tumor or healthy
    class) are refused, and the way out: rename them to the model's classes (targets are the
    model's classes, sources the data's), with the corrected map when one target and one
    unused model class leave no choice."""
    many = len(neither) > 1
    names = ", ".join(map(repr, neither))
    head = (
        f"The class map's target{'s' if many else ''} {names} {'are' if many else 'is'} not "
        f"one of the model's classes {list(model)} (nor named like a tumor or a healthy "
        "class, which would score tumor vs no tumor). In --class-map "
        "'MODEL_CLASS=DATA_CLASS[,DATA_CLASS...];...' each target is one of the model's "
        "classes and the sources are the data's"
    )
    free = [m for m in model if m not in {t for t, _ in class_map}]
    if len(neither) == 1 and len(free) == 1:
        fixed = ";".join(
            f"{free[0] if t == neither[0] else t}={','.join(srcs)}" for t, srcs in class_map
        )
        return f"{head}: rename {neither[0]!r} to {free[0]!r}, e.g. --class-map '{fixed}'."
    return f"{head}: rename {'them' if many else 'it'} to one of {list(model)}."


def _map_hint(
    data: tuple[str, ...],
    model: tuple[str, ...],
    model_healthy: str | None,
    unknown: Sequence[str] = (),
) -> str:
    """The way out of a failed match: the form of ``--class-map`` (targets are the model's
    classes, sources the data's) and, where the names allow one, an example built from them
    that leaves ``unknown`` out."""
    form = (
        "Map the data's classes onto the model's with --class-map 'MODEL_CLASS=DATA_CLASS[,"
        "DATA_CLASS...];...' (each target is one of the model's classes; data classes not "
        "named are left out)"
    )
    tumor_target = None
    if model_healthy in model and len(model) == 2:
        tumor_target = next(m for m in model if m != model_healthy)
    groups: dict[str, list[str]] = {}
    for d in data:
        if d in unknown:
            continue
        if d in model:
            t = d
        elif model_healthy in model and healthy_like(d):
            t = model_healthy
        elif tumor_target is not None and tumor_like(d):
            t = tumor_target
        else:
            continue
        groups.setdefault(t, []).append(d)
    if len(groups) < 2:
        return form + "."
    example = ";".join(f"{t}={','.join(srcs)}" for t, srcs in groups.items())
    if not unknown:
        return f"{form}, e.g. --class-map '{example}'."
    names = ", ".join(unknown)
    into = model_healthy if model_healthy in groups else next(iter(groups))
    return (
        f"{form}: --class-map '{example}' leaves {names} out; to score {unknown[0]} as one of "
        f"the model's classes instead, add it to that class's list (e.g. "
        f"'{into}={','.join([*groups[into], unknown[0]])}' scores it as {into})."
    )
