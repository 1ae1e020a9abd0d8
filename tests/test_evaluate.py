"""evaluate on a trained model's recorded splits and on a labelled folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.errors import MriscanError
from mriscan.evaluate import evaluate, failing
from mriscan.store import ImageStore
from mriscan.training.workflow import train
from tests.conftest import fast_config

TINY = fast_config()


@pytest.mark.backend
def test_evaluate_recorded_test_split_and_folder(small_store, tmp_path, class_folder):
    out = tmp_path / "art"
    result = train(small_store, TINY, out=out)
    model = out / "models" / "best_model.keras"
    ev = evaluate(model, split="test")
    assert ev["n"] == len(result.split["test"])
    assert ev["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    for f in ("metrics.json", "confusion_matrix.png", "predictions.csv"):
        assert (out / "evaluation" / f).is_file()
    folder = evaluate(model, class_folder, out=tmp_path / "ev2")
    # the synthetic folder looks like the training phantoms: near-duplicates are removed
    removed = folder["near_duplicates_removed"]["count"]
    assert folder["n"] + removed == 12 and folder["split"] == "all"
    kept = evaluate(model, class_folder, out=tmp_path / "ev3", remove_duplicates=False)
    assert kept["n"] == 12 and kept["near_duplicates_removed"]["count"] == 0


@pytest.mark.backend
def test_the_split_defaults_to_test_on_the_training_store_and_all_elsewhere(
    small_store, tmp_path, class_folder, caplog
):
    out = tmp_path / "art"
    result = train(small_store, TINY, out=out)
    model = out / "models" / "best_model.keras"
    own = evaluate(model, out=tmp_path / "own")
    assert own["split"] == "test" and own["n"] == len(result.split["test"])
    # other data are scored whole without a word; asking for a split of them is warned of
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        evaluate(model, class_folder, out=tmp_path / "other", remove_duplicates=False)
        assert not [r for r in caplog.records if "training store" in r.getMessage()]
        asked = evaluate(
            model, class_folder, split="val", out=tmp_path / "val", remove_duplicates=False
        )
    said = [r.getMessage() for r in caplog.records if "training store" in r.getMessage()]
    assert asked["split"] == "all" and len(said) == 1 and "'val'" in said[0]


@pytest.mark.backend
def test_the_training_store_is_recognised_wherever_it_now_lies(small_store, tmp_path, caplog):
    """The training store given by another path (a link, a copy, a move) is still the
    training store: its test split is scored by default, not all of it less near-duplicates
    (tester22 HIGH: only the path string written in split.json was recognised); scoring its
    training slices is warned of; and a moved store asked for without DATA is said to be
    missing as the training store, with what to type."""
    import shutil

    out = tmp_path / "art"
    result = train(small_store, TINY, out=out)
    model = out / "models" / "best_model.keras"
    link = tmp_path / "link.zarr"
    link.symlink_to(small_store)
    moved = tmp_path / "elsewhere" / "moved.zarr"
    for where in (link, moved):
        if where == moved:
            shutil.copytree(small_store, moved)
            shutil.rmtree(small_store)
        ev = evaluate(model, where, out=tmp_path / where.stem)
        assert ev["split"] == "test" and ev["n"] == len(result.split["test"])
        assert ev["near_duplicates_removed"]["count"] == 0
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        ev = evaluate(model, moved, split="train", out=tmp_path / "tr")
    assert ev["n"] == len(result.split["train"])
    assert any("trained on" in r.getMessage() for r in caplog.records)
    with pytest.raises(MriscanError, match=r"training store .* is not there") as err:
        evaluate(model, split="val", out=tmp_path / "gone")
    assert f"mriscan evaluate STORE --model {model} --split val:" in str(err.value)
    # a link to the model file finds its card and run folder (tester23 LOW)
    linked = tmp_path / "mylink.keras"
    linked.symlink_to(model)
    assert evaluate(linked, moved, out=tmp_path / "ln")["split"] == "test"
    # the model copied out of its run folder: no split.json, so the test split is unknown
    lone = tmp_path / "lone"
    lone.mkdir()
    for f in out.joinpath("models").glob("best_model.*"):
        shutil.copy(f, lone / f.name)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(model, alone / model.name)  # the model file without its card
    with pytest.raises(MriscanError, match="copy the three together"):
        evaluate(alone / model.name, moved, out=tmp_path / "l0")
    with pytest.raises(MriscanError, match="does not lie in a run folder"):
        evaluate(lone / "best_model.keras", out=tmp_path / "l1")
    with pytest.raises(MriscanError, match="recorded only in its run folder"):
        evaluate(lone / "best_model.keras", moved, out=tmp_path / "l2")
    # without its training thumbnails: which file to copy, and what --keep-duplicates costs
    (lone / "best_model.signatures.npy").unlink()
    with pytest.raises(MriscanError, match=r"best_model\.signatures\.npy; copy it with") as err:
        evaluate(lone / "best_model.keras", moved, out=tmp_path / "l3")
    assert "trained on, if they are among them, too" in str(err.value)
    # and that flag then scores the data whole: the kept near-duplicates cannot be counted
    whole = evaluate(lone / "best_model.keras", moved, out=tmp_path / "l4", remove_duplicates=False)
    assert whole["n"] > 0 and whole["near_duplicates_removed"]["kept"] is None
    assert whole["near_duplicates_removed"]["checked"] is False  # not "checked, none found"
    # the flag is evaluate's remedy: the card's own error, which explain shows too, names none
    from mriscan.artifacts import ModelCard, ModelCardError, training_signatures

    card = ModelCard.load(lone / "best_model.keras")
    with pytest.raises(ModelCardError) as bare:
        training_signatures(lone / "best_model.keras", card)
    assert "--keep-duplicates" not in str(bare.value) and "or retrain" in str(bare.value)


def test_a_relative_training_store_is_recorded_absolute(small_store, tmp_path, monkeypatch):
    """split.json records the store's absolute path, so evaluate without DATA finds it from
    any working folder (tester23 LOW: "rel.zarr" was recorded as typed)."""
    monkeypatch.chdir(small_store.parent)
    train(small_store.name, TINY, out="art")
    recorded = json.loads((tmp_path / "art" / "split.json").read_text())["store"]
    assert recorded == str(small_store)
    monkeypatch.chdir(tmp_path / "art")
    ev = evaluate(Path("models") / "best_model.keras", out=tmp_path / "ev")
    assert ev["split"] == "test"


def test_a_run_folder_moved_with_its_store_still_finds_it(tmp_path):
    """A project folder (run and store) moved whole: evaluate without DATA finds the store where
    it lies from the run folder, as at training (tester24 LOW: the absolute path was stale)."""
    from tests.conftest import build_small_store

    build_small_store(tmp_path / "proj" / "data" / "s.zarr")
    result = train(tmp_path / "proj" / "data" / "s.zarr", TINY, out=tmp_path / "proj" / "art")
    (tmp_path / "proj").rename(tmp_path / "moved")
    ev = evaluate(tmp_path / "moved" / "art" / "models" / "best_model.keras")
    assert ev["split"] == "test" and ev["n"] == len(result.split["test"])
    assert ev["data"] == str(tmp_path / "moved" / "art" / ".." / "data" / "s.zarr")


@pytest.mark.backend
def test_evaluating_the_training_folder_itself_suggests_the_test_split(tmp_path, caplog):
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "raw", ("no", "yes"), n_per_class=12)
    out = tmp_path / "art"
    # a store of its own: the default data/processed/images.zarr is the working folder's
    train(data, TINY, out=out, store_path=tmp_path / "own.zarr")
    model = out / "models" / "best_model.keras"
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        ev = evaluate(model, data, out=tmp_path / "ev")
    removed = ev["near_duplicates_removed"]["count"]
    said = [r.getMessage() for r in caplog.records if "trained on?" in r.getMessage()]
    assert 2 * removed > 24 and len(said) == 1
    assert f"{removed} of 24 slices" in said[0] and "without DATA" in said[0]
    assert ev["near_duplicates_removed"]["kept"] is None
    # --keep-duplicates scores them all, and still says whose slices they are (tester23 #4)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        kept = evaluate(model, data, out=tmp_path / "ev2", remove_duplicates=False)
    said = [r.getMessage() for r in caplog.records if "trained on?" in r.getMessage()]
    assert kept["n"] == 24 and kept["near_duplicates_removed"]["count"] == 0
    assert kept["near_duplicates_removed"]["kept"] == removed and len(said) == 1
    assert f"{removed} of 24 slices are the model's own (scored: --keep-duplicates)" in said[0]
    # and lists them (tester27 MED: only counted); header only when nothing was kept
    listed = list(csv.DictReader((tmp_path / "ev2" / "evaluation" / "own_data_kept.csv").open()))
    assert len(listed) == removed and {r["why"] for r in listed} == {"near-duplicate"}
    assert not list(csv.DictReader((tmp_path / "ev" / "evaluation" / "own_data_kept.csv").open()))
    # and the console counts them, as it counts removed ones (tester26 LOW-MED)
    args = ["evaluate", str(data), "--model", str(model), "--out", str(tmp_path / "ev3")]
    r = CliRunner().invoke(main, [*args, "--keep-duplicates"])
    assert r.exit_code == 0, r.output
    assert f"scored {removed} near-duplicates of training slices (--keep-duplicates)" in r.output
    # an exact copy of a removed training slice goes with it, not "scored once" (tester28)
    import shutil

    gone = {Path(r["source"]).name for r in listed if r["source"].startswith("yes/")}
    orig = next(f for f in sorted((data / "yes").iterdir()) if f.name in gone)
    shutil.copy(orig, data / "yes" / f"copy{orig.suffix}")
    again = evaluate(model, data, out=tmp_path / "ev4")
    assert again["exact_duplicates"]["count"] == 1
    assert again["exact_duplicates"]["removed_with_original"] == 1
    (row,) = csv.DictReader((tmp_path / "ev4" / "evaluation" / "exact_duplicates.csv").open())
    assert row["original_scored"] == "False" and Path(row["same_bytes_as"]).name == orig.name


def test_thresholds_never_see_test_data(monkeypatch, small_store, tmp_path):
    """The threshold is computed from validation and training slices only: the rule is called
    once, with the validation labels and the training labels, never with a test slice's."""
    import mriscan.metrics as mx
    import mriscan.training.fit as fit

    seen: list[tuple[int, int]] = []
    real = mx.choose_threshold
    picked: list[np.ndarray] = []
    real_sample = fit.threshold_sample

    def spy(yv, pv, yt=None, pt=None):
        seen.append((len(yv), len(yt)))
        return real(yv, pv, yt, pt)

    def spy_sample(idx, seed):
        picked.append(real_sample(idx, seed))
        return picked[-1]

    monkeypatch.setattr(mx, "choose_threshold", spy)
    monkeypatch.setattr(fit, "threshold_sample", spy_sample)
    result = train(small_store, TINY, out=tmp_path / "a")
    assert seen == [(len(result.split["val"]), len(result.split["train"]))]
    assert set(picked[0]) == set(result.split["train"])
    assert set(result.split["val"]).isdisjoint(result.split["test"])
    assert set(picked[0]).isdisjoint(result.split["test"])


def test_youden_rule_reads_validation_only(monkeypatch, small_store, tmp_path):
    """``--threshold-rule youden`` (the rule of the older accuracy-log rows): Youden's J on the
    validation slices alone, no training predictions, and the card says so."""
    import dataclasses

    import mriscan.metrics as mx

    seen: list[int] = []
    real = mx.youden_threshold

    def spy(y, p):
        seen.append(len(y))
        return real(y, p)

    monkeypatch.setattr(mx, "youden_threshold", spy)
    cfg = dataclasses.replace(TINY, fit=dataclasses.replace(TINY.fit, threshold_rule="youden"))
    result = train(small_store, cfg, out=tmp_path / "y")
    assert seen == [len(result.split["val"])]
    card = json.loads((tmp_path / "y" / "models" / "best_model.json").read_text())
    assert card["threshold_rule"] == mx.THRESHOLD_RULE_TEXT["youden"]


def test_threshold_sample_caps_training_slices():
    from mriscan.training.fit import THRESHOLD_TRAIN_SAMPLE, threshold_sample

    small = np.arange(10, 60)
    assert threshold_sample(small, 0).tolist() == small.tolist()
    big = np.arange(3, 3 + 3 * THRESHOLD_TRAIN_SAMPLE)
    a, b = threshold_sample(big, 0), threshold_sample(big, 0)
    assert len(a) == THRESHOLD_TRAIN_SAMPLE and np.all(np.diff(a) > 0)
    assert set(a) <= set(big) and a.tolist() == b.tolist()
    assert threshold_sample(big, 1).tolist() != a.tolist()


def test_a_rebuilt_store_is_refused_for_a_recorded_split_unless_its_slices_are_found(
    small_store, caplog
):
    """The recorded slices at other positions (the store rebuilt from the same files plus
    others) are found by their pixel SHA-256, with a warning (tester25 #2: refused); a slice
    the store no longer holds, or a split.json without checksums, is refused as before."""
    from mriscan.evaluate import _recorded_indices

    with ImageStore.open(small_store) as store:
        recs = store.index.records
        part = {"indices": [0, 1, 2], "pixel_sha256": [recs[i].pixel_sha256 for i in (0, 1, 2)]}
        assert _recorded_indices(store, part, "test").tolist() == [0, 1, 2]
        assert not caplog.records
        moved = {"indices": [5, 9, len(recs) + 3], "pixel_sha256": part["pixel_sha256"]}
        with caplog.at_level("WARNING", logger="mriscan.evaluate"):
            assert _recorded_indices(store, moved, "test").tolist() == [0, 1, 2]
        assert "found at their new positions by their pixel SHA-256" in caplog.text
        gone = {**part, "pixel_sha256": [*part["pixel_sha256"][:2], "0" * 64],
                "sources": [recs[i].source for i in (0, 1, 2)]}  # fmt: skip
        # the count and the slice named are the missing one's (tester27: "3 of the 3")
        with pytest.raises(MriscanError, match=rf"1 of the 3 recorded test slices are not in "
                           rf".* e\.g\. {recs[2].source}\)"):  # fmt: skip
            _recorded_indices(store, gone, "test")
        with pytest.raises(MriscanError, match="store was rebuilt"):
            _recorded_indices(store, {"indices": [len(recs)]}, "test")
        # one slice recorded twice (two pixel-identical files in the test split) but held once
        twice = {"indices": [7, 8], "pixel_sha256": [part["pixel_sha256"][0]] * 2}
        with pytest.raises(MriscanError, match="1 of the 2 recorded test slices are not in"):
            _recorded_indices(store, twice, "test")
        # by file name only (an older split.json): names do not prove the same pixels
        named = {"indices": [1, 0], "sources": [recs[0].source, recs[1].source]}
        with pytest.raises(MriscanError, match="no longer the slices"):
            _recorded_indices(store, named, "test")


def test_pixel_identical_twins_in_a_rebuilt_store_are_matched_one_to_one(tmp_path):
    """Two samples of the same pixels (a JPEG and its PNG re-save): a recorded slice takes the
    one of its own source file, and two recorded copies take one each (tester27 HIGH: a
    checksum held twice made the whole split unfindable)."""
    from mriscan.evaluate import _recorded_indices
    from mriscan.preprocess import PreprocessConfig

    cfg = PreprocessConfig(size=16)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(2))
    with ImageStore.create(tmp_path / "s.zarr", 16, cfg) as st:
        st.set_class_names(["no", "yes"])
        names = ["no/new.png", "no/b.jpg", "no/a.jpg", "no/a_copy.png"]
        st.append(np.stack([b, b, a, a]), np.zeros(4, np.int64),
                  [{"source": n, "sha256": f"{k:064x}"} for k, n in enumerate(names)])  # fmt: skip
        st.commit(groups=np.arange(4))
    with ImageStore.open(tmp_path / "s.zarr") as st:
        h = [r.pixel_sha256 for r in st.index.records]
        assert h[0] == h[1] and h[2] == h[3]
        one = {"indices": [5], "pixel_sha256": [h[1]], "sources": ["no/b.jpg"]}
        assert _recorded_indices(st, one, "test").tolist() == [1]
        both = {"indices": [9, 8], "pixel_sha256": [h[2], h[2]],
                "sources": ["no/a_copy.png", "no/a.jpg"]}  # fmt: skip
        assert _recorded_indices(st, both, "test").tolist() == [3, 2]


@pytest.mark.backend
def test_the_training_store_rebuilt_with_one_more_file_scores_the_same_test_slices(
    tmp_path, caplog
):
    """The training store deleted and ingested again from the same folder plus one new file
    (listed first, so every position moves): evaluate without DATA finds the recorded test
    slices by checksum and scores exactly them (tester25 #2: refused)."""
    import shutil

    from PIL import Image

    from mriscan.ingest import IngestConfig, ingest
    from mriscan.model import load_model
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "raw", ("no", "yes"), n_per_class=12)
    store = tmp_path / "own.zarr"
    result = train(data, TINY, out=tmp_path / "art", store_path=store)
    model = tmp_path / "art" / "models" / "best_model.keras"
    first = evaluate(model, out=tmp_path / "ev1")
    shutil.rmtree(store)
    odd = np.random.default_rng(7).integers(0, 255, (60, 60), dtype=np.uint8)
    Image.fromarray(odd).save(data / "no" / "-new.png")
    ingest(data, store, IngestConfig(load_model(model)[1].preprocess))
    with ImageStore.open(store) as st:
        assert st.index.records[0].source == "no/-new.png"  # every position moved
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        again = evaluate(model, out=tmp_path / "ev2")
    assert "found at their new positions" in caplog.text
    assert again["split"] == "test" and again["n"] == first["n"] == len(result.split["test"])
    assert again["accuracy"] == first["accuracy"]


# --- issue 19 item 10 (evaluate): unreadable files are named; undefined metrics say so ----------


@pytest.fixture
def loose_model(tmp_path):
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m" / "model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    cfg = PreprocessConfig(size=32)
    ModelCard(preprocess=cfg, class_names=("no", "yes"), threshold=0.5).save(path)
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.backend
def test_unreadable_files_are_named_and_counted(loose_model, class_folder, tmp_path):
    bad = sorted((class_folder / "yes").iterdir())[:2] + sorted((class_folder / "no").iterdir())[:1]
    for p in bad:
        _truncate(p)
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 9 and ev["n_files"] == 12 and ev["n_unreadable"] == 3
    assert sorted(u["path"] for u in ev["unreadable"]) == sorted(str(p) for p in bad)
    # both classes left: no headline metric undefined (the untrained model may never predict
    # a class: that precision is listed, and does not fail the command)
    assert all(u["error"] for u in ev["unreadable"]) and failing(ev["undefined"]) == {}
    assert all(k.startswith("precision of") for k in ev["undefined"])
    saved = _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")
    assert saved["n_unreadable"] == 3 and len(saved["unreadable"]) == 3
    table = (tmp_path / "ev" / "evaluation" / "predictions.csv").read_text().splitlines()
    assert len(table) == 1 + 12 and sum(",," in line for line in table) == 3
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 0, r.output
    assert "3 of 12 file(s) could not be read" in r.output
    assert all(str(p) in r.output for p in bad)


@pytest.mark.backend
def test_exact_duplicate_files_are_counted_and_listed(loose_model, class_folder, tmp_path):
    """Files with the same bytes are stored, and so scored, once: the count is reported (CLI,
    metrics.json, exact_duplicates.csv) instead of vanishing from n_files."""
    import shutil

    first = sorted((class_folder / "yes").iterdir())[0]
    shutil.copy(first, class_folder / "yes" / f"copy_a{first.suffix}")
    shutil.copy(first, class_folder / "yes" / f"copy_b{first.suffix}")
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 12 and ev["n_files"] == 14
    assert ev["exact_duplicates"]["count"] == 2
    assert ev["exact_duplicates"]["per_class"] == {"no": 0, "yes": 2}
    with open(tmp_path / "ev" / "evaluation" / "exact_duplicates.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = {first.name, f"copy_a{first.suffix}", f"copy_b{first.suffix}"}
    assert len(rows) == 2 and {r["class"] for r in rows} == {"yes"}
    assert {Path(r["source"]).name for r in rows} | {Path(rows[0]["same_bytes_as"]).name} == names
    assert {r["original_scored"] for r in rows} == {"True"}
    assert ev["exact_duplicates"]["removed_with_original"] == 0
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 0, r.output
    assert "2 exact-duplicate file(s) (same bytes as another file) scored once" in r.output


def test_slices_stored_with_a_warning_are_said_and_counted(
    loose_model, class_folder, tmp_path, caplog
):
    """A uniform slice is scored like the others, as predict and explain score it, and said
    so (tester30: evaluate scored it without a word); metrics.json counts it by flag."""
    from PIL import Image

    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(class_folder / "yes" / "grey90.png")
    Image.fromarray(np.full((40, 3), 170, np.uint8)).save(class_folder / "no" / "strip.png")
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 14
    assert ev["flagged_slices"]["counts"] == {"uniform": 2, "thin": 1}
    assert "no anatomy" in ev["flagged_slices"]["rule"]
    assert "scored slices stored with a warning: 2 uniform and 1 thin (e.g." in caplog.text
    saved = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert saved["flagged_slices"]["counts"] == {"uniform": 2, "thin": 1}
    caplog.clear()
    class_folder.joinpath("yes", "grey90.png").unlink()
    class_folder.joinpath("no", "strip.png").unlink()
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        clean = evaluate(loose_model, class_folder, out=tmp_path / "ev2")
    assert clean["flagged_slices"]["counts"] == {} and "stored with a warning" not in caplog.text


@pytest.mark.backend
def test_a_class_with_no_readable_file_makes_auc_undefined(loose_model, class_folder, tmp_path):
    for p in (class_folder / "yes").iterdir():
        _truncate(p)
    ev = evaluate(loose_model, class_folder, out=tmp_path / "ev")
    assert ev["n"] == 6 and ev["n_unreadable"] == 6
    assert np.isnan(ev["roc_auc"]) and np.isnan(ev["sensitivity"])
    assert "no readable slice of class 'yes'" in ev["undefined"]["roc_auc"]
    saved = _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")  # NaN -> null
    assert saved["roc_auc"] is None and saved["sensitivity"] is None
    assert set(saved["undefined"]) >= {"roc_auc", "sensitivity"}
    r = CliRunner().invoke(
        main,
        ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 1
    assert "ROC AUC undefined" in r.output and "nan" not in r.output.lower()
    # the headline metrics that fail, named together with their one reason
    assert (
        "balanced_accuracy, macro_f1, roc_auc, sensitivity: no readable slice of class 'yes'"
        in r.output
    )
    # nothing readable at all: a clear error, not a table of zeros
    for p in (class_folder / "no").iterdir():
        _truncate(p)
    with pytest.raises(MriscanError, match=r"None of the 12 files .* could be read"):
        evaluate(loose_model, class_folder, out=tmp_path / "ev3")


def test_a_split_with_retired_samples_is_refused(small_store):
    from mriscan.evaluate import _recorded_indices

    with ImageStore.open(small_store) as store:
        recs = store.index.records
        part = {"indices": [0, 1], "pixel_sha256": [recs[0].pixel_sha256, recs[1].pixel_sha256]}
    with ImageStore.open(small_store, mode="a") as store:  # file 0 was overwritten since
        store.update_record(0, flags=("replaced",))
        store.commit()
    with ImageStore.open(small_store) as store:
        with pytest.raises(MriscanError, match="retired since training \\(replaced"):
            _recorded_indices(store, part, "test")
        assert _recorded_indices(store, {**part, "indices": [1], "pixel_sha256": part[
            "pixel_sha256"][1:]}, "test").tolist() == [1]  # fmt: skip


def test_a_class_emptied_by_duplicate_removal_is_said_so():
    """All 'yes' slices readable but removed as near-duplicates of training slices: the
    undefined metrics say that, not "no readable slice"."""
    from mriscan import metrics as mx
    from mriscan.evaluate import undefined_metrics

    y = np.zeros(4, np.int64)
    result = mx.binary_metrics(y, np.full(4, 0.2), threshold=0.5)
    why = undefined_metrics(result, y, {"no": 1, "yes": 3})
    assert "removed as near-duplicates of training slices" in why["sensitivity"]
    assert "3 of class 'yes'" in why["sensitivity"] and "readable slice" not in why["roc_auc"]
    assert why["recall of 'yes'"] == why["sensitivity"]
    plain = undefined_metrics(mx.binary_metrics(y, np.full(4, 0.2), threshold=0.5), y)
    assert plain["sensitivity"] == "no readable slice of class 'yes'"


def _levels(class_names, card_names, y, prob, sources, keys, healthy=None, no_anatomy=None):
    """``grouped_levels`` on hand-made slices (every slice its own split group)."""
    from mriscan.artifacts import ModelCard
    from mriscan.evaluate import Scoring, grouped_levels
    from mriscan.preprocess import PreprocessConfig
    from mriscan.tasks import compare_classes

    card = ModelCard(
        preprocess=PreprocessConfig(size=32),
        class_names=card_names,
        threshold=0.5 if len(card_names) == 2 else None,
        healthy=healthy,
    )
    cmp = compare_classes(class_names, card.class_names, card.healthy)
    y = np.asarray(y, np.int64)
    scoring = Scoring(cmp, card, tuple(class_names), 50)
    prob = np.asarray(prob, np.float64)
    return grouped_levels(
        scoring, y, prob, np.arange(y.size), y, sources, keys, no_anatomy=no_anatomy
    )


def test_series_and_patients_are_pooled_with_predict_s_rule():
    """Binary: series A (yes; P(yes) .9 .8 .1 .7 -> top-3 mean .8), B (no; .2 .3 -> .25), a
    NIfTI volume V (no; .6 -> .6, called yes at .5) and a manifest group of JPEGs M (yes); A and
    B are one patient with tumor and healthy slices (a tumor patient: yes, from all six slices'
    top-3 .9 .8 .7), V has no Patient ID."""
    from mriscan.aggregate import top_k_mean

    p_yes = [0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.6, 0.4, 0.9]
    y = [1, 1, 1, 1, 0, 0, 0, 1, 1]
    sources = [f"dicom/A/i{k}#0" for k in range(4)] + ["dicom/B/i0#0", "dicom/B/i1#0"]
    sources += ["nifti/V#3", "yes/a.png", "yes/b.png"]
    keys = ["patient:P"] * 6 + ["volume:V", "manifest:M", "manifest:M"]
    prob = np.stack([1 - np.array(p_yes), p_yes], axis=1)
    levels = _levels(("no", "yes"), ("no", "yes"), y, prob, sources, keys)
    series, rows = levels["series"]
    assert series["available"] and series["n"] == 4 and series["mixed_labels"] == 0
    pooled = {r["unit"]: (r["probability"], r["true"], r["predicted"]) for r in rows}
    assert pooled["series:A"] == (pytest.approx(0.8), "yes", "yes")
    assert pooled["series:B"] == (pytest.approx(0.25), "no", "no")
    assert pooled["volume:V"] == (pytest.approx(0.6), "no", "yes")
    assert pooled["manifest:M"][0] == pytest.approx(top_k_mean([0.4, 0.9]))
    assert series["accuracy"] == pytest.approx(0.75) and series["specificity"] == 0.5
    # the rule as done (tester 18): P(yes) the top-3 mean, P(no) = 1 − that, no rescaling
    assert series["rule"].startswith(
        "P(yes) = the mean of the top-3 slice P(yes) of the unit (all slices when fewer; "
        "slices with no anatomy (uniform or noise) left out unless all are), P(no) = 1 − P(yes)"
    )
    assert "rescaled" not in series["rule"]
    # the slice of series A at .9 without anatomy: left out of A's pool (tester31), as
    # predict leaves it out; series B, all blank, pools all
    blank = np.array([True, False, False, False, True, True, False, False, False])
    again = _levels(("no", "yes"), ("no", "yes"), y, prob, sources, keys, no_anatomy=blank)
    by_unit = {r["unit"]: r for r in again["series"][1]}
    assert by_unit["series:A"]["probability"] == pytest.approx(top_k_mean([0.8, 0.1, 0.7]))
    assert by_unit["series:B"]["probability"] == pytest.approx(0.25)
    patient, rows = levels["patient"]
    assert patient["mixed_labels"] == 0 and patient["labelled_by_tumor_slices"] == 1
    assert patient["slices_without_unit"] == 3 and patient["n"] == 1
    assert [(r["true"], r["predicted"]) for r in rows] == [("yes", "yes")]
    assert rows[0]["probability"] == pytest.approx(0.8)
    assert patient["sensitivity"] == 1.0  # defined: the tumor patient is not left out
    assert patient["label_rule"].startswith("a unit's true label is its slices' label")


def test_a_unit_of_healthy_and_one_tumor_type_is_of_that_type_and_two_types_are_left_out():
    """Four classes: patient P holds notumor and glioma slices (a glioma patient), Q glioma
    and meningioma slices (no one label: left out and counted)."""
    names = ("glioma", "meningioma", "notumor", "pituitary")
    y = [2, 0, 0, 0, 1]
    sources = [f"dicom/S{k}/i0#0" for k in range(5)]
    keys = ["patient:P", "patient:P", "patient:Q", "patient:Q", "patient:Q"]
    prob = np.full((5, 4), 0.1)
    prob[np.arange(5), [2, 0, 0, 0, 1]] = 0.7
    patient, rows = _levels(names, names, y, prob, sources, keys, "notumor")["patient"]
    assert patient["n"] == 1 and patient["mixed_labels"] == 1
    assert patient["labelled_by_tumor_slices"] == 1
    assert [r["true"] for r in rows] == ["glioma"]
    # two tumor types (glioma vs meningioma, no healthy class): a mix is left out
    two = ("glioma", "meningioma")
    p2 = np.array([[0.6, 0.4], [0.3, 0.7]])
    patient, rows = _levels(two, two, [0, 1], p2, sources[:2], keys[:2])["patient"]
    assert patient["n"] == 0 and patient["mixed_labels"] == 1 and rows == []
    # without a healthy class (tumor types only) no mix has a label: both left out
    patient, rows = _levels(names, names, y, prob, sources, keys)["patient"]
    assert patient["n"] == 0 and patient["mixed_labels"] == 2 and rows == []


def test_a_class_without_patients_is_said_so_not_to_have_no_readable_slice():
    """Patients of class 'yes' only; the 'no' slices are a NIfTI volume (no Patient ID): the
    per-patient ROC AUC is undefined because no *patient* is 'no', and says where its
    readable slices went (tester 18: it read "no readable slice of class 'no'")."""
    y = [1, 1, 0, 0, 0]
    sources = ["dicom/A/i0#0", "dicom/A/i1#0", "nifti/V#1", "nifti/V#2", "nifti/V#3"]
    keys = ["patient:P", "patient:P", "volume:V", "volume:V", "volume:V"]
    prob = [[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]]
    levels = _levels(("no", "yes"), ("no", "yes"), y, prob, sources, keys)
    why = levels["patient"][0]["undefined"]["roc_auc"]
    assert why == "no patient of class 'no' (3 readable slice(s) have no Patient ID)"
    assert "roc_auc" not in levels["series"][0]["undefined"]  # two units, one of each class


def test_a_level_with_one_class_has_undefined_metrics_and_jpeg_only_has_none():
    """Three-class model: two patients, both glioma: ROC AUCs undefined (NaN, listed), the
    pooled label the most probable pooled class; JPEG/PNG slices only: no level at all."""
    names = ("glioma", "meningioma", "notumor")
    prob = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]]
    sources = ["dicom/S1/a#0", "dicom/S1/b#0", "dicom/S2/a#0", "dicom/S2/b#0"]
    keys = ["patient:P1", "patient:P1", "patient:P2", "patient:P2"]
    levels = _levels(names, names, [0, 0, 0, 0], prob, sources, keys)
    patient, rows = levels["patient"]
    assert [r["predicted"] for r in rows] == ["glioma", "meningioma"]
    assert patient["n"] == 2 and patient["accuracy"] == 0.5
    assert np.isnan(patient["macro_roc_auc"]) and "macro_roc_auc" in patient["undefined"]
    assert "rescaled so the 3 sum to 1" in patient["rule"]
    plain = _levels(("no", "yes"), ("no", "yes"), [0, 1], [[0.6, 0.4], [0.2, 0.8]],
                    ["no/a.png", "yes/b.png"], ["", ""])  # fmt: skip
    assert plain["series"][1] is None and not plain["series"][0]["available"]
    assert "JPEG/PNG slices only" in plain["series"][0]["why"]
    assert plain["patient"][1] is None and not plain["patient"][0]["available"]


@pytest.mark.backend
def test_evaluate_scores_dicom_series_and_patients_as_predict_pools_them(loose_model, tmp_path):
    """A class folder of DICOM series (3 made-up patients, one with two series): per_series
    and per_patient in metrics.json, their CSVs by keyed hash only, the pooled probabilities
    those of `mriscan predict`'s series rows; a JPEG folder says it has no such level."""
    from mriscan.predict import predict
    from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

    root = tmp_path / "raw"
    plan = [("yes", "Doe^Jane", 1), ("yes", "Doe^Jane", 2), ("yes", "Roe^Rick", 3)]
    plan += [("no", "Poe^Edgar", 4)]
    for label, name, seed in plan:
        write_dicom_series(
            root / label / f"{name.replace('^', '_')}_{seed}",
            phantom_volume(seed, n_slices=4, canvas=32, tumor=label == "yes"),
            patient=FakePatient(patient_id=name.upper(), name=name), seed=seed,
            series_number=seed,
        )  # fmt: skip
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        main, ["evaluate", str(root), "--model", str(loose_model), "--out", str(out)]
    )
    assert "Per series: DICOM series" in r.output and "Per patient: patients" in r.output
    assert "Per unit: P(yes) = the mean of the top-3 slice P(yes)" in r.output
    saved = _strict_json(out / "evaluation" / "metrics.json")
    assert saved["per_series"]["n"] == 4 and saved["per_patient"]["n"] == 3
    assert saved["per_patient"]["confusion_matrix"] is not None
    # one 'no' patient: the specificity is defined, its CI rests on one group (tester 18:
    # it read [1.000, 1.000]); three 'yes' patients in two groups or more keep theirs
    patient = saved["per_patient"]
    assert patient["ci95_groups"]["specificity"] == 1 and patient["ci95"]["specificity"] == [
        None,
        None,
    ]
    assert patient["ci95_groups"]["sensitivity"] >= 2 and None not in patient["ci95"]["sensitivity"]
    assert f"specificity {patient['specificity']:.3f} [CI undefined: 1 group(s)]" in r.output
    # macro-F1 is printed among them, so it has its CI too (tester 22: it stood bare), and
    # like balanced accuracy it needs both classes: here one 'no' patient
    assert patient["ci95_groups"]["macro_f1"] == 1 and patient["ci95"]["macro_f1"] == [None, None]
    assert f"macro-F1 {patient['macro_f1']:.3f} [CI undefined: 1 group(s)]" in r.output
    table = (out / "evaluation" / "series_predictions.csv").read_text()
    patients = (out / "evaluation" / "patient_predictions.csv").read_text()
    assert not any(s in table + patients + r.output for s in ("Doe", "Roe", "Poe", "Jane"))
    ours = sorted(float(row["p_yes"]) for row in csv.DictReader(table.splitlines()))
    theirs = sorted(
        row["probability"] for row in predict(loose_model, [root]) if row["level"] == "series"
    )
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert len(patients.splitlines()) == 1 + 3


@pytest.mark.backend
def test_evaluate_on_jpegs_says_there_is_no_series_level(loose_model, class_folder, tmp_path):
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        main, ["evaluate", str(class_folder), "--model", str(loose_model), "--out", str(out)]
    )
    assert "JPEG/PNG slices only" in r.output and "Per series" not in r.output
    saved = _strict_json(out / "evaluation" / "metrics.json")
    assert saved["per_series"]["available"] is False and saved["per_patient"]["available"] is False
    assert not (out / "evaluation" / "series_predictions.csv").exists()


def _roe_folder(root: Path) -> Path:
    """Class folders of DICOM series in folders named after made-up patients: yes/ holds
    ``Roe_Richard_19650303/T1`` (3 instances, the first truncated) and a notes file that is no
    input; no/ a readable series of another patient."""
    from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

    scans = root / "yes" / "Roe_Richard_19650303"
    roe = FakePatient(patient_id="ROE-1", name="Roe^Richard", birth_date="19650303")
    files = write_dicom_series(
        scans / "T1", phantom_volume(1, n_slices=3, canvas=32, tumor=True), patient=roe
    )
    files[0].write_bytes(files[0].read_bytes()[:-100])
    (scans / "Roe_notes.txt").write_text("Richard Roe, referred by Dr X")
    poe = FakePatient(patient_id="POE-1", name="Poe^Edgar", birth_date="19500119")
    write_dicom_series(
        root / "no" / "Poe_Edgar_19500119", phantom_volume(2, n_slices=3, canvas=32),
        patient=poe, seed=2,
    )  # fmt: skip
    return files[0]


@pytest.mark.backend
def test_evaluate_names_unreadable_scanner_files_by_pseudonym(loose_model, tmp_path):
    """Below a folder of DICOM files, evaluate names the files it could not read (a truncated
    instance, a notes file) by predict's pseudonyms on the console, in metrics.json and in
    every CSV; the truncated instance's series pseudonym is that of its readable slices.
    --show-paths names them by path."""
    truncated = _roe_folder(tmp_path / "raw")

    def run(*extra: str) -> tuple[str, dict, str]:
        out = tmp_path / f"ev{len(extra)}"
        args = ["evaluate", str(tmp_path / "raw"), "--model", str(loose_model), "--out", str(out)]
        r = CliRunner().invoke(main, [*args, *extra])
        assert r.exit_code == 0, r.output
        ev = out / "evaluation"
        tables = "".join(p.read_text() for p in sorted(ev.glob("*.csv")))
        saved = _strict_json(ev / "metrics.json")
        return r.output + tables + (ev / "metrics.json").read_text(), saved, tables

    text, saved, tables = run()
    for secret in ("Roe", "Richard", "19650303", "Poe", "Edgar", "19500119", "IM0", "T1/"):
        assert secret not in text
    rows = {u["path"].split("/")[0]: u for u in saved["unreadable"]}
    assert saved["n_unreadable"] == 2 and set(rows) == {"dicom", "other"}
    assert all(u["label"] == "yes" and u["level"] == "file" for u in rows.values())
    series = rows["dicom"]["path"].split("/")[1]
    assert series != "unknown" and f"dicom/{series}/" in tables  # its slices' series
    assert rows["other"]["path"].startswith("other/file-")
    table = list(csv.DictReader((tmp_path / "ev0" / "evaluation" / "predictions.csv").open()))
    failed = [t for t in table if t["error"]]  # in the error column, not one to the left
    assert {t["source"] for t in failed} == set(u["path"] for u in rows.values())
    assert all(t["predicted"] == t["p_yes"] == "" for t in failed)
    assert "run again with --show-paths" in text

    text, saved, _ = run("--show-paths")
    assert sorted(u["path"] for u in saved["unreadable"]) == sorted(
        [str(truncated), str(truncated.parent.parent / "Roe_notes.txt")]
    )
    assert str(truncated) in text and "Roe_notes.txt" in text
    assert "run again with --show-paths" not in text


@pytest.mark.backend
def test_evaluate_on_a_folder_creates_no_key_file_at_a_mistyped_key_path(
    loose_model, tmp_path, monkeypatch, caplog
):
    """N3: $MRISCAN_KEY_FILE naming no file (a typo): evaluate of a folder hashes its ids with
    a key of this run only and says so; no key file is left at that path. The unreadable
    instance is still named by its readable slices' series pseudonym (one key for both)."""
    _roe_folder(tmp_path / "raw")
    typo = tmp_path / "keys" / "id.kye"
    monkeypatch.setenv("MRISCAN_KEY_FILE", str(typo))
    out = tmp_path / "ev"
    with caplog.at_level("WARNING", logger="mriscan.evaluate"):
        r = _cli_evaluate(tmp_path / "raw", loose_model, out)
    assert r.exit_code == 0, r.output
    assert not typo.exists() and not typo.parent.exists()
    said = [m.getMessage() for m in caplog.records if "no identifier key file" in m.getMessage()]
    assert len(said) == 1 and str(typo) in said[0] and "none was created" in said[0]
    saved = _strict_json(out / "evaluation" / "metrics.json")
    series = next(u["path"] for u in saved["unreadable"] if u["path"].startswith("dicom/"))
    table = (out / "evaluation" / "predictions.csv").read_text()
    assert table.count(series.rsplit("/", 1)[0] + "/") == 3  # 2 slices + the failed instance


def test_unreadable_rows_name_the_other_files_a_reason_names(tmp_path):
    """A reason naming other files of the data (the stray files of a series, a label
    conflict) names them by their pseudonyms; a JPEG/PNG keeps its path; a manifest's rows
    are found relative to its folder and labelled by it."""
    from PIL import Image

    from mriscan.evaluate import unreadable_rows
    from mriscan.scan import new_salt

    truncated = _roe_folder(tmp_path / "raw")
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "raw" / "no" / "Moe.png")
    stray = truncated.relative_to(tmp_path / "raw").as_posix()
    other = stray.replace("IM0001", "IM0002")
    why = f"its series mixes slice sizes: {stray} (30x30); a series must have one size"
    skipped = [(other, why), ("no/Moe.png", f"label conflict: also stored as {stray} (yes)")]
    salt = new_salt()
    hidden = unreadable_rows(tmp_path / "raw", skipped, salt=salt)
    assert "Roe" not in hidden[0]["path"] + hidden[0]["error"]
    assert hidden[0]["path"].startswith("dicom/") and hidden[0]["label"] == "yes"
    assert str(tmp_path / "raw" / "no" / "Moe.png") == hidden[1]["path"]
    assert "level" not in hidden[1] and hidden[1]["label"] == "no"
    own = unreadable_rows(tmp_path / "raw", [(stray, "truncated")], salt=salt)[0]["path"]
    assert own in hidden[0]["error"]  # named as its own row would be
    shown = unreadable_rows(tmp_path / "raw", skipped, salt=salt, show_paths=True)
    assert shown[0]["error"] == why and "Roe_Richard_19650303" in shown[0]["path"]

    manifest = tmp_path / "raw" / "list.csv"
    manifest.write_text(f"path,label\n{stray},tumor\n{other},tumor\nno/Moe.png,healthy\n")
    rows = unreadable_rows(manifest, skipped, salt=salt)
    assert [r["label"] for r in rows] == ["tumor", "healthy"]
    assert rows[0]["path"] == hidden[0]["path"] and own in rows[0]["error"]


FOUR = ("notumor", "glioma", "meningioma", "pituitary")


@pytest.fixture
def four_class_model(tmp_path):
    """An untrained 4-class model (healthy class notumor) with its card: only the mapping of
    classes is under test, not its accuracy."""
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m4" / "model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8), num_classes=4).save(path)
    names = tuple(sorted(FOUR))
    ModelCard(
        preprocess=PreprocessConfig(size=32), class_names=names, threshold=None, healthy="notumor"
    ).save(path)
    return path


@pytest.mark.backend
def test_an_unknown_extra_folder_is_refused_and_the_shown_map_scores_k_classes(
    four_class_model, tmp_path
):
    """A fifth folder of healthy slices named t2_axial is no model class and not named like a
    tumor or healthy class: evaluate refuses it (naming it and the map that leaves it out)
    instead of scoring it as tumor and dropping to two classes. With that map the four
    matching classes keep their 4-class metrics."""
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "odd2", (*FOUR, "t2_axial"), n_per_class=3)
    with pytest.raises(MriscanError, match=r"\['t2_axial'\] is neither") as err:
        evaluate(four_class_model, data, out=tmp_path / "ev")
    shown = "glioma=glioma;meningioma=meningioma;notumor=notumor;pituitary=pituitary"
    assert f"'{shown}' leaves t2_axial out" in str(err.value)
    assert not (tmp_path / "ev" / "evaluation").exists()
    args = ["--model", str(four_class_model), "--out", str(tmp_path / "cli"), "--class-map", shown]
    r = CliRunner().invoke(main, ["evaluate", str(data), *args])
    assert r.exit_code in (0, 1), r.output  # 1 only for a metric undefined on these data
    ev = json.loads((tmp_path / "cli" / "evaluation" / "metrics.json").read_text())
    assert ev["comparison"].startswith("same:") and ev["comparison"].endswith("left out: t2_axial")
    assert len(ev["confusion_matrix"]) == 4 and ev["n"] == 12
    assert "left out: t2_axial" in r.output


@pytest.mark.backend
def test_an_empty_folder_the_class_map_leaves_out_is_allowed(four_class_model, tmp_path):
    """The class map leaves the empty folder out explicitly: nothing is dropped silently, so it
    is listed as left out rather than refused (the data may be read-only). Without a map, or
    when the map names it, it is still refused."""
    from mriscan.errors import EmptyDatasetError
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "odd", FOUR, n_per_class=3)
    (data / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"\['empty'\].*--class-map that leaves it out"):
        evaluate(four_class_model, data, out=tmp_path / "ev0")
    from mriscan.config import parse_class_map

    cmap = parse_class_map(";".join(f"{n}={n}" for n in FOUR))
    ev = evaluate(four_class_model, data, out=tmp_path / "ev", class_map=cmap)
    assert ev["n"] == 12 and len(ev["confusion_matrix"]) == 4
    with pytest.raises(EmptyDatasetError, match=r"\['empty'\]"):
        named = parse_class_map(";".join(f"{n}={n}" for n in FOUR[1:]) + ";notumor=notumor,empty")
        evaluate(four_class_model, data, out=tmp_path / "ev2", class_map=named)


def test_per_class_undefined_values_are_listed_with_their_reason():
    """Tester 16 findings 2 and 8, K classes: class 'c' absent but predicted (its precision 0,
    its recall, F1 and AUC undefined), class 'b' present but never predicted (precision
    undefined). Every per-class null is listed with why; no headline metric is undefined,
    so nothing fails; macro-F1 is the mean over the classes present."""
    from mriscan import metrics as mx
    from mriscan.evaluate import failing, undefined_metrics

    y = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 2, 0, 2])
    result = mx.multiclass_metrics(y, np.eye(3)[pred] * 0.7 + 0.1, ("a", "b", "c"))
    why = undefined_metrics(result, y, {"c": 2})
    assert why == {
        "precision of 'b'": "class 'b' never predicted",
        "recall of 'c'": why["recall of 'c'"],
        "F1 of 'c'": why["recall of 'c'"],
        "ROC AUC of 'c'": why["recall of 'c'"],
    }
    assert "2 of class 'c'" in why["recall of 'c'"] and "near-duplicates" in why["recall of 'c'"]
    assert failing(why) == {}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # a: 2TP/(3 + 3); b: none found
    # one class only: the macro AUC is undefined, a headline metric, so it fails
    one = mx.multiclass_metrics(y[:3], np.eye(3)[pred[:3]] * 0.7 + 0.1, ("a", "b", "c"))
    why = undefined_metrics(one, y[:3])
    reason = "no readable slice of class 'b' or 'c'"
    # a mean over classes needs two present: macro-F1 and balanced accuracy too
    assert failing(why) == dict.fromkeys(("balanced_accuracy", "macro_f1", "macro_roc_auc"), reason)
    assert why["ROC AUC of 'a'"] == "no readable slice of class 'b' or 'c' (one-vs-rest)"


def test_binary_with_no_negative_slice_fails_on_its_headline_metrics():
    """Tester 16 finding 2, the yes/no case (every 'no' slice removed as a near-duplicate,
    two 'yes' slices called 'no'): balanced accuracy is undefined with specificity and listed;
    so is macro-F1 (one class present: the F1 of 'yes' has precision 1 by construction)."""
    from mriscan import metrics as mx
    from mriscan.evaluate import failing, undefined_metrics

    y = np.ones(10, np.int64)
    result = mx.binary_metrics(y, np.r_[np.full(8, 0.9), 0.1, 0.2], threshold=0.5)
    why = undefined_metrics(result, y, {"no": 61})
    assert set(failing(why)) == {"balanced_accuracy", "macro_f1", "roc_auc", "specificity"}
    assert "61 of class 'no'" in why["balanced_accuracy"]
    assert {"recall of 'no'", "F1 of 'no'"} <= set(why) and "precision of 'no'" not in why
    assert np.isnan(result["macro_f1"]) and result["per_class"]["yes"]["precision"] == 1.0


@pytest.mark.backend
def test_evaluate_exits_0_when_only_per_class_values_are_undefined(tmp_path):
    """Tester 16 finding 8: a 3-class model on data without class 'c' exits 0; metrics.json
    lists every per-class null in "undefined" (none of them a headline metric) and macro-F1
    is the mean over 'a' and 'b'; the console says the same."""
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig
    from tests.conftest import write_class_folders

    path = tmp_path / "m" / "model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8), num_classes=3, seed=0).save(path)
    card = ModelCard(
        preprocess=PreprocessConfig(size=32), class_names=("a", "b", "c"), threshold=None
    )
    card.save(path)
    data = write_class_folders(tmp_path / "data", ("a", "b"), n_per_class=4)
    r = CliRunner().invoke(
        main, ["evaluate", str(data), "--model", str(path), "--out", str(tmp_path / "ev")]
    )
    assert r.exit_code == 0, r.output
    saved = _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")
    c = saved["per_class"]["c"]
    assert c["support"] == 0 and c["recall"] is None and c["f1"] is None
    assert c["roc_auc"] is None
    listed = saved["undefined"]
    assert {"recall of 'c'", "F1 of 'c'", "ROC AUC of 'c'"} <= set(listed)
    nulls = {f"precision of {n!r}" for n, v in saved["per_class"].items() if v["precision"] is None}
    assert {k for k in listed if k.startswith("precision")} == nulls
    assert not set(listed) & {"accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc"}
    f1 = [saved["per_class"][n]["f1"] for n in "ab"]
    assert saved["macro_f1"] == pytest.approx(np.mean(f1))
    assert "recall of 'c', F1 of 'c', ROC AUC of 'c': these data hold no class 'c'" in r.output
    assert "Error" not in r.output
    assert "macro-F1 and balanced accuracy over the classes present: a, b" in r.output


def test_evaluate_keeps_its_temporary_store_in_a_scratch_folder(
    loose_model, class_folder, tmp_path, monkeypatch
):
    """evaluate on a class folder ingests it into a scratch folder of the system's temporary
    directory: a killed evaluate's folder there is removed by the next evaluate."""
    import tempfile

    from tests.test_scratch import _killed_run

    base = tmp_path / "systmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    left = _killed_run(base)
    evaluate(loose_model, class_folder, out=tmp_path / "ev", n_boot=10, remove_duplicates=False)
    assert not left.exists() and list(base.iterdir()) == []
    assert (tmp_path / "ev" / "evaluation" / "metrics.json").is_file()


# --- tester 16 finding 6: a one-class external set (tumor-only, healthy-only) ------------------


def _one_class_folder(class_folder, tmp_path, name):
    """``class_folder``'s 6 slices of one class, alone under ``tmp_path/only_<name>/<name>/``."""
    root = tmp_path / f"only_{name}"
    root.mkdir()
    (class_folder / name).rename(root / name)
    return root


def _cli_evaluate(data, model, out, *extra):
    args = ["evaluate", str(data), "--model", str(model), "--out", str(out), *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.backend
def test_a_tumor_only_folder_gives_sensitivity_and_exits_1_saying_so(
    loose_model, class_folder, tmp_path, monkeypatch
):
    """Sensitivity and recall per data class are computed with their group CIs; specificity,
    balanced accuracy and AUC are undefined with the reason; the exit status is 1 (a headline
    metric undefined), after a line saying what the one class allowed. Near-duplicates of
    the model's training slices are still removed and counted."""
    import mriscan.evaluate as ev_mod
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    data = _one_class_folder(class_folder, tmp_path, "yes")
    # the model was "trained" on two of these slices: their thumbnails are its training ones
    ingest(data, tmp_path / "s.zarr", IngestConfig(PreprocessConfig(size=32), min_classes=1))
    with ImageStore.open(tmp_path / "s.zarr") as store:
        assert store.class_names == ("yes",)
        trained = store.signatures()[:2]
    monkeypatch.setattr(ev_mod, "training_signatures", lambda path, card: trained)
    ev = evaluate(loose_model, data, out=tmp_path / "ev", n_boot=50)
    removed = ev["near_duplicates_removed"]
    assert removed["count"] >= 2 and removed["per_class"] == {"yes": removed["count"]}
    assert ev["n"] + removed["count"] == 6 and ev["n"] > 0
    assert ev["comparison"] == "same: no = (none); yes = yes"
    assert np.isfinite(ev["sensitivity"]) and np.isfinite(
        ev["recall_per_data_class"]["yes"]["recall"]
    )
    assert all(np.isfinite(ev["ci95"]["sensitivity"]))
    assert np.isnan(ev["specificity"]) and np.isnan(ev["roc_auc"])
    assert np.isnan(ev["balanced_accuracy"]) and all(np.isnan(ev["ci95"]["specificity"]))
    assert set(failing(ev["undefined"])) == {
        "balanced_accuracy", "macro_f1", "roc_auc", "specificity"
    }  # fmt: skip
    assert ev["undefined"]["specificity"] == "these data hold no class 'no'"
    one = ev["one_class"]
    assert one["class"] == "yes" and "false_positive_rate" not in one
    assert one["defined"] == ["accuracy", "sensitivity"]
    assert one["undefined"] == ["balanced_accuracy", "macro_f1", "roc_auc", "specificity"]
    assert _strict_json(tmp_path / "ev" / "evaluation" / "metrics.json")["specificity"] is None

    r = _cli_evaluate(data, loose_model, tmp_path / "c")
    assert r.exit_code == 1, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("One class in these data"))
    assert line.startswith("One class in these data (yes): computed accuracy")
    assert "sensitivity " in line and "recall per data class" in line
    assert "balanced accuracy, macro-F1, ROC AUC, specificity need slices of another" in line
    assert "so the exit status is 1" in line
    assert r.output.index("One class in these data") < r.output.index("Error:")
    assert "removed" in r.output and "near-duplicates of training slices" in r.output


@pytest.mark.backend
def test_the_closing_advice_names_only_unreadable_files_that_could_help(
    loose_model, class_folder, tmp_path
):
    """Tester 18: a tumor-only set with an unreadable tumor file was told to "fix or remove
    the unreadable files", which cannot add a 'no' slice; the slices' undefined per-class
    line was printed under the per-patient block. Now: no such advice there; an unreadable
    file of the class without a slice is named as the one that can help; the slices' line
    comes before the unit levels."""
    data = _one_class_folder(class_folder, tmp_path, "yes")
    _truncate(next((data / "yes").glob("*.png")))
    r = _cli_evaluate(data, loose_model, tmp_path / "c")
    assert r.exit_code == 1, r.output
    err = next(x for x in r.output.splitlines() if x.startswith("Error:"))
    assert "unreadable" not in err and err.endswith(
        "evaluate on data holding a slice of every class."
    )
    saved = _strict_json(tmp_path / "c" / "evaluation" / "metrics.json")
    assert saved["n_unreadable"] == 1 and saved["unreadable_of_absent_classes"] == 0
    minor = r.output.index("  (slices) undefined, left out of every mean: ")
    assert minor < r.output.index("JPEG/PNG slices only") < r.output.index("One class in")

    (data / "no").mkdir()
    (data / "no" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = _cli_evaluate(data, loose_model, tmp_path / "d")
    assert r.exit_code == 1, r.output
    assert "fix the 1 unreadable file(s) of a class without a slice, or evaluate" in r.output


@pytest.mark.backend
def test_a_class_emptied_by_the_removals_is_named_in_the_closing_advice(
    loose_model, class_folder, tmp_path, monkeypatch
):
    """Tester20 F10: when every 'no' slice was removed as a near-duplicate of the model's
    training data, the closing advice told the user to fix unreadable files; it now names the
    class the removals emptied and the option that keeps them."""
    import mriscan.evaluate as ev_mod
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    ingest(class_folder, tmp_path / "s.zarr", IngestConfig(PreprocessConfig(size=32)))
    with ImageStore.open(tmp_path / "s.zarr") as store:
        no = store.class_names.index("no")
        trained = store.signatures()[np.asarray(store.labels) == no]
    monkeypatch.setattr(ev_mod, "training_signatures", lambda path, card: trained)
    r = _cli_evaluate(class_folder, loose_model, tmp_path / "c")
    assert r.exit_code == 1, r.output
    err = next(x for x in r.output.splitlines() if x.startswith("Error:"))
    assert "keep the removed slices of no (--keep-duplicates" in err, err
    assert "unreadable" not in err
    saved = _strict_json(tmp_path / "c" / "evaluation" / "metrics.json")
    assert saved["classes_emptied_by_removal"] == ["no"]


@pytest.mark.backend
def test_a_healthy_only_folder_gives_specificity_and_the_false_positive_rate(
    loose_model, class_folder, tmp_path
):
    data = _one_class_folder(class_folder, tmp_path, "no")
    ev = evaluate(loose_model, data, out=tmp_path / "ev", n_boot=50)
    assert ev["n"] == 6 and np.isfinite(ev["specificity"]) and np.isnan(ev["sensitivity"])
    one = ev["one_class"]
    assert one["false_positive_rate"] == pytest.approx(1 - ev["specificity"])
    # the six look-alike healthy slices form one duplicate group: no CI can be estimated
    # (tester 18: a zero-width one read as certainty), for the rate either
    assert ev["ci95_groups"]["specificity"] == 1 and np.isnan(ev["ci95"]["specificity"]).all()
    assert np.isnan(one["false_positive_rate_ci95"]).all()
    assert set(failing(ev["undefined"])) == {
        "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity"
    }  # fmt: skip
    r = _cli_evaluate(data, loose_model, tmp_path / "c")
    assert r.exit_code == 1, r.output
    fpr = f"false-positive rate {one['false_positive_rate']:.3f} [CI undefined: 1 group(s)]"
    assert "One class in these data (no): computed" in r.output and fpr in r.output
    assert "balanced accuracy, macro-F1, ROC AUC, sensitivity need slices of another" in r.output


@pytest.mark.backend
def test_a_class_map_leaving_one_class_scores_it_and_a_k_class_model_scores_healthy_data(
    loose_model, four_class_model, tmp_path
):
    """Tester 16's command: a yes/no model on a 3-tumor-type folder with
    --class-map 'yes=glioma,meningioma,pituitary' (refused before: "must leave at least two
    classes"); a 4-class model on its healthy class alone: tumor vs no tumor, specificity."""
    from tests.conftest import write_class_folders

    k3 = write_class_folders(tmp_path / "k3", ("glioma", "meningioma", "pituitary"), n_per_class=3)
    r = _cli_evaluate(
        k3, loose_model, tmp_path / "c", "--class-map", "yes=glioma,meningioma,pituitary"
    )
    assert r.exit_code == 1, r.output
    saved = _strict_json(tmp_path / "c" / "evaluation" / "metrics.json")
    assert saved["comparison"] == "same: no = (none); yes = glioma + meningioma + pituitary"
    assert saved["n"] == 9 and saved["sensitivity"] is not None and saved["specificity"] is None
    assert set(saved["recall_per_data_class"]) == {"glioma", "meningioma", "pituitary"}
    assert all(v["n"] == 3 for v in saved["recall_per_data_class"].values())
    line = "One class in these data (glioma + meningioma + pituitary, scored as the model's yes)"
    assert line in r.output
    healthy = write_class_folders(tmp_path / "h", ("notumor",), n_per_class=4)
    ev = evaluate(four_class_model, healthy, out=tmp_path / "ev4", n_boot=20)
    assert ev["comparison"] == "tumor_vs_healthy: notumor = notumor; tumor = (none)"
    assert np.isfinite(ev["specificity"]) and "false_positive_rate" in ev["one_class"]


def test_train_still_refuses_one_class(class_folder, tmp_path):
    """Only evaluate's data side takes one class: train refuses a one-class folder and a
    one-target class map with their messages, before anything is trained."""
    data = _one_class_folder(class_folder, tmp_path, "yes")
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "t")])
    assert r.exit_code != 0 and "must hold at least two class sub-folders" in r.output
    args = ["train", str(data), "--class-map", "yes=yes"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "t2")])
    assert r.exit_code == 2 and "must leave at least two classes" in r.output
    r = CliRunner().invoke(main, ["ingest", str(data), "--store", str(tmp_path / "s.zarr")])
    assert r.exit_code != 0 and "must hold at least two class sub-folders" in r.output
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.backend
def test_a_data_class_the_class_map_leaves_out_is_not_listed_as_zero(
    loose_model, class_folder, tmp_path
):
    """A third folder the class map leaves out: the comparison says "left out: extra", and
    neither the removed-slice counts (near-duplicates, same patient, exact duplicates) nor
    recall per data class list it with a 0 / n=0, in metrics.json or on the console (its
    slices are never read into them)."""
    import shutil

    shutil.copytree(class_folder / "yes", class_folder / "extra")
    r = _cli_evaluate(class_folder, loose_model, tmp_path / "c", "--class-map", "no=no;yes=yes")
    assert r.exit_code in (0, 1), r.output
    saved = _strict_json(tmp_path / "c" / "evaluation" / "metrics.json")
    assert saved["comparison"].endswith("left out: extra")
    assert set(saved["recall_per_data_class"]) == {"no", "yes"}
    for key in ("near_duplicates_removed", "same_patient_removed", "exact_duplicates"):
        assert set(saved[key]["per_class"]) == {"no", "yes"}, key
    (line,) = [x for x in r.output.splitlines() if "recall per data class:" in x]
    assert "extra" not in line
    assert "left out: extra" in r.output


@pytest.mark.backend
def test_one_class_data_name_their_data_class_and_the_model_class_it_maps_to(
    four_class_model, tmp_path
):
    """A yes/no model on a healthy-only folder named notumor: its scored classes are the
    model's own (no, yes: not "tumor", a class it does not have) and the one-class summary
    names the data class and the model class it maps to, in metrics.json and on the console.
    A 4-class model on tumor types alone: "tumor" stands for the model's tumor classes."""
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig
    from tests.conftest import write_class_folders

    model = tmp_path / "yn" / "model.keras"
    model.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(model)
    ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, healthy="no").save(model)
    healthy = write_class_folders(tmp_path / "h", ("notumor",), n_per_class=4)
    r = _cli_evaluate(healthy, model, tmp_path / "c")
    assert r.exit_code == 1, r.output
    saved = _strict_json(tmp_path / "c" / "evaluation" / "metrics.json")
    assert saved["comparison"] == "tumor_vs_healthy: no = notumor; yes = (none)"
    assert saved["class_names"] == ["no", "yes"] and set(saved["per_class"]) == {"no", "yes"}
    one = saved["one_class"]
    assert (one["class"], one["data_classes"], one["model_classes"]) == ("no", ["notumor"], ["no"])
    assert "One class in these data (notumor, scored as the model's no): computed" in r.output

    # tumor-like names that are no model class: tumor vs no tumor
    kinds = ("glioma_tumor", "meningioma_tumor")
    tumors = write_class_folders(tmp_path / "t", kinds, n_per_class=3)
    ev = evaluate(four_class_model, tumors, out=tmp_path / "ev4", n_boot=20)
    one = ev["one_class"]
    assert ev["class_names"] == ["notumor", "tumor"] and one["class"] == "tumor"
    assert one["data_classes"] == list(kinds)
    assert one["model_classes"] == ["glioma", "meningioma", "pituitary"]
    from mriscan.cli import _one_class_names

    assert _one_class_names(one) == (
        "glioma_tumor + meningioma_tumor, scored as tumor: the model's glioma, meningioma or "
        "pituitary"
    )
