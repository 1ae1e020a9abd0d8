"""Prediction throughput (issue 20): ``predict_files`` and ``mriscan predict`` against a plain
script doing the same work (``bench/plain_predict.py``), on real 512×512 JPEGs.

The model has the default architecture at 128², freshly built (speed does not depend on the
weights), with flip test-time augmentation on, and its ONNX export beside it: mriscan is
measured with both engines (``keras``: TensorFlow, like the script; ``onnx``: ONNX Runtime,
what ``--engine auto`` picks when the export exists). The machine is shared and loaded, so the two
sides run *interleaved* (mriscan, plain, mriscan, plain, ...) inside each timed round, and each
side's throughput is the median over rounds. ``MRISCAN_BENCH_PREDICT_N`` sets the number of
files (default 500, from ``figshare_br35h/glioma``); ``MRISCAN_BENCH_PREDICT_ROUNDS`` the rounds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, interleaved, record, target

GLIOMA = REPO.parent / "shared" / "data" / "figshare_br35h" / "glioma"
N = int(os.environ.get("MRISCAN_BENCH_PREDICT_N", "500"))
ROUNDS = int(os.environ.get("MRISCAN_BENCH_PREDICT_ROUNDS", "5"))
GROUP = f"predict {N} real 512² JPEGs, 128², flip TTA"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """The first N glioma JPEGs, linked into a folder of their own (outside git)."""
    if not GLIOMA.is_dir():
        pytest.skip(f"real data not found at {GLIOMA}")
    src = sorted(GLIOMA.glob("*.jpg"))[:N]
    folder = tmp_path_factory.mktemp("glioma")
    for p in src:
        (folder / p.name).symlink_to(p)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """The default architecture at 128², saved with a card (tta on)."""
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_model(128, seed=0).save(path)
    ModelCard(
        preprocess=PreprocessConfig(size=128), class_names=("no", "yes"), threshold=0.5, tta=True
    ).save(path)
    from mriscan.onnx_engine import export_onnx

    export_onnx(path)
    return path


def _report(
    med: dict[str, float], where: str, n: int, cases: dict[str, str], baseline: str, name: str
) -> None:
    """Record each side's img/s under ``GROUP, where`` and declare ``case ≥ 1.5× baseline`` for
    each labelled case (``name`` formatted with the label)."""
    group = f"{GROUP}, {where}"
    for case, sec in med.items():
        record(group, case, n / sec, "img/s")
    for label, case in cases.items():
        target(name.format(label), group, case, [baseline], 1.5)


def test_predict_in_process(benchmark, files, model_file):
    """``predict_files`` vs ``plain_predict.run`` with the same loaded model."""
    sys.path.insert(0, str(Path(__file__).parent))
    import plain_predict

    from mriscan.model import load_model
    from mriscan.onnx_engine import OnnxModel
    from mriscan.predict import predict_files

    model, card = load_model(model_file)
    onnx_model = OnnxModel(model_file)
    med = interleaved(
        benchmark,
        {
            "mriscan predict_files": lambda: predict_files(model, card, files),
            "mriscan predict_files, onnx engine": lambda: predict_files(onnx_model, card, files),
            "plain script run()": lambda: plain_predict.run(model, files),
        },
        ROUNDS,
    )
    _report(
        med,
        "in process",
        len(files),
        {
            "keras engine": "mriscan predict_files",
            "onnx engine": "mriscan predict_files, onnx engine",
        },
        "plain script run()",
        "#20 prediction in process ({}) ≥ 1.5× the same-work plain script",
    )


def test_predict_command(benchmark, files, model_file, tmp_path):
    """``python -m mriscan predict`` vs ``python bench/plain_predict.py``, each a new process
    (interpreter start, imports, model load included)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    folder = str(files[0].parent)

    def command(*args: str) -> None:
        subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True, capture_output=True)

    def predict(output: str, *options: str) -> None:
        command(
            "-m",
            "mriscan",
            "predict",
            str(model_file),
            folder,
            "--output",
            str(tmp_path / output),
            *options,
        )

    med = interleaved(
        benchmark,
        {
            "mriscan predict --engine keras": lambda: predict("m.csv", "--engine", "keras"),
            "mriscan predict (auto: onnx)": lambda: predict("o.csv"),
            "plain script": lambda: command(
                str(REPO / "bench" / "plain_predict.py"),
                str(model_file),
                folder,
                "--output",
                str(tmp_path / "p.csv"),
            ),
        },
        ROUNDS,
    )
    _report(
        med,
        "as a command",
        len(files),
        {"keras": "mriscan predict --engine keras", "auto: onnx": "mriscan predict (auto: onnx)"},
        "plain script",
        "#20 `mriscan predict` ({}) as a command ≥ 1.5× the plain script as a command",
    )
