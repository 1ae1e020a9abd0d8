"""Metrics against hand-computed references on small known cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mriscan.metrics as mx
from mriscan.metrics import (
    binary_metrics,
    bootstrap_ci,
    confusion_matrix,
    roc_auc,
    roc_curve,
    youden_threshold,
)


def _auc_pairs(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_known_case():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])
    m = binary_metrics(y, p, threshold=0.5)
    # predicted: 0 1 1 0 1 0 -> tp=2 fn=1 tn=2 fp=1
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["per_class"]["yes"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["no"]["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)


@pytest.mark.parametrize("seed", range(10))
def test_auc_equals_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    p = rng.integers(0, 6, 40) / 5.0  # many ties
    assert roc_auc(y, p) == pytest.approx(_auc_pairs(y, p))
    fpr, tpr, _ = roc_curve(y, p)
    assert np.trapezoid(tpr, fpr) == pytest.approx(_auc_pairs(y, p))
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_degenerate_cases():
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert confusion_matrix([0, 1, 1], [0, 0, 1]).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0, 1], [0.1])


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.7
    assert binary_metrics(y, p, threshold=t)["accuracy"] == 1.0


def test_balanced_platt_threshold_is_the_equal_prior_crossing():
    """Two Gaussian score clouds in log-odds, centred at -2 and +1 with equal spread: the
    balanced Bayes cut lies midway (-0.5), whatever the class ratio; Youden's J on a small
    sample lands wherever the two or three extreme slices put it."""
    rng = np.random.default_rng(0)
    for n_pos, n_neg in ((2000, 2000), (400, 3600)):
        x = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(-2.0, 1.0, n_neg)]
        y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
        t = mx.balanced_platt_threshold(y, 1 / (1 + np.exp(-x)))
        assert np.log(t / (1 - t)) == pytest.approx(-0.5, abs=0.12)


def test_balanced_platt_threshold_is_finite_on_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = mx.balanced_platt_threshold(y, p)
    assert 0.3 < t < 0.7
    assert binary_metrics(y, p, threshold=t)["accuracy"] == 1.0


def test_a_model_that_ranks_backwards_gets_a_stand_in_threshold_that_says_so(caplog):
    with pytest.raises(ValueError, match="both classes"):
        mx.balanced_platt_threshold(np.ones(4, int), np.full(4, 0.7))
    y = np.array([0, 0, 0, 1, 1, 1])
    backwards = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    with pytest.raises(mx.UndefinedThresholdError, match="do not rank class 1 above class 0"):
        mx.balanced_platt_threshold(y, backwards)
    with caplog.at_level("WARNING"):
        t, words = mx.choose_threshold(y, backwards)
    assert t == 0.5 and words == mx.UNDEFINED_RULE and "means nothing" in caplog.text


def test_choose_threshold_pools_training_predictions():
    """Validation alone is balanced at 0; with training scores that sit lower the cut moves."""
    yv, pv = np.array([0, 0, 1, 1]), np.array([0.3, 0.45, 0.55, 0.7])
    alone, words = mx.choose_threshold(yv, pv)
    yt = np.r_[np.zeros(50, int), np.ones(50, int)]
    pt = np.r_[np.linspace(0.01, 0.2, 50), np.linspace(0.25, 0.5, 50)]
    pooled, _ = mx.choose_threshold(yv, pv, yt, pt)
    assert abs(alone - 0.5) < 0.02 and pooled < 0.35
    assert words == mx.THRESHOLD_RULE_TEXT["platt"]
    assert mx.choose_threshold(yv, pv, rule="youden")[1] == mx.THRESHOLD_RULE_TEXT["youden"]


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    lo, hi = bootstrap_ci(y, p, roc_auc, n_boot=300)
    assert lo < roc_auc(y, p) < hi and hi - lo < 0.2


def test_multiclass_metrics_agree_with_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = mx.multiclass_metrics(y, prob, ("a", "b", "c", "d"))
    pred = prob.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    p, r, _, _ = skm.precision_recall_fscore_support(y, pred)
    for k, name in enumerate("abcd"):
        assert m["per_class"][name]["recall"] == pytest.approx(r[k])
        assert m["per_class"][name]["precision"] == pytest.approx(p[k])
        assert m["per_class"][name]["roc_auc"] == pytest.approx(
            skm.roc_auc_score(y == k, prob[:, k])
        )
    assert m["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr"))
    assert np.allclose(np.array(m["confusion_matrix_row_percent"]).sum(axis=1), 100)


def test_undefined_metrics_are_nan_not_zero():
    # no positive slice: sensitivity and the positive class's recall are undefined
    m = mx.binary_metrics(np.zeros(5, int), np.full(5, 0.2), threshold=0.5)
    assert np.isnan(m["sensitivity"]) and np.isnan(m["roc_auc"])
    # balanced accuracy is (sens + spec) / 2: undefined with sensitivity, not the specificity
    assert m["specificity"] == 1.0 and np.isnan(m["balanced_accuracy"])
    assert np.isnan(m["per_class"]["yes"]["recall"]) and np.isnan(m["per_class"]["yes"]["f1"])
    # a class absent in a K-class fold: its recall and AUC are undefined, left out of means
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = mx.multiclass_metrics(y, prob, ("a", "b", "c"))
    assert np.isnan(m["per_class"]["c"]["recall"]) and np.isnan(m["per_class"]["c"]["roc_auc"])
    assert m["balanced_accuracy"] == 1.0 and m["macro_roc_auc"] == 1.0


def test_group_bootstrap_draws_whole_groups():
    groups = np.array([0, 0, 0, 1, 2, 2])
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = mx.group_resample(groups, rng)
        drawn = groups[idx]
        for g, size in ((0, 3), (1, 1), (2, 2)):
            assert (drawn == g).sum() % size == 0  # a group comes whole or not at all
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.3, 0.1])
    ci = mx.group_bootstrap_ci(
        lambda s: mx.binary_metrics(y[s], p[s]), groups, ("accuracy", "roc_auc"), n_boot=50
    )
    assert ci["accuracy"] == [1.0, 1.0] and ci["roc_auc"][0] == 1.0


def test_a_ci_resting_on_fewer_than_two_groups_is_undefined_not_zero_width():
    """Tester 18: two patients, one per class, gave balanced accuracy [0.667, 0.667]. A CI
    that rests on one group (in all, or holding the class the metric needs) is NaN; the
    metrics that draws of two groups can vary keep their interval."""
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.7, 0.2, 0.3, 0.1])  # group 5: 2 of 3 right, group 8: 3 of 3
    one_each = np.array([5, 5, 5, 8, 8, 8])  # one group per class

    def metric(s):
        return mx.binary_metrics(y[s], p[s])

    keys = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
    plain = mx.group_bootstrap_ci(metric, one_each, keys, n_boot=200)
    assert plain["balanced_accuracy"][0] == plain["balanced_accuracy"][1]  # the old zero width
    ci = mx.group_bootstrap_ci(
        metric, one_each, keys, n_boot=200, labels=y, needs=mx.BINARY_CI_NEEDS
    )
    for k in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        assert np.isnan(ci[k]).all(), k
    assert ci["accuracy"][0] < ci["accuracy"][1]  # two groups: draws of one or the other
    assert mx.ci_groups(one_each, keys, y, mx.BINARY_CI_NEEDS) == {
        "accuracy": 2, "balanced_accuracy": 1, "roc_auc": 1, "sensitivity": 1, "specificity": 1,
    }  # fmt: skip
    alone = mx.group_bootstrap_ci(metric, np.zeros(6, int), ("accuracy",), n_boot=50)
    assert np.isnan(alone["accuracy"]).all()  # one group in all
    # two positive groups, one negative: the sensitivity has its interval, the others not
    g = np.array([1, 1, 2, 3, 3, 3])
    ci = mx.group_bootstrap_ci(metric, g, keys, n_boot=200, labels=y, needs=mx.BINARY_CI_NEEDS)
    assert ci["sensitivity"][0] < ci["sensitivity"][1] and np.isnan(ci["specificity"]).all()
    with pytest.raises(ValueError, match="labels are missing"):
        mx.ci_groups(g, keys, None, mx.BINARY_CI_NEEDS)


def test_a_class_never_found_has_f1_zero_not_undefined():
    # a model that calls every slice class 0: the other classes occur, are never found
    y = np.array([0, 1, 2, 3] * 3)
    prob = np.tile([0.7, 0.1, 0.1, 0.1], (12, 1))
    m = mx.multiclass_metrics(y, prob, ("a", "b", "c", "d"))
    assert [m["per_class"][c]["f1"] for c in "bcd"] == [0.0, 0.0, 0.0]
    assert np.isnan(m["per_class"]["b"]["precision"])  # never predicted: precision undefined
    assert m["macro_f1"] == pytest.approx((2 * 3 / (12 + 3)) / 4)  # a: P 0.25, R 1 -> F1 0.4
    b = mx.binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert b["per_class"]["yes"]["f1"] == 0.0 and b["macro_f1"] == pytest.approx((2 / 3) / 2)


def test_an_absent_class_is_undefined_whether_or_not_it_was_predicted():
    """Tester 16 finding 2: a class with no true slice has recall and F1 undefined, left out
    of macro-F1, also when the model predicted it (it was counted as F1 0 then)."""
    from sklearn import metrics as skm

    # K = 3, class c absent; predicted for slice 2 (first), never (second: slice 2 called b)
    y = np.array([0, 0, 0, 1, 1, 1])
    cases = (
        ([0, 0, 2, 1, 1, 0], True, (2 / 3 + 4 / 5) / 2),  # a: 2 of 3 called a, 2 of 3 found
        ([0, 0, 1, 1, 1, 0], False, 2 / 3),
    )
    for pred, c_predicted, macro in cases:
        prob = np.eye(3)[pred] * 0.8 + 0.1 / 3
        m = mx.multiclass_metrics(y, prob, ("a", "b", "c"))
        c = m["per_class"]["c"]
        assert c["support"] == 0 and np.isnan(c["recall"]) and np.isnan(c["f1"])
        assert np.isnan(c["roc_auc"])
        # precision of c: 0 of 1 right when predicted, undefined when never predicted
        assert (c["precision"] == 0.0) if c_predicted else np.isnan(c["precision"])
        assert m["macro_f1"] == pytest.approx(macro)  # over a and b only; was (.67+.8+0)/3
        assert m["macro_f1"] == pytest.approx(
            skm.f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)
        )
        # mean recall over the classes present, as scikit-learn (which warns that y_pred
        # holds a class y_true lacks)
        assert m["balanced_accuracy"] == pytest.approx(2 / 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_binary_with_one_class_absent():
    """Tester 16 finding 2, the yes/no case: no 'no' slice but some predicted 'no'. Recall and
    F1 of 'no' are undefined; balanced accuracy is undefined with specificity (it was the
    sensitivity), and so is macro-F1: with one class present, the F1 of 'yes' has precision 1
    by construction (it was (0 + F1_yes) / 2, then F1_yes alone, read as a two-sided score)."""
    y = np.ones(20, int)
    prob = np.r_[np.full(18, 0.9), np.full(2, 0.1)]  # 18 found, 2 called 'no'
    m = binary_metrics(y, prob, threshold=0.5)
    no = m["per_class"]["no"]
    assert no["support"] == 0 and no["precision"] == 0.0
    assert np.isnan(no["recall"]) and np.isnan(no["f1"])
    assert m["sensitivity"] == pytest.approx(0.9) and np.isnan(m["specificity"])
    assert np.isnan(m["balanced_accuracy"]) and np.isnan(m["roc_auc"])
    f1_yes = 2 * 18 / (18 + 20)
    assert m["per_class"]["yes"]["f1"] == pytest.approx(f1_yes)
    assert m["per_class"]["yes"]["precision"] == 1.0 and np.isnan(m["macro_f1"])
    k = mx.multiclass_metrics(np.zeros(6, int), np.eye(3)[[0, 0, 0, 1, 2, 0]], ("a", "b", "c"))
    assert k["per_class"]["a"]["recall"] == pytest.approx(4 / 6)  # defined per class
    assert np.isnan(k["macro_f1"]) and np.isnan(k["balanced_accuracy"])  # one class present
    # both classes present: balanced accuracy and macro-F1 as scikit-learn's
    from sklearn import metrics as skm

    y2 = np.array([0, 0, 0, 1, 1, 1, 1])
    p2 = np.array([0.1, 0.7, 0.2, 0.9, 0.3, 0.8, 0.6])
    m2 = binary_metrics(y2, p2, threshold=0.5)
    pred2 = (p2 >= 0.5).astype(int)
    assert m2["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y2, pred2))
    assert m2["macro_f1"] == pytest.approx(skm.f1_score(y2, pred2, average="macro"))


def test_no_slice_at_all_gives_undefined_not_zero():
    m = mx.multiclass_metrics(np.empty(0, int), np.empty((0, 3)), ("a", "b", "c"))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc"):
        assert np.isnan(m[key]), key
