"""Classification metrics and the decision-threshold rule.

Plain NumPy, computed from the confusion matrix and the ranks of the scores, so that undefined
cases are handled one way everywhere; the tests check every number against scikit-learn's
(``precision_recall_fscore_support``, ``f1_score``, ``balanced_accuracy_score``,
``roc_auc_score``). A number that is undefined on the data at hand (a class absent, a class
never predicted) is NaN — written as ``null`` in JSON (``mriscan.artifacts.write_json``) and
left out of means — never 0.

The one rule (``_per_class``), used by ``train``, ``evaluate`` and ``cv`` alike:

- a class with no true sample (support 0) has recall and F1 undefined, whether or not the model
  predicted it, and is left out of macro-F1 and of the balanced accuracy; so macro-F1 is the
  mean F1 over the classes present in ``y_true`` (``f1_score(y_true, y_pred,
  labels=<classes present>, average="macro")``; scikit-learn's default ``labels`` also counts
  a class that is only predicted, as F1 0, so the same model's macro-F1 would depend on
  whether it happened to predict an absent class);
- a class never predicted has precision undefined (scikit-learn's ``zero_division`` case);
  if it is present its recall and F1 are 0 (it was never found), so a model that ignores a
  class is not rewarded;
- K-class balanced accuracy is the mean recall over the classes present in ``y_true``, as
  ``sklearn.metrics.balanced_accuracy_score``; the binary one is (sensitivity + specificity) / 2
  and undefined when either is (no tumor or no healthy sample): it is never the sensitivity
  alone under another name.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = [
    "ARGMAX_RULE",
    "BINARY_CI_NEEDS",
    "THRESHOLD_RULE",
    "THRESHOLD_RULE_TEXT",
    "UNDEFINED_RULE",
    "UndefinedThresholdError",
    "balanced_platt_threshold",
    "binary_metrics",
    "bootstrap_ci",
    "choose_threshold",
    "ci_groups",
    "confusion_matrix",
    "decision_rule",
    "group_bootstrap_ci",
    "group_resample",
    "macro_f1",
    "mean_of_defined",
    "multiclass_metrics",
    "roc_auc",
    "roc_curve",
    "youden_threshold",
]


def _check(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a label/probability pair."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(prob, np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(
            f"y_true and prob must have the same length. Received {y.size} and {p.size}."
        )
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1.")
    return y, p


def roc_curve(y_true: np.ndarray, prob: np.ndarray):
    """False- and true-positive rates at every distinct threshold (descending).

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        Starting at (0, 0) with threshold +inf.
    """
    y, p = _check(y_true, prob)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.flatnonzero(np.diff(p)) if p.size else np.array([], np.int64)
    ends = np.r_[distinct, p.size - 1] if p.size else np.array([], np.int64)
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return fpr, tpr, np.r_[np.inf, p[ends]]


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outranks a negative; ties count half)."""
    y, p = _check(y_true, prob)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, np.float64)
    sp = p[order]
    i = 0
    while i < sp.size:
        j = i
        while j + 1 < sp.size and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Counts ``cm[true, predicted]``, ndarray of shape (n_classes, n_classes), int64."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity − 1 (Youden 1950): mriscan's rule until
    ``choose_threshold`` replaced it; kept for comparison (experiments/threshold_rules.py)."""
    fpr, tpr, thr = roc_curve(y_true, prob)
    if len(thr) < 2:
        return 0.5
    k = int(np.argmax(tpr - fpr)) if len(thr) > 1 else 0
    k = max(k, 1)  # never +inf
    # midway to the next lower score keeps the cut robust to tiny shifts
    lower = thr[k + 1] if k + 1 < len(thr) else 0.0
    return float(np.clip(0.5 * (thr[k] + lower), 1e-6, 1 - 1e-6))


#: each ``mriscan.config.THRESHOLD_RULES`` name in words, as model cards and metrics state it
THRESHOLD_RULE_TEXT = {
    "platt": "class-balanced Platt scaling of training and validation predictions, cut at 0.5",
    "youden": "Youden's J on the validation split",
}
#: the default rule in words
THRESHOLD_RULE = THRESHOLD_RULE_TEXT["platt"]
#: what a model card says when Platt scaling finds no cut (``UndefinedThresholdError``)
UNDEFINED_RULE = (
    "0.5, a stand-in: Platt scaling found no cut (the model does not rank the positive class "
    "above the other on its training and validation slices)"
)


class UndefinedThresholdError(ValueError):
    """The scores do not rank class 1 above class 0: no threshold separates them."""


ARGMAX_RULE = "most probable class"


def decision_rule(binary: bool, rule: str = "platt") -> str:
    """How a model's class is decided: ``THRESHOLD_RULE_TEXT[rule]`` for two classes, else the
    most probable class (``ARGMAX_RULE``)."""
    return THRESHOLD_RULE_TEXT[rule] if binary else ARGMAX_RULE


def balanced_platt_threshold(y_true: np.ndarray, prob: np.ndarray, *, c: float = 1.0) -> float:
    """Score at which a class-balanced logistic fit of the labels on the scores' log-odds
    crosses 0.5: the Bayes threshold for equal class priors.

    Platt scaling (Platt 1999, "Probabilistic outputs for support vector machines"), fitted by
    ``sklearn.linear_model.LogisticRegression(class_weight="balanced", C=c)`` on
    ``logit(prob)``; the L2 penalty keeps the slope finite when the scores separate the
    classes. Unlike the argmax of Youden's J, the cut rests on every score, not on the one or
    two slices where the ROC curve turns, so it moves little from one small split to the next
    (experiments/ACCURACY.md row 66).

    Parameters
    ----------
    y_true : ndarray of shape (n,), int in {0, 1}
    prob : ndarray of shape (n,), float
        P(class 1), clipped to [1e-6, 1 − 1e-6] before the log-odds.
    c : float
        Inverse L2 strength of scikit-learn's ``C``.

    Returns
    -------
    float in [1e-6, 1 − 1e-6]
        The threshold on ``prob``.

    Raises
    ------
    UndefinedThresholdError
        If the fitted slope is not positive (the scores do not rank class 1 above class 0).
    ValueError
        If the lengths differ or ``y_true`` does not hold both classes.
    """
    from sklearn.linear_model import LogisticRegression

    y, p = _check(y_true, prob)
    if len(np.unique(y)) != 2 or not set(np.unique(y).tolist()) <= {0, 1}:
        found = sorted(set(y.tolist()))
        raise ValueError(f"A decision threshold needs slices of both classes 0 and 1; got {found}.")
    q = np.clip(p, 1e-6, 1 - 1e-6)
    x = np.log(q / (1 - q))[:, None]
    fit = LogisticRegression(class_weight="balanced", C=c).fit(x, y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if a <= 0:
        raise UndefinedThresholdError(
            f"The scores do not rank class 1 above class 0 (calibration slope {a:.3g})."
        )
    return float(np.clip(1 / (1 + np.exp(b / a)), 1e-6, 1 - 1e-6))


def choose_threshold(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_train: np.ndarray | None = None,
    p_train: np.ndarray | None = None,
    *,
    rule: str = "platt",
) -> tuple[float, str]:
    """The decision threshold of a binary mriscan model (``THRESHOLD_RULE_TEXT[rule]``).

    The one place the rules live: ``train`` and ``cross_validate`` both call it (through
    ``mriscan.training.fit.fit_and_calibrate``), never with test slices.

    - ``"platt"`` (the default, ``FitConfig.threshold_rule``): ``balanced_platt_threshold`` on
      the validation and (a sample of) the training predictions together. It replaced Youden's
      J, whose cut moved from 0.14 to 0.62 between seeds on 34-slice validation splits: on 13
      cross-validations and 6 cross-collection runs already in the accuracy log it raised
      brain_mri CV accuracy by 0.015 on average and balanced accuracy on another collection by
      0.017 (experiments/threshold_carry.py, ACCURACY.md row 66).
    - ``"youden"``: ``youden_threshold`` (Youden 1950) on the validation predictions alone
      (training ones ignored), the rule before; older rows of the log re-run with it.

    Parameters
    ----------
    y_val, p_val : ndarray of shape (n,)
        Validation labels in {0, 1} and P(class 1).
    y_train, p_train : ndarray of shape (m,), optional
        Training labels and P(class 1) of the same model, pooled with the validation ones.

    Returns
    -------
    (threshold, rule in words) : tuple of float and str
        The words are ``THRESHOLD_RULE_TEXT[rule]``, or ``UNDEFINED_RULE`` with the threshold
        0.5 (and a warning logged) when Platt scaling finds no cut: the model does not rank
        the positive class above the other even on the slices it was trained on.

    Raises
    ------
    ValueError
        As ``balanced_platt_threshold``: mismatched lengths, or one class only; or an unknown
        ``rule``.
    """
    if rule == "youden":
        return youden_threshold(y_val, p_val), THRESHOLD_RULE_TEXT["youden"]
    if rule != "platt":
        raise ValueError(f"Unknown threshold rule {rule!r}; known: {sorted(THRESHOLD_RULE_TEXT)}.")
    y, p = np.asarray(y_val), np.asarray(p_val)
    if y_train is not None and p_train is not None:
        y = np.concatenate([y, np.asarray(y_train)])
        p = np.concatenate([p, np.asarray(p_train)])
    try:
        return balanced_platt_threshold(y, p), THRESHOLD_RULE_TEXT["platt"]
    except UndefinedThresholdError as exc:
        logging.getLogger(__name__).warning(
            "%s The decision threshold is set to 0.5 and means nothing (the model card says "
            "so). Train longer, or check the labels.",
            exc,
        )
        return 0.5, UNDEFINED_RULE


def _safe_div(a: float, b: float) -> float:
    """a / b, or NaN (undefined) when b is 0."""
    return float(a / b) if b else float("nan")


def binary_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    class_names: tuple[str, ...] = ("no", "yes"),
) -> dict[str, Any]:
    """Accuracy, ROC AUC, sensitivity, specificity, per-class precision/recall/F1, confusion.

    Class 1 is the positive (tumor) class; a sample is predicted positive when
    ``prob >= threshold``. ``y_true``: int of shape (n,) in {0, 1}; ``prob``: float of shape
    (n,), the probability of class 1.

    Returns a dict: ``n``, ``threshold``, ``accuracy``, ``balanced_accuracy`` ((sensitivity +
    specificity) / 2; NaN when either is undefined), ``macro_f1`` (mean F1 over the classes
    present in ``y_true``), ``roc_auc`` (NaN unless both classes occur), ``sensitivity`` (NaN
    without a positive), ``specificity`` (NaN without a negative), ``per_class``
    (``_per_class``), ``confusion_matrix`` (2×2 counts, rows true) and ``class_names``.

    Raises
    ------
    ValueError
        If the lengths differ or ``y_true`` holds a label other than 0 and 1.
    """
    y, p = _check(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    cm = confusion_matrix(y, pred)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    per_class = _per_class(cm, class_names[:2])
    sens, spec = _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": _safe_div(tp + tn, y.size),
        "balanced_accuracy": 0.5 * (sens + spec),  # NaN when either is undefined
        "macro_f1": macro_f1(per_class),
        "roc_auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names[:2]),
    }


def mean_of_defined(values) -> float:
    """Mean of the defined values; NaN when none is defined."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _per_class(cm: np.ndarray, class_names) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true).

    ``cm``: int array (K, K) counts ``cm[true, predicted]``; ``class_names``: K str. Returns
    ``{name: {"precision", "recall", "f1", "support"}}``.

    The module's one rule: recall and F1 are undefined (NaN) for a class with no true sample
    (support 0), also when the model predicted it (then scikit-learn's ``f1_score`` gives 0;
    here it is left out of every mean rather than counted as 0); precision is undefined for a
    class never predicted. A class that occurs but is never found correctly has recall and
    F1 = 0 (scikit-learn's F-score, 2TP / (2TP + FP + FN)), so a model that ignores a class
    is not rewarded by a smaller macro mean.
    """
    out = {}
    for k, name in enumerate(class_names):
        tp_k = int(cm[k, k])
        predicted, actual = int(cm[:, k].sum()), int(cm[k, :].sum())
        prec = _safe_div(tp_k, predicted)
        rec = _safe_div(tp_k, actual)
        # 2PR/(P+R) = 2TP/(predicted + actual); undefined, like recall, without a true sample
        f1 = 2 * tp_k / (predicted + actual) if actual else float("nan")
        out[name] = {"precision": prec, "recall": rec, "f1": f1, "support": actual}
    return out


def macro_f1(per_class: dict[str, dict[str, float]]) -> float:
    """Mean F1 over the classes present (support > 0) of a ``_per_class`` dict; NaN when fewer
    than two classes are present.

    Equals scikit-learn's ``f1_score(y_true, y_pred, labels=<classes present in y_true>,
    average="macro")``: a class without a true sample is left out, not counted as F1 0. With
    one class present its precision is 1 by construction (no slice of another class can be
    mistaken for it), so its F1 would read as a two-sided score it is not: undefined instead.
    """
    present = [v["f1"] for v in per_class.values() if v["support"] > 0]
    return mean_of_defined(present) if len(present) >= 2 else float("nan")


def multiclass_metrics(
    y_true: np.ndarray, prob: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Metrics of a K-class prediction (K >= 2) by the most probable class.

    Parameters
    ----------
    y_true : ndarray of shape (n,), int in [0, K)
    prob : ndarray of shape (n, K), float; rows are class probabilities
    class_names : tuple of K str

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in
        ``y_true``, as ``sklearn.metrics.balanced_accuracy_score``; NaN with fewer than two
        present), ``macro_f1`` (mean F1 over the classes present in ``y_true``: ``macro_f1``;
        NaN with fewer than two), ``per_class`` (precision,
        recall, F1, support, one-vs-rest ``roc_auc``; undefined as ``_per_class`` says, the
        AUC when the class is absent or alone), ``macro_roc_auc`` (mean of the defined
        one-vs-rest AUCs), ``confusion_matrix`` (counts) and ``confusion_matrix_row_percent``
        (NaN rows for absent classes).

    Raises
    ------
    ValueError
        If shapes disagree or a label is outside [0, K).
    """
    y = np.asarray(y_true, np.int64).reshape(-1)
    p = np.asarray(prob, np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape != (y.size, k):
        raise ValueError(f"prob must have shape ({y.size}, {k}). Received {p.shape}.")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"y_true must hold labels in [0, {k}).")
    pred = p.argmax(axis=1) if y.size else np.empty(0, np.int64)
    cm = confusion_matrix(y, pred, n_classes=k)
    per_class = _per_class(cm, class_names)
    aucs = []
    for j, name in enumerate(class_names):
        auc = roc_auc((y == j).astype(np.int64), p[:, j])
        per_class[name]["roc_auc"] = auc
        aucs.append(auc)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(rows > 0, 100.0 * cm / np.maximum(rows, 1), np.nan)
    return {
        "n": int(y.size),
        "decision": ARGMAX_RULE,
        "accuracy": _safe_div(int((pred == y).sum()), y.size),
        # one class present: its recall alone, nothing balanced (undefined, as for two classes)
        "balanced_accuracy": mean_of_defined(present)
        if len(present := [v["recall"] for v in per_class.values() if v["support"] > 0]) >= 2
        else float("nan"),
        "macro_f1": macro_f1(per_class),
        "macro_roc_auc": mean_of_defined(aucs),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_row_percent": pct.tolist(),
        "class_names": list(class_names),
    }


def group_resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one bootstrap draw of whole groups (slices of one group — near-duplicates,
    one patient — are not independent, so they are drawn together)."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    drawn = rng.integers(0, uniq.size, uniq.size)
    return np.concatenate([members[g] for g in drawn]) if uniq.size else order


# the classes (label 0 negative, 1 positive) whose slices a binary metric is computed on: it
# is undefined without a slice of each, and its bootstrap varies only with the groups holding
# them (``mriscan.evaluate.undefined_metrics`` names the missing class from it too)
BINARY_CI_NEEDS: dict[str, tuple[int, ...]] = {
    "sensitivity": (1,),
    "specificity": (0,),
    "balanced_accuracy": (0, 1),
    "macro_f1": (0, 1),
    "roc_auc": (0, 1),
}


def ci_groups(
    groups: np.ndarray,
    keys: tuple[str, ...],
    labels: np.ndarray | None = None,
    needs: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, int]:
    """How many groups each key's bootstrap CI rests on: all distinct ``groups`` (n,), or, for
    a key in ``needs`` (with ``labels`` (n,) int), the fewest groups holding a sample of one
    of the classes it needs (e.g. ``BINARY_CI_NEEDS``: the specificity rests on the groups
    with a negative sample). Below 2 a bootstrap cannot estimate any spread: every draw
    repeats the same group(s), so the percentile interval has zero width.

    Raises
    ------
    ValueError
        ``needs`` without ``labels``, or ``labels`` of another length than ``groups``.
    """
    g = np.asarray(groups).reshape(-1)
    total = int(np.unique(g).size)
    if not needs:
        return {k: total for k in keys}
    if labels is None:
        raise ValueError("ci_groups: needs is given, labels are missing")
    y = np.asarray(labels).reshape(-1)
    if y.size != g.size:
        raise ValueError(f"ci_groups: {y.size} labels for {g.size} groups")
    per_class: dict[int, int] = {}

    def holding(c: int) -> int:
        if c not in per_class:
            per_class[c] = int(np.unique(g[y == c]).size)
        return per_class[c]

    return {k: min((holding(c) for c in needs[k]), default=total) if k in needs else total
            for k in keys}  # fmt: skip


def group_bootstrap_ci(
    metric,
    groups: np.ndarray,
    keys: tuple[str, ...],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    labels: np.ndarray | None = None,
    needs: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, list[float]]:
    """Percentile bootstrap CIs over groups: ``metric(indices) -> dict`` is evaluated on
    ``n_boot`` draws of whole groups; draws where a metric is undefined are left out.

    A key whose CI rests on fewer than 2 groups (``ci_groups`` with ``labels`` and ``needs``:
    fewer than 2 groups in all, or holding a class the metric needs) gets no interval: a
    bootstrap of one group only repeats it, and its zero-width interval would read as
    certainty (tester 18).

    Returns ``{key: [low, high]}`` (NaN when no draw defines it, or when it rests on fewer
    than 2 groups).
    """
    rng = np.random.default_rng(seed)
    rests_on = ci_groups(groups, keys, labels, needs)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    wanted = [k for k in keys if rests_on[k] >= 2]
    for _ in range(n_boot if wanted else 0):
        m = metric(group_resample(groups, rng))
        for k in wanted:
            v = m[k]
            if v is not None and np.isfinite(v):
                draws[k].append(float(v))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {
        k: [float(x) for x in np.percentile(v, [lo, hi])] if v else [float("nan")] * 2
        for k, v in draws.items()
    }


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    metric,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric(y_true, prob)``."""
    y, p = _check(y_true, prob)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() == y[idx].max():
            continue
        vals.append(metric(y[idx], p[idx]))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
