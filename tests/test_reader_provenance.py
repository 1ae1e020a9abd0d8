"""How scanner files were read is recorded like the preprocessing: in the store (a later ingest
reads the same way, or is refused), in the model card (predict, explain and evaluate read the
same way unless told otherwise). Issue 18, fresh tester's item 1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mriscan.artifacts import ModelCard
from mriscan.cli import main
from mriscan.errors import ConfigError
from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.readers import ReadOptions, settings_for_model
from mriscan.scan_config import READER_FLAGS, NiftiConfig, ReaderSettings, describe_setting
from mriscan.store import ImageStore
from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series, write_nifti

SAGITTAL = ["--nifti-plane", "sagittal", "--nifti-slices", "middle", "--nifti-middle-count", "3"]
SAGITTAL_SETTINGS = ReaderSettings(nifti=NiftiConfig(plane="sagittal", selection="middle",
                                                     middle_count=3))  # fmt: skip


def _volume(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, stack_to_ras(phantom_volume(seed, n_slices=6, canvas=32)))


@pytest.fixture
def nii(tmp_path: Path) -> Path:
    """yes/ and no/ with one 6-slice 32x32 NIfTI volume each."""
    root = tmp_path / "nii"
    _volume(root / "yes" / "a.nii.gz", 1)
    _volume(root / "no" / "b.nii.gz", 2)
    return root


def _ingest(*args: str):
    return CliRunner().invoke(main, ["ingest", *args, "--image-size", "32"])


def _records(store: Path):
    with ImageStore.open(store) as st:
        return list(st.index.records), st.reader_settings


# ---- the settings themselves -------------------------------------------------------------


def test_settings_round_trip_and_name_their_options():
    s = SAGITTAL_SETTINGS.replace({"dicom.modalities": None, "dicom.window_percentiles": [1, 99]})
    assert ReaderSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert "max_pixels" not in s.to_dict()["dicom"]  # a safety cap, not a way of reading
    assert ReaderSettings.from_dict({"nifti": {"plane": "coronal"}}).nifti.plane == "coronal"
    assert [n for n, _, _ in ReaderSettings().differences(s)] == [
        "dicom.modalities", "dicom.window_percentiles", "nifti.plane", "nifti.selection",
        "nifti.middle_count"]  # fmt: skip
    assert [n for n, _, _ in ReaderSettings().differences(s, ["dicom"])] == [
        "dicom.modalities", "dicom.window_percentiles"]  # fmt: skip
    assert describe_setting("dicom.modalities", None) == "--modality any"
    assert describe_setting("dicom.use_header_window", False) == "--no-dicom-header-window"
    assert describe_setting("nifti.window_percentiles", (1.0, 99.0)) == "--nifti-window 1.0 99.0"
    for bad in ({"nifti": {"plane": "oblique"}}, {"nifti": {"colour": 1}}, {"pet": {}}, [1]):
        with pytest.raises(ConfigError):
            ReaderSettings.from_dict(bad)


def test_every_reader_flag_is_an_option_of_ingest():
    from mriscan.cli import _SCAN_OPTIONS

    flags = {flag for _, _, flag, _, _ in _SCAN_OPTIONS}
    assert {f for f in READER_FLAGS.values() if f} == flags | {"--modality"}


# ---- (a) the store records them; old stores read as unknown ------------------------------


def test_a_new_store_records_how_it_was_read_and_info_shows_it(nii, tmp_path):
    store = tmp_path / "s.zarr"
    res = _ingest(str(nii), "--store", str(store), *SAGITTAL)
    assert res.exit_code == 0, res.output
    recs, reader = _records(store)
    assert reader == SAGITTAL_SETTINGS
    assert json.loads((store / "index.json").read_text())["reader"] == SAGITTAL_SETTINGS.to_dict()
    assert {r.plane for r in recs} == {"sagittal"} and len(recs) == 6
    res = CliRunner().invoke(main, ["info", "--store", str(store), "--json"])
    assert json.loads(res.output)["reader"]["nifti"]["plane"] == "sagittal"
    res = CliRunner().invoke(main, ["info", "--store", str(store)])
    assert "--nifti-plane sagittal" in res.output


def _forget_reader(store: Path) -> None:
    """Make ``store`` look written by an mriscan that did not record its reader settings."""
    index = json.loads((store / "index.json").read_text())
    del index["reader"]
    (store / "index.json").write_text(json.dumps(index))


def test_an_old_store_reads_as_unknown_and_is_not_given_settings(nii, tmp_path, caplog):
    store = tmp_path / "old.zarr"
    res = _ingest(str(nii), "--store", str(store))
    assert res.exit_code == 0, res.output
    _forget_reader(store)
    assert _records(store)[1] is None
    _volume(nii / "yes" / "c.nii.gz", 3)
    with caplog.at_level(logging.WARNING, logger="mriscan.ingest"):
        res = _ingest(str(nii), "--store", str(store))
    assert res.exit_code == 0, res.output
    assert "does not record how they were read" in caplog.text
    recs, reader = _records(store)
    assert reader is None  # the older slices' settings stay unknown
    assert {r.plane for r in recs} == {"axial"}


def test_an_old_store_of_plain_images_takes_the_settings_of_its_next_ingest(
    class_folder, nii, tmp_path
):
    store = tmp_path / "png.zarr"
    assert _ingest(str(class_folder), "--store", str(store)).exit_code == 0
    _forget_reader(store)
    _volume(class_folder / "yes" / "v.nii.gz", 4)
    res = _ingest(str(class_folder), "--store", str(store), *SAGITTAL)
    assert res.exit_code == 0, res.output
    assert _records(store)[1] == SAGITTAL_SETTINGS


# ---- (b) a later ingest reads the same way, or is refused ------------------------------


def test_a_second_ingest_without_options_keeps_the_stores_settings(nii, tmp_path):
    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store), *SAGITTAL).exit_code == 0
    _volume(nii / "yes" / "c.nii.gz", 3)
    res = _ingest(str(nii), "--store", str(store))
    assert res.exit_code == 0, res.output
    recs, reader = _records(store)
    assert reader == SAGITTAL_SETTINGS
    assert len(recs) == 9 and {r.plane for r in recs} == {"sagittal"}
    # the library: IngestConfig without reader configs reads as the store records, too
    _volume(nii / "no" / "d.nii.gz", 5)
    ingest(nii, store, IngestConfig(preprocess=PreprocessConfig(size=32)))
    recs, _ = _records(store)
    assert len(recs) == 12 and {r.plane for r in recs} == {"sagittal"}
    # typing the store's own value (or another setting's default) is no conflict
    _volume(nii / "no" / "e.nii.gz", 6)
    assert _ingest(str(nii), "--store", str(store), "--nifti-plane", "sagittal").exit_code == 0
    assert len(_records(store)[0]) == 15


def test_a_conflicting_ingest_is_refused_naming_the_setting_and_writes_nothing(nii, tmp_path):
    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store)).exit_code == 0  # defaults: axial, brain
    before = (store / "index.json").read_bytes()
    _volume(nii / "yes" / "c.nii.gz", 3)
    res = _ingest(str(nii), "--store", str(store), *SAGITTAL)
    assert res.exit_code != 0
    msg = " ".join(res.output.split())
    assert "holds NIfTI slices read with --nifti-plane axial, --nifti-slices brain" in msg
    assert "asks for --nifti-plane sagittal, --nifti-slices middle" in msg
    assert "--nifti-middle-count 16;" in msg and "--nifti-middle-count 3." in msg
    assert "new --store" in msg and "Nothing was written" in msg
    assert (store / "index.json").read_bytes() == before
    with pytest.raises(ConfigError, match="--nifti-plane axial"):
        ingest(nii, store, IngestConfig(preprocess=PreprocessConfig(size=32),
                                        nifti=NiftiConfig(plane="coronal")))  # fmt: skip
    assert (store / "index.json").read_bytes() == before


def test_settings_of_a_kind_the_store_does_not_hold_may_change(nii, tmp_path):
    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store)).exit_code == 0  # NIfTI only
    write_dicom_series(nii / "no" / "s", phantom_volume(7, n_slices=3, canvas=32))
    res = _ingest(str(nii), "--store", str(store), "--no-dicom-header-window")
    assert res.exit_code == 0, res.output
    recs, reader = _records(store)
    assert reader.dicom.use_header_window is False
    assert {r.window for r in recs if r.kind == "dicom"} == {"percentile"}
    # now it holds DICOM slices: their settings are fixed
    res = _ingest(str(nii), "--store", str(store), "--dicom-header-window")
    assert res.exit_code != 0 and "--no-dicom-header-window" in res.output


def test_train_from_a_folder_into_an_existing_store_is_refused_the_same_way(nii, tmp_path):
    from mriscan.sources import open_or_ingest

    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store), *SAGITTAL).exit_code == 0
    _volume(nii / "yes" / "c.nii.gz", 3)
    with pytest.raises(ConfigError, match="--nifti-plane sagittal"):
        open_or_ingest(
            nii, store_path=store, read_options=ReadOptions(overrides={"nifti.plane": "axial"})
        )
    with open_or_ingest(nii, store_path=store) as st:  # no options: the store's
        assert len(st) == 9 and st.reader_settings == SAGITTAL_SETTINGS


# ---- (c, d) the model card; predict, explain and evaluate read with it -------------------


def test_settings_for_model_prefers_typed_options_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        ro = settings_for_model(SAGITTAL_SETTINGS, None)
        assert ro.nifti == SAGITTAL_SETTINGS.nifti and not caplog.text
        ro = settings_for_model(SAGITTAL_SETTINGS, ReadOptions(overrides={"nifti.plane": "axial"}))
    assert ro.nifti.plane == "axial" and ro.nifti.middle_count == 3  # the rest from the card
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 1 and "--nifti-plane axial" in lines[0]
    assert "trained on data read with --nifti-plane sagittal" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        old = settings_for_model(None, None)  # an older card: the defaults, as before
    assert old.nifti == NiftiConfig() and not caplog.text


@pytest.mark.parametrize(
    ("kinds", "warned"),
    [(None, True), (("image",), False), (("image", "dicom"), False), (("nifti",), True)],
)
def test_settings_for_model_compares_only_kinds_the_model_saw(caplog, kinds, warned):
    """Issue 18, L3: a NIfTI setting typed for a model trained on no NIfTI slice differs from
    nothing it learnt from, so it is not reported; a card that does not record its kinds
    (None) is compared on both, as before."""
    typed = ReadOptions(overrides={"nifti.plane": "coronal"})
    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        ro = settings_for_model(SAGITTAL_SETTINGS, typed, kinds=kinds)
    assert ro.nifti.plane == "coronal" and ro.nifti.middle_count == 3
    assert ("trained on data read with" in caplog.text) is warned


def test_old_model_cards_read_without_reader_settings():
    card = ModelCard(preprocess=PreprocessConfig(size=32), class_names=("no", "yes"),
                     threshold=0.5, reader=SAGITTAL_SETTINGS)  # fmt: skip
    data = card.to_dict()
    assert ModelCard.from_dict(data).reader == SAGITTAL_SETTINGS
    del data["reader"]
    assert ModelCard.from_dict(data).reader is None
    from mriscan.artifacts import ModelCardError

    with pytest.raises(ModelCardError, match="plane"):
        ModelCard.from_dict({**data, "reader": {"nifti": {"plane": "oblique"}}})


@pytest.mark.backend
def test_the_model_card_of_a_training_run_copies_the_stores_settings(nii, tmp_path):
    from conftest import fast_config

    from mriscan.training.fit import card_for

    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store), *SAGITTAL).exit_code == 0
    with ImageStore.open(store) as st:
        card = card_for(st, fast_config(), 0.5)
    assert card.reader == SAGITTAL_SETTINGS
    assert ModelCard.from_dict(card.to_dict()).reader == SAGITTAL_SETTINGS
    assert card.train_kinds == ("nifti",)


@pytest.mark.backend
def test_the_model_card_records_the_kinds_its_training_slices_came_from(nii, tmp_path):
    """Issue 18, L3: ``train_kinds`` holds the kinds of the slices the model saw (``seen``),
    not every kind the store holds."""
    from conftest import fast_config, make_slice
    from PIL import Image

    from mriscan.training.fit import card_for

    rng = np.random.default_rng(0)
    for cls in ("yes", "no"):
        Image.fromarray(make_slice(rng, tumor=cls == "yes")).save(nii / cls / "plain.png")
    store = tmp_path / "s.zarr"
    assert _ingest(str(nii), "--store", str(store)).exit_code == 0
    with ImageStore.open(store) as st:
        kinds = np.array(st.table.strings("kind"))
        assert card_for(st, fast_config(), 0.5).train_kinds == ("image", "nifti")
        images = np.flatnonzero(kinds == "image")
        assert card_for(st, fast_config(), 0.5, seen=images).train_kinds == ("image",)


@pytest.fixture
def sagittal_model(tmp_path):
    from mriscan.model import build_model

    path = tmp_path / "m" / "best_model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    ModelCard(preprocess=PreprocessConfig(size=32), class_names=("no", "yes"), threshold=0.5,
              reader=SAGITTAL_SETTINGS).save(path)  # fmt: skip
    return path


@pytest.mark.backend
def test_predict_explain_and_evaluate_read_as_the_model_card_says(
    sagittal_model, nii, tmp_path, caplog
):
    from mriscan.evaluate import evaluate
    from mriscan.explain import explain
    from mriscan.predict import predict

    vol = nii / "yes" / "a.nii.gz"
    rows = [r for r in predict(sagittal_model, [vol]) if r["level"] == "slice"]
    assert len(rows) == 3  # sagittal, the middle 3 (the defaults keep the axial brain slices)
    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        rows = predict(sagittal_model, [vol], read_options=ReadOptions(
            overrides={"nifti.middle_count": 2}))  # fmt: skip
    assert len([r for r in rows if r["level"] == "slice"]) == 2
    assert "--nifti-middle-count 2" in caplog.text and "--nifti-middle-count 3" in caplog.text
    res = explain(sagittal_model, [vol], out=tmp_path / "x", top_k=5)
    assert len([r for r in res if not r["error"]]) == 3  # only 3 slices were read
    result = evaluate(sagittal_model, nii, out=tmp_path / "ev", n_boot=10)
    assert result["n_files"] == 6  # 3 sagittal slices of each of the two volumes


@pytest.mark.backend
def test_the_cli_notes_typed_options_that_differ_from_the_training_settings(
    sagittal_model, nii, caplog, tmp_path
):
    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        res = CliRunner().invoke(main, ["predict", str(sagittal_model), str(nii / "yes"),
                                        "--output", str(tmp_path / "p.csv"),
                                        "--nifti-plane", "coronal"])  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [r.message for r in caplog.records if "trained on data read with" in r.message]
    assert len(notes) == 1 and "--nifti-plane coronal" in notes[0]
    assert "(3 slices)" in res.output  # coronal; the middle 3 as the card says


@pytest.mark.backend
@pytest.mark.parametrize(("kinds", "warned"), [(None, True), (("image", "dicom"), False)])
def test_settings_of_a_kind_the_model_never_saw_are_not_noted(
    sagittal_model, nii, caplog, tmp_path, kinds, warned
):
    """Issue 18, L3: NIfTI read otherwise than the card's settings is noted by predict,
    explain and evaluate (on a store) only when the model was trained on NIfTI slices, or its
    card does not say which kinds it saw."""
    import dataclasses

    from mriscan.evaluate import evaluate

    card = ModelCard.load(sagittal_model)
    dataclasses.replace(card, train_kinds=kinds).save(sagittal_model)
    store = tmp_path / "coronal.zarr"
    assert _ingest(str(nii), "--store", str(store), "--nifti-plane", "coronal").exit_code == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for command, out in (("predict", "--output"), ("explain", "--out")):
            res = CliRunner().invoke(main, [command, str(sagittal_model), str(nii / "yes"),
                                            out, str(tmp_path / f"{command}.csv"),
                                            "--nifti-plane", "coronal"])  # fmt: skip
            assert res.exit_code == 0, res.output
        evaluate(sagittal_model, store, out=tmp_path / "ev", n_boot=10)
    notes = [r.message for r in caplog.records if "--nifti-plane sagittal" in r.message]
    assert len(notes) == (3 if warned else 0), notes
    # a model trained on no NIfTI slice scoring NIfTI files says so (predict and explain);
    # a card that does not record its kinds says nothing of them
    unseen = [r.message for r in caplog.records if "its outputs on them are untested" in r.message]
    assert len(unseen) == (0 if kinds is None else 2), unseen
    if kinds is not None:
        assert unseen[0].startswith("1 NIfTI file(s) scored by the model, which was trained on "
                                    "JPEG/PNG and DICOM only")  # fmt: skip


def test_warn_unseen_kinds_names_each_unseen_kind_with_its_count(caplog):
    from mriscan.readers import warn_unseen_kinds

    with caplog.at_level(logging.WARNING, logger="mriscan.readers"):
        assert warn_unseen_kinds(["image", "nifti", "dicom", "nifti"], ("image",)) == [
            "dicom",
            "nifti",
        ]
        assert warn_unseen_kinds(["image", "image"], ("image", "dicom")) == []
        assert warn_unseen_kinds(["nifti"], None) == []
    assert [r.message for r in caplog.records] == [
        "1 DICOM file(s) and 2 NIfTI file(s) scored by the model, which was trained on JPEG/PNG "
        "only: its outputs on them are untested (validate it on labelled data of that kind "
        "first, e.g. with mriscan evaluate)"
    ]


# ---- item 4: evaluate removes slices of the model's training patients ---------------------


def _series(root: Path, cls: str, pid: str, seed: int) -> None:
    from mriscan.synth_scanner import FakePatient

    write_dicom_series(root / cls / f"{pid}-{seed}", phantom_volume(seed, n_slices=3, canvas=32),
                       patient=FakePatient(patient_id=pid))  # fmt: skip


@pytest.mark.backend
def test_evaluate_removes_and_counts_slices_of_training_patients(tmp_path, monkeypatch, caplog):
    import csv

    from conftest import fast_config

    from mriscan.evaluate import evaluate
    from mriscan.model import build_model
    from mriscan.training.fit import card_for

    train = tmp_path / "train"
    _series(train, "yes", "P1", 1)
    _series(train, "no", "P2", 2)
    store = tmp_path / "train.zarr"
    assert _ingest(str(train), "--store", str(store)).exit_code == 0
    with ImageStore.open(store) as st:
        seen = st.active_indices()
        card = card_for(st, fast_config(), 0.5, seen=seen[seen != seen[0]])  # all but one slice
        key_id = st.key_id
    listed = card.train_patients
    assert listed["key_id"] == key_id and len(listed["patients"]) == 2
    assert all(p.startswith("patient:") and "P1" not in p for p in listed["patients"])
    model = tmp_path / "m" / "best_model.keras"
    model.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(model)
    card.save(model)
    other = tmp_path / "other"  # new series: two of training patients, two of others
    _series(other, "yes", "P1", 11)
    _series(other, "yes", "P3", 13)
    _series(other, "no", "P2", 12)
    _series(other, "no", "P4", 14)
    res = evaluate(model, other, out=tmp_path / "ev", n_boot=10)
    same = res["same_patient_removed"]
    assert same["checked"] and same["count"] == 6 and same["patients"] == 2
    assert same["per_class"] == {"no": 3, "yes": 3}
    assert res["n"] == 6 and res["n_files"] == 12
    saved = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert saved["same_patient_removed"]["count"] == 6
    with open(tmp_path / "ev" / "evaluation" / "same_patient_removed.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["source", "class"] and len(rows) == 7
    assert all("P1" not in r[0] and "P2" not in r[0] for r in rows)  # pseudonyms only
    # --keep-duplicates keeps them
    kept = evaluate(model, other, out=tmp_path / "ev2", n_boot=10, remove_duplicates=False)
    assert kept["n"] == 12 and kept["same_patient_removed"]["checked"]  # counted as kept
    assert kept["same_patient_removed"]["kept"] == 6  # and counts them, and lists them
    with open(tmp_path / "ev2" / "evaluation" / "own_data_kept.csv") as fh:
        listed = list(csv.reader(fh))
    assert listed[0] == ["source", "class", "why"] and len(listed) == 7
    assert {r[2] for r in listed[1:]} == {"training patient"}
    assert all("P1" not in r[0] and "P2" not in r[0] for r in listed)  # pseudonyms only
    # mostly the model's own patients: said, whether removed or kept (tester26 MED: only
    # near-duplicates counted towards "are these the data it was trained on?")
    mostly = tmp_path / "mostly"
    _series(mostly, "yes", "P1", 21)
    _series(mostly, "no", "P2", 22)
    _series(mostly, "yes", "P3", 23)
    for flag in (True, False):
        with caplog.at_level("WARNING", logger="mriscan.evaluate"):
            res = evaluate(model, mostly, out=tmp_path / f"m{flag}", n_boot=10,
                           remove_duplicates=flag)  # fmt: skip
        said = [r.getMessage() for r in caplog.records if "trained on?" in r.getMessage()]
        assert len(said) == 1 and "6 of 9 slices are the model's own" in said[0], said
        # the two counts apart (tester27: "6 near-duplicate ... or, 6 of them, ...")
        assert (
            "0 near-duplicate its training or validation slices, 6 more are of its "
            "training or validation patients" in said[0]
        )
        assert ("(scored: --keep-duplicates)" in said[0]) == (not flag)
        assert res["same_patient_removed"]["checked"]  # removed, or counted as kept
        caplog.clear()
    # another identifier key: the same patient has another hash; say so, remove nothing
    monkeypatch.setenv("MRISCAN_KEY_FILE", str(tmp_path / "other.key"))
    res = evaluate(model, other, out=tmp_path / "ev3", n_boot=10)
    same = res["same_patient_removed"]
    assert not same["checked"] and same["count"] == 0 and res["n"] == 12
    assert "another identifier key" in same["why_not"]
    # an older card lists no patients: cannot check, said so
    import dataclasses

    dataclasses.replace(card, train_patients=None).save(model)
    res = evaluate(model, other, out=tmp_path / "ev4", n_boot=10)
    assert "lists no training patients" in res["same_patient_removed"]["why_not"]
