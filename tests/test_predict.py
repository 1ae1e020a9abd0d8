"""predict: a mixed folder with bad files gives one row per file; CSV/JSON output."""

from __future__ import annotations

import csv
import json

import pytest

from mriscan.artifacts import ModelCard
from mriscan.model import build_model
from mriscan.predict import COLUMNS, collect_images, predict
from mriscan.preprocess import PreprocessConfig

pytestmark = pytest.mark.backend


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m" / "best_model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    ModelCard(preprocess=PreprocessConfig(size=32), class_names=("no", "yes"), threshold=0.5).save(
        path
    )
    return path


def test_mixed_folder_with_bad_files(model_file, class_folder, tmp_path):
    (class_folder / "yes" / "empty.jpg").write_bytes(b"")
    (class_folder / "no" / "notes.png").write_text("hello")
    (class_folder / "no" / "readme.txt").write_text("not collected")
    out = tmp_path / "preds.csv"
    rows = predict(
        model_file, [class_folder, tmp_path / "missing.jpg"], output=out, batch_size=5, workers=2
    )
    assert len(rows) == 15  # 12 good + 2 bad in the folder + 1 missing
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "not a recognised image" in by_name["notes.png"]["error"]
    assert "cannot open file" in by_name["missing.jpg"]["error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 12
    for r in good:
        assert 0.0 <= r["probability"] <= 1.0
        assert r["label"] == ("yes" if r["probability"] >= 0.5 else "no")
    with open(out) as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == COLUMNS and len(table) == 15
    rows_json = predict(
        model_file, [class_folder / "yes"], output=tmp_path / "p.json", threshold=0.0
    )
    assert all(r["label"] == "yes" for r in rows_json if not r["error"])
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(rows_json)


def test_collect_images_sorts_and_filters(class_folder):
    files = collect_images([class_folder / "no"])
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert all(f.suffix.lower() in {".jpg", ".png"} for f in files)


def test_dicom_series_and_nifti_give_slice_rows_and_one_row_per_unit(model_file, tmp_path):
    import numpy as np

    from mriscan.aggregate import RULE, top_k_mean
    from mriscan.explain import explain
    from mriscan.synth_scanner import (
        FakePatient,
        phantom_volume,
        stack_to_ras,
        write_dicom_series,
        write_nifti,
    )

    scans = tmp_path / "scans"
    series = scans / "Doe_Jane_19700101" / "T1"
    write_dicom_series(series, phantom_volume(1, n_slices=5, canvas=32), patient=FakePatient())
    write_nifti(scans / "Roe_Richard.nii.gz", stack_to_ras(phantom_volume(2, n_slices=6)))
    (scans / "broken.dcm").write_bytes((series / "IM0001.dcm").read_bytes()[:300])
    out = tmp_path / "p.csv"
    rows = predict(model_file, [scans], output=out, threshold=0.5)
    slices = [r for r in rows if r["level"] == "slice"]
    units = [r for r in rows if r["level"] in ("series", "volume")]
    errors = [r for r in rows if r["error"]]
    assert len([r for r in slices if r["unit"].startswith("series:")]) == 5
    assert {r["level"] for r in units} == {"series", "volume"} and len(units) == 2
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.dcm")
    for u in units:
        members = [r["probability"] for r in slices if r["unit"] == u["unit"]]
        assert u["probability"] == pytest.approx(top_k_mean(members, 3))
        assert u["slices"] == len(members) and u["aggregate"] == RULE
        assert u["label"] == ("yes" if u["probability"] >= 0.5 else "no")
    text = out.read_text()
    for secret in ("Doe", "Jane", "19700101", "Roe", "Richard", "FAKE-0001"):
        assert secret not in text
    shown = predict(model_file, [series], show_paths=True)
    assert all("Doe_Jane" in r["path"] for r in shown if r["level"] == "slice")
    res = explain(model_file, sorted(series.iterdir()), out=tmp_path / "x", slices=[0, 4, 9])
    made = [r for r in res if not r["error"]]
    assert [r["path"].split("(")[-1] for r in made] == ["slice 0)", "slice 4)"]
    assert any("no slice 9" in r["error"] for r in res)
    assert all("Doe" not in p.name for p in (tmp_path / "x").iterdir())
    top = explain(model_file, sorted(series.iterdir()), out=tmp_path / "y", top_k=2)
    assert len(top) == 2 and np.all([r["png"].endswith(".png") for r in top])
