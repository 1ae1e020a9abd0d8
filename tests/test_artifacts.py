"""mriscan.artifacts: the run layout, the validated model card, atomic publishing, strict JSON."""

from __future__ import annotations

import json
import math

import pytest

from mriscan.artifacts import (
    ModelCard,
    ModelCardError,
    RunLayout,
    card_path,
    publish_model,
    write_json,
)
from mriscan.preprocess import PreprocessConfig

GOOD = {
    "format_version": 2,
    "preprocess": PreprocessConfig(size=32).to_dict(),
    "class_names": ["no", "yes"],
    "threshold": 0.4,
    "tta": True,
}


def test_layout_names_every_path(tmp_path):
    run = RunLayout(tmp_path)
    assert run.model == tmp_path / "models" / "best_model.keras"
    assert run.card == tmp_path / "models" / "best_model.json"
    assert run.cv.fold(0, 2).model == tmp_path / "cv" / "r0_f2" / "models" / "best_model.keras"
    assert RunLayout.of_model(run.model) == run
    assert RunLayout.of_model(tmp_path / "loose.keras") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": float("nan")}, "threshold must be a number in"),
        ({"threshold": 2}, "threshold must be a number in"),
        ({"threshold": -1}, "threshold must be a number in"),
        ({"threshold": "0.5"}, "threshold must be a number in"),
        ({"tta": "false"}, "tta must be true or false"),
        ({"class_names": ["yes"]}, "distinct non-empty names"),
        ({"class_names": ["a", "a"]}, "distinct non-empty names"),
        ({"image_size": 64}, "disagrees with preprocess.size"),
        ({"format_version": 99}, "format_version 99"),
        ({"preprocess": {"size": -3}}, "size must be a positive integer"),
        ({"train_kinds": ["nifti", "nifti"]}, "train_kinds must be null or a list of distinct"),
        ({"train_kinds": ["pet"]}, "train_kinds must be null or a list of distinct"),
        ({"train_kinds": "nifti"}, "train_kinds must be null or a list of distinct"),
    ],
)
def test_card_rejects_bad_values(change, message):
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_dict({**GOOD, **change})


def test_card_without_version_reads_as_version_1():
    card = ModelCard.from_dict({k: v for k, v in GOOD.items() if k != "format_version"})
    assert card.threshold == 0.4 and card.tta is True and card.class_names == ("no", "yes")


def test_card_records_the_kinds_of_input_it_was_trained_on():
    """Issue 18, L3: the kinds of file the training slices came from round-trip in
    ``INPUT_KINDS`` order; a card written before they were recorded reads as unknown (None)."""
    card = ModelCard.from_dict({**GOOD, "train_kinds": ["nifti", "image"]})
    assert card.train_kinds == ("image", "nifti")
    assert card.to_dict()["train_kinds"] == ["image", "nifti"]
    back = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert back.train_kinds == ("image", "nifti")
    assert ModelCard.from_dict(GOOD).train_kinds is None


def test_a_card_from_before_the_rule_was_recorded_names_youden():
    """Binary cards written before ``threshold_rule`` existed were all thresholded by Youden's J
    on validation: they say so, instead of an empty rule; a recorded rule is kept as it is."""
    assert ModelCard.from_dict(GOOD).threshold_rule.startswith("Youden's J on the validation")
    kept = ModelCard.from_dict({**GOOD, "threshold_rule": "some rule"})
    assert kept.threshold_rule == "some rule"
    k3 = {**GOOD, "class_names": ["a", "b", "c"], "threshold": None}
    assert ModelCard.from_dict(k3).threshold_rule == ""


def test_card_that_is_not_json_is_a_clear_error(tmp_path):
    model = tmp_path / "m.keras"
    card_path(model).write_text("{not json")
    with pytest.raises(ModelCardError, match="not readable JSON"):
        ModelCard.load(model)
    card_path(model).write_text("[1, 2]")
    with pytest.raises(ModelCardError, match="must hold a JSON object"):
        ModelCard.load(model)


def test_publish_keeps_the_previous_pair_when_saving_fails(tmp_path):
    model = tmp_path / "models" / "best_model.keras"
    card = ModelCard.from_dict(GOOD)
    first = publish_model(lambda p: p.write_bytes(b"first model"), card, model)
    before = (model.read_bytes(), card_path(model).read_text())

    def crash(p):
        p.write_bytes(b"half a mod")
        raise KeyboardInterrupt  # a kill in the middle of Keras writing the file

    with pytest.raises(KeyboardInterrupt):
        publish_model(crash, card, model)
    assert (model.read_bytes(), card_path(model).read_text()) == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["best_model.json", "best_model.keras"]
    ModelCard.load(model).check_model_file(model)  # the pair still belongs together
    assert first.model_sha256 and json.loads(card_path(model).read_text())["model_sha256"]


def test_a_card_of_another_model_file_is_detected(tmp_path):
    model = tmp_path / "best_model.keras"
    publish_model(lambda p: p.write_bytes(b"model A"), ModelCard.from_dict(GOOD), model)
    model.write_bytes(b"model B")  # e.g. a kill between the two renames of a later run
    with pytest.raises(ModelCardError, match="belongs to another model file"):
        ModelCard.load(model).check_model_file(model)


def test_json_is_strict_and_undefined_is_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"auc": math.nan, "x": [1.0, math.inf]})
    assert json.loads(path.read_text()) == {"auc": None, "x": [1.0, None]}
    assert "NaN" not in path.read_text()


def test_file_hashing_has_one_definition():
    """One ``file_sha256`` (``mriscan.readers``, the lower module: ingest and the readers use
    it without the artifacts); artifacts imports it rather than keeping a copy."""
    import hashlib
    import re
    from pathlib import Path

    import mriscan
    import mriscan.artifacts
    import mriscan.readers

    root = Path(mriscan.__file__).parent
    pattern = re.compile(r"^def file_sha256\(", re.M)
    defined = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert defined == ["readers.py"]
    assert mriscan.artifacts.file_sha256 is mriscan.readers.file_sha256
    path = root / "errors.py"
    assert mriscan.readers.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_decision_text_states_the_threshold_or_the_rule():
    card = ModelCard(
        preprocess=PreprocessConfig(size=32), class_names=("no", "yes"), threshold=0.605
    )
    assert card.decide([0.6, 0.4]) == "no"
    assert card.decision_text([0.6, 0.4]) == "P(yes) = 0.400 < threshold 0.605"
    assert card.decision_text([0.3, 0.7]) == "P(yes) = 0.700 ≥ threshold 0.605"
    assert card.decision_text([0.6, 0.4], threshold=0.3) == "P(yes) = 0.400 ≥ threshold 0.300"
    # digits enough to tell them apart (tester30: "0.486 < threshold 0.486")
    near = card.decision_text([0.5, 0.60449], threshold=0.6042)
    assert near == "P(yes) = 0.6045 ≥ threshold 0.6042"
    three = ModelCard(
        preprocess=PreprocessConfig(size=32), class_names=("a", "b", "c"), threshold=None
    )
    assert three.decision_text([0.2, 0.5, 0.3]) == "most probable of 3 classes"
