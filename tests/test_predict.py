"""predict: a mixed folder with bad files gives one row per file; CSV/JSON output."""

from __future__ import annotations

import csv
import json

import pytest

from mriscan.artifacts import ModelCard
from mriscan.model import build_model
from mriscan.predict import collect_images, predict
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
    assert list(table[0]) == ["path", "probability", "label", "error"] and len(table) == 15
    rows_json = predict(
        model_file, [class_folder / "yes"], output=tmp_path / "p.json", threshold=0.0
    )
    assert all(r["label"] == "yes" for r in rows_json if not r["error"])
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(rows_json)


def test_collect_images_sorts_and_filters(class_folder):
    files = collect_images([class_folder / "no"])
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert all(f.suffix.lower() in {".jpg", ".png"} for f in files)
