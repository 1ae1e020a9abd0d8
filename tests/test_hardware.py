"""Strategy and precision: logical-CPU MirroredStrategy (float32 and mixed_float16) and
MultiWorkerMirroredStrategy over two local processes, each in a fresh subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mriscan.errors import ConfigError
from mriscan.hardware import resolve_precision, setup_hardware

WORKER = Path(__file__).with_name("_distributed_worker.py")
REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [
        ("auto", [], "float32"),
        ("auto", [{"compute_capability": (8, 0)}], "mixed_float16"),
        ("auto", [{"compute_capability": (6, 1)}], "float32"),
        ("auto", [{"compute_capability": (9, 0)}, {"compute_capability": (6, 0)}], "float32"),
        ("mixed_bfloat16", [], "mixed_bfloat16"),
        ("float32", [{"compute_capability": (8, 0)}], "float32"),
    ],
)
def test_resolve_precision(requested, gpus, expected):
    assert resolve_precision(requested, gpus=gpus) == expected


def test_unknown_precision():
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_precision("float8")


def test_strategy_on_one_device():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute strategies need the TensorFlow backend")
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")) != 1:
        pytest.skip("needs exactly one device")
    auto = setup_hardware(precision="float32")
    assert auto.strategy is tf.distribute.get_strategy() and auto.replicas == 1
    assert auto.strategy_name == "default strategy (one device)"
    forced = setup_hardware(precision="float32", strategy="mirrored")
    assert isinstance(forced.strategy, tf.distribute.MirroredStrategy)
    assert forced.strategy_name == "MirroredStrategy" and forced.replicas == 1
    with pytest.raises(ConfigError, match="strategy must be one of"):
        setup_hardware(strategy="tpu")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_mirrored_strategy_on_two_logical_cpus(precision):
    proc = subprocess.run(
        [sys.executable, str(WORKER), "mirrored", precision],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["strategy"] == "MirroredStrategy"
    assert res["replicas"] == 2 and res["local_values"] == 2
    assert res["global_batch"] == 64
    assert res["precision"] == precision
    if precision == "mixed_float16":  # keras#18666: LossScaleOptimizer under MirroredStrategy
        assert res["optimizer"] == "LossScaleOptimizer"
    assert res["replicas_equal"]
    assert res["losses"][-1] < res["losses"][0] * 0.7
    assert res["after"] < res["before"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_processes():
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "multiworker", "float32"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(TF_CONFIG=tf_config),
            )
        )
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        finally:
            p.kill()
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["strategy"].startswith("MultiWorkerMirroredStrategy(2 workers)")
        assert r["replicas"] == 2 and r["global_batch"] == 64
        assert r["losses"][-1] < r["losses"][0]
    assert results[0]["weights_sha"] == results[1]["weights_sha"]
