"""mriscan.tasks: class maps, the positive and healthy class, matching another collection."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.config import TaskConfig, parse_class_map
from mriscan.errors import ConfigError
from mriscan.tasks import compare_classes, resolve_task

FOUR = ("glioma", "meningioma", "notumor", "pituitary")
YES_NO = parse_class_map("yes=glioma,meningioma,pituitary;no=notumor")


@pytest.mark.parametrize("order", [("no", "yes"), ("yes", "no")])
def test_positive_class_never_depends_on_order(order):
    task = resolve_task(order)
    assert task.class_names == ("no", "yes")
    # data label -> model label follows the names, whatever the folder order
    assert [task.class_names[task.label_map[j]] for j in range(2)] == list(order)


@pytest.mark.parametrize(
    ("names", "positive"),
    [
        (("normal", "tumor"), "tumor"),
        (("abnormal", "control"), "abnormal"),
        (("a", "healthy"), "a"),
    ],
)
def test_positive_class_by_name(names, positive):
    assert resolve_task(names).class_names[1] == positive


def test_ambiguous_binary_names_need_positive():
    with pytest.raises(ConfigError, match="--positive"):
        resolve_task(("cats", "dogs"))
    task = resolve_task(("cats", "dogs"), TaskConfig(positive="cats"))
    assert task.class_names == ("dogs", "cats")
    with pytest.raises(ConfigError, match="not one of the classes"):
        resolve_task(("cats", "dogs"), TaskConfig(positive="birds"))


def test_class_map_merges_and_leaves_out():
    task = resolve_task(FOUR, TaskConfig(class_map=YES_NO))
    assert task.class_names == ("no", "yes") and task.binary
    assert task.label_map.tolist() == [1, 1, 0, 1]
    three = resolve_task(
        FOUR, TaskConfig(class_map=parse_class_map("g=glioma;m=meningioma;p=pituitary"))
    )
    assert three.class_names == ("g", "m", "p") and three.label_map.tolist() == [0, 1, -1, 2]
    assert three.healthy is None
    assert three.kept(np.array([0, 2, 3])).tolist() == [0, 2]
    with pytest.raises(ConfigError, match="names \\['gliomas'\\]"):
        resolve_task(FOUR, TaskConfig(class_map=parse_class_map("yes=gliomas;no=notumor")))


def test_four_classes_find_the_healthy_one():
    task = resolve_task(FOUR)
    assert task.num_classes == 4 and task.class_names[task.healthy] == "notumor"
    with pytest.raises(ConfigError, match="--positive applies to two-class"):
        resolve_task(FOUR, TaskConfig(positive="glioma"))


def test_class_map_parsing_errors():
    assert parse_class_map("a = x, y\n# comment\nb=z") == (("a", ("x", "y")), ("b", ("z",)))
    for bad in ("a", "a=", "=x", "a=x;a=y", "a=x;b=x", "a=x"):
        with pytest.raises(ConfigError):
            parse_class_map(bad)


def test_compare_collections():
    # a 4-class model on a yes/no set: tumor vs no tumor
    c = compare_classes(("no", "yes"), FOUR, "notumor")
    assert c.mode == "tumor_vs_healthy" and c.label_map.tolist() == [0, 1]
    # a yes/no model on the 4-class set: every tumor type is "tumor"
    c = compare_classes(FOUR, ("no", "yes"), "no")
    assert c.mode == "tumor_vs_healthy" and c.label_map.tolist() == [1, 1, 0, 1]
    # the same classes: scored as they are; a map onto the model's names
    assert compare_classes(FOUR, FOUR, "notumor").mode == "same"
    c = compare_classes(FOUR, ("no", "yes"), "no", YES_NO)
    assert c.mode == "same" and c.label_map.tolist() == [1, 1, 0, 1]
    with pytest.raises(ConfigError, match="--class-map"):
        compare_classes(("cats", "dogs"), FOUR, "notumor")


def test_positive_and_healthy_must_agree():
    with pytest.raises(ConfigError, match="cannot also be the no-tumor class"):
        resolve_task(("a", "b"), TaskConfig(positive="a", healthy="a"))
    # in a two-class task, naming the healthy class settles the positive one
    assert resolve_task(("a", "b"), TaskConfig(healthy="a")).class_names == ("a", "b")
    assert resolve_task(("a", "b"), TaskConfig(healthy="b")).class_names == ("b", "a")
    assert parse_class_map("\ufeffyes=glioma;no=notumor")[0][0] == "yes"  # a BOM is dropped
