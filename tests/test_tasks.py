"""mriscan.tasks: class maps, the positive and healthy class, matching another collection."""

from __future__ import annotations

import logging

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


def test_an_unknown_data_class_is_never_scored_as_tumor():
    """A data class that is no model class and not named like a tumor or healthy class (a
    folder of healthy T2 slices named t2_axial) is refused, naming it and the class map that
    leaves it out (targets: the model's classes), instead of being counted as a tumor."""
    with pytest.raises(ConfigError) as err:
        compare_classes((*FOUR, "t2_axial"), FOUR, "notumor")
    msg = str(err.value)
    assert "['t2_axial'] is neither one of the model's classes" in msg
    assert "'glioma=glioma;meningioma=meningioma;notumor=notumor;pituitary=pituitary'" in msg
    assert "'notumor=notumor,t2_axial'" in msg
    # the map it shows works: the four matching classes are scored as K classes
    shown = parse_class_map(
        "glioma=glioma;meningioma=meningioma;notumor=notumor;pituitary=pituitary"
    )
    c = compare_classes((*FOUR, "t2_axial"), FOUR, "notumor", shown)
    assert c.mode == "same" and c.label_map.tolist() == [0, 1, 2, 3, -1]
    assert c.describe().endswith("left out: t2_axial")
    # a yes/no model: the unknown folder is refused too; the example maps onto yes/no
    with pytest.raises(ConfigError, match="'yes=glioma,meningioma,pituitary;no=notumor'"):
        compare_classes((*FOUR, "single"), ("no", "yes"), "no")
    # neutral names on both sides: refused, no example invented
    with pytest.raises(ConfigError, match=r"\['cats', 'dogs'\] are neither"):
        compare_classes(("cats", "dogs"), FOUR, "notumor")


def test_tumor_types_and_tumor_names_count_as_tumor():
    """glioma / meningioma / pituitary (and the Kaggle set's glioma_tumor, ...) are tumor
    classes by name; a tumor-like data class beside the model's classes makes tumor vs none."""
    c = compare_classes(("glioma_tumor", "meningioma_tumor", "no_tumor"), ("no", "yes"), "no")
    assert c.mode == "tumor_vs_healthy" and c.label_map.tolist() == [1, 1, 0]
    c = compare_classes(("glioma", "notumor", "yes"), FOUR, "notumor")
    assert c.mode == "tumor_vs_healthy" and c.label_map.tolist() == [1, 0, 1]
    # two healthy-like classes and no tumor one: refused, not guessed
    with pytest.raises(ConfigError, match=r"needs one healthy class \(or none"):
        compare_classes(("control", "no"), FOUR, "notumor")


def test_the_hint_maps_onto_the_model_s_classes():
    """A yes/no set on a model without a healthy class: the hint gives the form target=model
    class, never the yes=glioma,... example that maps the wrong way round."""
    with pytest.raises(ConfigError) as err:
        compare_classes(("no", "yes"), ("glioma", "meningioma", "pituitary"), None)
    msg = str(err.value)
    assert "no healthy class" in msg and "MODEL_CLASS=DATA_CLASS" in msg
    assert "yes=glioma" not in msg


@pytest.mark.parametrize(
    "names", [("healthy", "no_finding"), ("glioma", "meningioma"), ("tumor", "yes")]
)
def test_two_healthy_or_two_tumor_names_need_positive(names):
    with pytest.raises(ConfigError, match=r"Both classes .* --positive"):
        resolve_task(names)
    assert resolve_task(names, TaskConfig(positive=names[0])).class_names == names[::-1]


def test_a_positive_class_taken_beside_a_healthy_name_is_announced_as_a_guess():
    task = resolve_task(("healthy", "scans"))
    assert task.class_names == ("healthy", "scans") and task.positive_guess
    assert "(positive, guessed: 'healthy' is named like a healthy class" in task.describe()
    named = resolve_task(("glioma", "notumor"))
    assert named.class_names == ("notumor", "glioma") and not named.positive_guess
    assert "guessed" not in resolve_task(("scans", "tumor")).describe()


def test_describe_names_the_classes_a_map_leaves_out():
    task = resolve_task(FOUR, TaskConfig(class_map=parse_class_map("yes=glioma;no=notumor")))
    assert task.left_out == ("meningioma", "pituitary")
    assert task.describe() == (
        "no = notumor; yes = glioma (positive); left out: meningioma, pituitary"
    )
    assert "left out" not in resolve_task(FOUR).describe()


def test_class_map_errors_say_what_is_wrong():
    with pytest.raises(ConfigError, match=r"names \['glioma'\] twice in the list of target 'yes'"):
        parse_class_map("yes=glioma,glioma;no=notumor")
    with pytest.raises(ConfigError, match=r"'glioma' to 'yes' and 'no'"):
        parse_class_map("yes=glioma;no=glioma,notumor")
    with pytest.raises(ConfigError, match="differ only by case: Glioma and glioma"):
        parse_class_map("Glioma=glioma;glioma=notumor")


# --- tester 16 finding 6: a one-class (tumor-only or healthy-only) external set ----------------


@pytest.mark.parametrize(
    ("data", "model", "mode", "names", "labels"),
    [
        # a model class: scored as that class
        (("yes",), ("no", "yes"), "same", ("no", "yes"), [1]),
        (("no",), ("no", "yes"), "same", ("no", "yes"), [0]),
        (("glioma",), FOUR, "same", FOUR, [0]),
        # tumor-like names, or a tumor-only set of several types: tumor vs no tumor (the
        # tumor side is a yes/no model's own "yes", a K-class model's "tumor")
        (("glioma_tumor",), ("no", "yes"), "tumor_vs_healthy", ("no", "yes"), [1]),
        (("glioma", "meningioma"), ("no", "yes"), "tumor_vs_healthy", ("no", "yes"), [1, 1]),
        (("tumor",), FOUR, "tumor_vs_healthy", ("notumor", "tumor"), [1]),
        # healthy-like names, and the healthy class of a K-class model (its specificity)
        (("normal",), ("no", "yes"), "tumor_vs_healthy", ("no", "yes"), [0]),
        (("notumor",), FOUR, "tumor_vs_healthy", ("notumor", "tumor"), [0]),
    ],
)
def test_one_data_class_is_matched_by_the_name_rules(data, model, mode, names, labels):
    c = compare_classes(data, model, model[0] if model == ("no", "yes") else "notumor")
    assert (c.mode, c.class_names, c.label_map.tolist()) == (mode, names, labels)


def test_one_unknown_data_class_is_refused_never_guessed():
    with pytest.raises(ConfigError, match=r"\['t2_axial'\] is neither"):
        compare_classes(("t2_axial",), ("no", "yes"), "no")
    with pytest.raises(ConfigError, match="no healthy class"):  # nothing to score it against
        compare_classes(("tumor",), ("glioma", "meningioma", "pituitary"), None)


def test_a_class_map_with_one_target_is_for_evaluate_only():
    """evaluate may leave one class ('yes=glioma,meningioma': the sensitivity of a yes/no model
    on tumors alone); a model is still trained on two or more, with the same message."""
    one = parse_class_map("yes=glioma,meningioma", min_targets=1)
    c = compare_classes(FOUR, ("no", "yes"), "no", one)
    assert c.mode == "same" and c.label_map.tolist() == [1, 1, -1, -1]
    assert (
        c.describe() == "same: no = (none); yes = glioma + meningioma; left out: notumor, pituitary"
    )
    with pytest.raises(ConfigError, match="must leave at least two classes"):
        parse_class_map("yes=glioma,meningioma")
    with pytest.raises(ConfigError, match="must leave at least two classes"):
        TaskConfig(class_map=one)
    with pytest.raises(ConfigError, match="A task needs at least two classes"):
        resolve_task(("yes",))
    # the other checks of a map still apply to one target
    with pytest.raises(ConfigError, match=r"names \['glioma'\] twice"):
        parse_class_map("yes=glioma,glioma", min_targets=1)
    # a K-class model's tumor type, as tumor vs no tumor (its sensitivity) by naming it so
    c = compare_classes(
        ("glioma",), FOUR, "notumor", parse_class_map("tumor=glioma", min_targets=1)
    )
    assert c.mode == "tumor_vs_healthy" and c.label_map.tolist() == [1]


def test_a_comparison_names_the_data_and_model_classes_of_each_scored_class():
    """A yes/no model on notumor/: scored 'no' is data notumor and the model's no, and the
    tumor side is the model's 'yes'; a 4-class model's 'tumor' stands for its tumor types."""
    c = compare_classes(("notumor",), ("no", "yes"), "no")
    assert c.class_names == ("no", "yes")
    assert (c.data_classes_of(0), c.model_classes_of(0)) == (("notumor",), ("no",))
    assert (c.data_classes_of(1), c.model_classes_of(1)) == ((), ("yes",))
    c = compare_classes(("no", "yes"), FOUR, "notumor")
    assert c.class_names == ("notumor", "tumor") and c.model_classes_of(0) == ("notumor",)
    assert set(c.model_classes_of(1)) == set(FOUR) - {"notumor"}
    assert c.data_classes_of(1) == ("yes",)
    same = compare_classes(FOUR, FOUR, "notumor")
    assert same.model_classes_of(2) == (same.class_names[2],)


def test_a_class_map_with_no_entry_is_refused():
    """'' / ';' / comments only parse to no entry: refused (never "no map"), naming what was
    given and the two ways out."""
    for text in ("", ";", " ", "\n# yes=glioma\n;\n"):
        with pytest.raises(ConfigError, match="names no class") as err:
            parse_class_map(text)
        assert repr(text) in str(err.value) and "leave --class-map out" in str(err.value)
    with pytest.raises(ConfigError, match=r"^The class map file m\.txt names no class"):
        parse_class_map("", min_targets=1, origin="The class map file m.txt")


def test_healthy_naming_a_tumor_class_is_warned(caplog):
    """--healthy glioma beside notumor (a K-class task) is taken but warned, as the two-class
    --positive no is: the names say the opposite, and the tumor probability is 1 - P(glioma)."""
    three = ("glioma", "meningioma", "notumor")
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        task = resolve_task(three, TaskConfig(healthy="glioma"))
    assert task.class_names[task.healthy] == "glioma"
    said = [r.getMessage() for r in caplog.records if "say the opposite" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "'glioma' is named like a tumor class" in said[0]
    assert "'notumor' is named like a healthy class" in said[0] and "--healthy" in said[0]
    # a neutral name beside no healthy-like one, or the healthy-like one itself: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        resolve_task(three, TaskConfig(healthy="notumor"))
        resolve_task(("a", "b", "c"), TaskConfig(healthy="b"))
    assert "say the opposite" not in caplog.text


def test_warn_false_resolves_the_same_task_without_a_word(caplog):
    """warn=False (a run's repeated resolutions) logs nothing and resolves the same task."""
    cfg = TaskConfig(class_map=parse_class_map("yes=glioma;no=notumor"), positive="no")
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        quiet = resolve_task(FOUR, cfg, warn=False)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        said = resolve_task(FOUR, cfg)
    assert "say the opposite" in caplog.text
    assert quiet.class_names == said.class_names == ("yes", "no")
    assert quiet.label_map.tolist() == said.label_map.tolist()


def test_a_class_map_that_differs_only_by_case_says_so():
    """'YES=Glioma,Meningioma;no=NOTUMOR' is refused (names are compared exactly), and the
    message names the pairs that differ only by case, as ingest does for folders."""
    cmap = parse_class_map("YES=Glioma,Meningioma;no=NOTUMOR")
    with pytest.raises(ConfigError) as err:
        resolve_task(FOUR, TaskConfig(class_map=cmap))
    msg = str(err.value)
    assert "'Glioma' and 'glioma'; 'Meningioma' and 'meningioma'; 'NOTUMOR' and 'notumor'" in msg
    assert "differ only by case" in msg
    # evaluate's matching says it too; a name that is simply unknown gets no such line
    with pytest.raises(ConfigError, match="'NOTUMOR' and 'notumor' differ only by case"):
        compare_classes(FOUR, ("no", "yes"), "no", parse_class_map("yes=glioma;no=NOTUMOR"))
    with pytest.raises(ConfigError) as err:
        resolve_task(FOUR, TaskConfig(class_map=parse_class_map("yes=gliomas;no=notumor")))
    assert "case" not in str(err.value)
    # a typo gets the data class it is nearest to; a name near none gets no guess
    assert "Did you mean 'glioma' for 'gliomas'?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_task(FOUR, TaskConfig(class_map=parse_class_map("yes=menigioma,xyz;no=notumor")))
    assert str(err.value).endswith("Did you mean 'meningioma' for 'menigioma'?")


def test_an_unknown_class_map_target_is_named_as_a_target():
    """evaluate's 'foo=glioma;no=notumor' for a yes/no model: 'foo' is a target (a model
    class), not a data folder; the message says so, lists the model's classes and gives the
    map with foo renamed, not advice to add foo to a class's list of folders."""
    cmap = parse_class_map("foo=glioma;no=notumor", min_targets=1)
    with pytest.raises(ConfigError) as err:
        compare_classes(FOUR, ("no", "yes"), "no", cmap)
    msg = str(err.value)
    assert "target 'foo' is not one of the model's classes ['no', 'yes']" in msg
    assert "rename 'foo' to 'yes', e.g. --class-map 'yes=glioma;no=notumor'" in msg
    assert "leaves foo out" not in msg and "notumor,foo" not in msg
    # the map it gives works
    c = compare_classes(FOUR, ("no", "yes"), "no", parse_class_map("yes=glioma;no=notumor"))
    assert c.mode == "same" and c.label_map.tolist() == [1, -1, 0, -1]
    # two unknown targets: renamed to the model's classes, no example invented
    with pytest.raises(ConfigError, match=r"targets 'bar', 'foo' are not one of .* to one of"):
        compare_classes(FOUR, FOUR, "notumor", parse_class_map("foo=glioma;bar=notumor"))


def test_a_k_class_task_with_two_healthy_like_classes_is_warned(caplog):
    """A merged store (figshare's four folders + brain_mri's no/yes) trained without a map is
    a 6-class task with no healthy class: warned, naming no and notumor and giving --healthy
    and a class map that merges them."""
    six = (*FOUR, "no", "yes")
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        task = resolve_task(six)
    assert task.num_classes == 6 and task.healthy is None
    msg = caplog.text
    assert "'notumor' and 'no' are both named like a healthy (no-tumor) class" in msg
    assert "--healthy" in msg
    assert "--class-map 'yes=glioma,meningioma,pituitary,yes;no=notumor,no'" in msg
    # the map it gives makes one healthy class; --healthy or one healthy-like name: no warning
    shown = parse_class_map("yes=glioma,meningioma,pituitary,yes;no=notumor,no")
    assert resolve_task(six, TaskConfig(class_map=shown)).class_names == ("no", "yes")
    # --healthy no: taken, but notumor is then counted as tumor by the tumor probability
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        task = resolve_task(six, TaskConfig(healthy="no"))
    assert task.class_names[task.healthy] == "no"
    msg = caplog.text
    assert "'notumor' is named like a healthy class too" in msg and "counted as tumor" in msg
    assert "--class-map 'yes=glioma,meningioma,pituitary,yes;no=notumor,no'" in msg
    assert "say the opposite" not in msg
    # one healthy-like name, or warn=False: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        assert resolve_task(FOUR).healthy is not None
        resolve_task(six, warn=False)
    assert caplog.records == []


def test_a_two_class_task_of_two_tumor_types_has_no_healthy_class(caplog):
    """glioma vs meningioma (``--positive glioma``) is a tumor-type task: its negative class is
    not "no tumor", so it has no healthy class, no "names say the opposite" warning, and
    evaluate refuses to score it as a tumor detector (it scored yes/no data as
    meningioma = no, AUC 0.354)."""

    data = ["glioma", "meningioma", "notumor"]
    named = TaskConfig(
        class_map=parse_class_map("glioma=glioma;meningioma=meningioma"), positive="glioma"
    )
    neutral = TaskConfig(class_map=parse_class_map("a=glioma;b=meningioma"), positive="a")
    with caplog.at_level(logging.INFO, logger="mriscan.tasks"):
        for cfg in (named, neutral):
            task = resolve_task(data, cfg)
            assert task.healthy is None and task.binary
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no healthy class" in caplog.text
    with pytest.raises(ConfigError, match="healthy"):
        compare_classes(["no", "yes"], ["meningioma", "glioma"], None)
    # a yes/no task keeps its negative class as the healthy one; --healthy is obeyed
    assert resolve_task(["no", "yes"]).healthy == 0
    merged = TaskConfig(class_map=parse_class_map("yes=glioma,meningioma;no=notumor"))
    assert resolve_task(data, merged).healthy == 0
    chosen = TaskConfig(
        class_map=parse_class_map("glioma=glioma;meningioma=meningioma"), healthy="meningioma"
    )
    task = resolve_task(data, chosen)
    assert task.class_names[task.healthy] == "meningioma"


def test_classes_spelled_otherwise_get_a_class_map_hint(caplog):
    """A 4-class model on folders named Glioma/ ... or glioma_tumor/ ... no_tumor/ is scored
    tumor vs no tumor (names must match exactly), and the log now says so with the map that
    gives the model's four classes (it dropped to two classes silently)."""
    model = ("glioma", "meningioma", "notumor", "pituitary")
    for data in (
        ["Glioma", "Meningioma", "NoTumor", "Pituitary"],
        ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"],
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
            cmp = compare_classes(data, model, "notumor")
        assert cmp.mode == "tumor_vs_healthy"
        hint = f"--class-map 'glioma={data[0]};meningioma={data[1]};notumor={data[2]}"
        assert hint in caplog.text
    # some of the model's classes only (tumor types without healthy slices, or a subset):
    # the hint maps those the data hold
    for data, hint in (
        (["Pituitary", "Glioma"], "--class-map 'glioma=Glioma;pituitary=Pituitary'"),
        (["glioma", "No_Tumor"], "--class-map 'glioma=glioma;notumor=No_Tumor'"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
            assert compare_classes(data, model, "notumor").mode == "tumor_vs_healthy"
        assert hint in caplog.text, data
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):  # yes/no data: no hint
        compare_classes(["no", "yes"], model, "notumor")
        compare_classes(["Glioma", "yes"], model, "notumor")  # 'yes' is no model class
    assert "spelled another way" not in caplog.text


def test_a_map_that_renames_a_class_onto_another_warns(caplog):
    data = ["glioma", "meningioma", "notumor"]
    swapped = TaskConfig(class_map=parse_class_map("glioma=meningioma;notumor=notumor"))
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        resolve_task(data, swapped)
    assert "names the class 'glioma' after the data class 'glioma'" in caplog.text
    caplog.clear()
    plain = TaskConfig(class_map=parse_class_map("yes=glioma,meningioma;no=notumor"))
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        resolve_task(data, plain)
    assert "after the data class" not in caplog.text


def test_a_class_folder_with_a_comma_is_named_in_quotes():
    cmap = parse_class_map('yes="Meningioma, WHO I", glioma;no=notumor')
    assert cmap == (("yes", ("Meningioma, WHO I", "glioma")), ("no", ("notumor",)))
    data = ["Meningioma, WHO I", "glioma", "notumor"]
    task = resolve_task(data, TaskConfig(class_map=cmap))
    assert task.class_names == ("no", "yes") and task.label_map.tolist() == [1, 1, 0]
    # unquoted, the comma still separates two sources
    assert parse_class_map("yes=glioma, meningioma;no=notumor")[0][1] == ("glioma", "meningioma")


def test_a_renamed_healthy_class_is_still_the_healthy_one():
    """'g=glioma;m=meningioma;n=notumor': n holds only healthy slices, so it is the task's
    healthy class (it had none: no tumor probability, evaluate refused tumor vs no tumor)."""
    data = ["glioma", "meningioma", "notumor"]
    task = resolve_task(
        data, TaskConfig(class_map=parse_class_map("g=glioma;m=meningioma;n=notumor"))
    )
    assert task.class_names[task.healthy] == "n"
    # two such classes: none is chosen (the warning of a merged store says why)
    both = ["glioma", "no", "notumor"]
    cmap = parse_class_map("g=glioma;a=no;b=notumor")
    assert resolve_task(both, TaskConfig(class_map=cmap)).healthy is None


def test_evaluate_warns_when_a_map_swaps_classes(caplog):
    model = ("glioma", "meningioma", "notumor", "pituitary")
    swap = parse_class_map(
        "glioma=meningioma;meningioma=glioma;notumor=notumor;pituitary=pituitary"
    )
    with caplog.at_level(logging.WARNING, logger="mriscan.tasks"):
        compare_classes(list(model), model, "notumor", swap)
    assert "names the class 'glioma' after the data class 'glioma'" in caplog.text
