"""Training end to end on a small synthetic store, config validation, and kill/resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mriscan.config import override
from mriscan.errors import ConfigError
from mriscan.model import load_model
from mriscan.training.workflow import train
from tests.conftest import build_small_store, fast_config

REPO = Path(__file__).resolve().parents[1]


def fast(**changes):
    """The small test config with dotted changes (``fit__epochs=1`` → ``fit.epochs``)."""
    return fast_config(**{k.replace("__", "."): v for k, v in changes.items()})


@pytest.mark.backend
def test_train_writes_every_artifact(small_store, tmp_path):
    out = tmp_path / "art"
    result = train(small_store, fast(), out=out)
    for rel in (
        "models/best_model.keras",
        "models/best_model.json",
        "history.json",
        "metrics.json",
        "split.json",
        "plots/training_history.png",
        "plots/confusion_matrix.png",
        "plots/roc.png",
    ):
        assert (out / rel).is_file(), rel
    assert not (out / "backup").exists()
    _, info = load_model(out / "models" / "best_model.keras")
    assert info.preprocess.size == 32 and info.class_names == ("no", "yes")
    assert 0 < info.threshold < 1
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "confusion_matrix"):
        assert key in metrics["test"]
    assert metrics["protocol"]["sizes"]["test"] == len(result.split["test"])
    assert "strategy" in metrics["hardware"] and "precision float32" in metrics["hardware"]
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [0, 1] and "val_auc" in history[0]
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]["indices"]) & set(split["test"]["indices"])
    assert result.hardware.global_batch == 16 * result.hardware.replicas


def test_config_validation():
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        fast(fit__epochs=0)
    with pytest.raises(ConfigError, match="precision must be one of"):
        fast(hardware__precision="fp8")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        fast(hardware__strategy="tpu")
    with pytest.raises(ConfigError, match="must have a sum below 1"):
        # train's check (cv holds out no test share: its config may carry any test_fraction)
        fast(split__val_fraction=0.6, split__test_fraction=0.5).split.check_holdout()
    with pytest.raises(ConfigError, match="rotation must be in"):
        fast(model__rotation=-0.1)
    with pytest.raises(ConfigError, match="ema must be in"):
        fast(optimizer__ema=1.0)
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        fast(optimizer__learning_rate=float("nan"))


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_ema_ends_training_on_the_averaged_weights(ema):
    import keras

    from mriscan.hardware import setup_hardware
    from mriscan.model import build_model
    from mriscan.training.optimizer import compile_model

    cfg = fast(fit__epochs=1, optimizer__ema=ema)
    model = build_model(32, cfg.model, augment=False)
    compile_model(model, cfg.optimizer, setup_hardware(precision="float32"), 4, cfg.fit.epochs)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 32, 32, 1)).astype("float32"), (rng.random(64) > 0.5) * 1.0
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    averages = getattr(model.optimizer, "_model_variables_moving_average", None)
    if not ema:
        assert not model.optimizer.use_ema and not averages
        return
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.5
    for w, avg in zip(model.trainable_weights, averages, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(avg))


_RESUME = """
import json, os, signal, sys
import keras
from mriscan.config import TrainConfig, override
from mriscan.training.workflow import train
store, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Trace(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        with open(os.path.join(out, "began.txt"), "a") as fh:
            fh.write(f"{epoch}\\n")
    def on_epoch_end(self, epoch, logs=None):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = override(TrainConfig(), {"fit.epochs": 4, "image_size": 32, "optimizer.batch_size": 16,
    "optimizer.warmup_epochs": 0, "pretrain.phantoms": 0, "model.filters": (8, 8, 16, 16),
    "runtime.verbose": "silent"})
train(store, cfg, out=out, callbacks=[Trace()])
"""


@pytest.mark.slow
def test_killed_run_resumes_from_last_epoch(small_store, tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_RESUME))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    first = subprocess.run(
        [sys.executable, str(script), str(small_store), str(out), "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == -9, first.stderr[-2000:]
    assert (out / "backup").is_dir()
    second = subprocess.run(
        [sys.executable, str(script), str(small_store), str(out), "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    began = [int(x) for x in (out / "began.txt").read_text().split()]
    assert began == [0, 1, 2, 3]  # epochs 0-1 in the killed run, 2-3 after resuming
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert np.isfinite([h["loss"] for h in history]).all()
    assert (out / "models" / "best_model.keras").is_file() and not (out / "backup").exists()


@pytest.mark.backend
def test_phantom_pretraining_is_cached_and_starts_training(small_store, tmp_path, monkeypatch):
    import mriscan.training.fit as fit_mod
    import mriscan.training.pretrain as train_mod
    from mriscan.hardware import setup_hardware
    from mriscan.model import build_model
    from mriscan.store import ImageStore

    cfg = fast(pretrain__phantoms=40, pretrain__epochs=1)
    hw = setup_hardware(precision="float32", per_replica_batch=cfg.optimizer.batch_size)
    pre = ImageStore.open(small_store).config
    path = train_mod.pretrain_on_phantoms(cfg, hw, pre, cache_dir=tmp_path / "cache")
    assert path.is_file() and path.parent == tmp_path / "cache"
    fresh = build_model(32, cfg.model, seed=cfg.seed)
    loaded = build_model(32, cfg.model, seed=cfg.seed)
    loaded.load_weights(path)
    kernel = next(w for w in loaded.weights if w.path.endswith("block1_conv1/kernel"))
    fresh_kernel = next(w for w in fresh.weights if w.path.endswith("block1_conv1/kernel"))
    assert not np.allclose(kernel.numpy(), fresh_kernel.numpy())  # it was trained

    # same settings: reused without training; another architecture: another file
    def no_training(*a, **k):
        raise AssertionError("pre-training ran again instead of using the cache")

    monkeypatch.setattr(train_mod, "fit_model", no_training)
    assert train_mod.pretrain_on_phantoms(cfg, hw, pre, cache_dir=tmp_path / "cache") == path
    longer = override(cfg, {"fit.epochs": 9, "split.val_fraction": 0.3, "runtime.workers": 1})
    assert train_mod.pretrain_on_phantoms(longer, hw, pre, cache_dir=tmp_path / "cache") == path
    wider = override(cfg, {"model.filters": (8, 8, 16, 32)})
    assert train_mod.pretrain_key(wider, pre) != train_mod.pretrain_key(cfg, pre)
    monkeypatch.undo()

    # train() looks in the cache and starts from the weights it finds there
    seen = []
    real_fit = fit_mod.fit_model

    def spy(*a, **k):
        seen.append(k.get("init_weights"))
        return real_fit(*a, **k)

    monkeypatch.setattr(fit_mod, "fit_model", spy)
    monkeypatch.setenv("MRISCAN_CACHE", str(tmp_path))
    assert train_mod.pretrain_cache_dir() == tmp_path / "pretrain"
    (tmp_path / "pretrain").mkdir()
    path.replace(tmp_path / "pretrain" / path.name)
    result = train(small_store, cfg, out=tmp_path / "art")
    assert seen == [tmp_path / "pretrain" / path.name]
    protocol = result.metrics["protocol"]
    assert (protocol["pretrain_phantoms"], protocol["pretrain_epochs"]) == (40, 1)


@pytest.mark.backend
def test_phantom_pretraining_ignores_the_real_tasks_class_map(small_store, tmp_path, monkeypatch):
    """The phantoms are yes/no: a class map (or positive/healthy class) naming the user's
    classes must not be applied to them (it stopped `train --class-map` with "the class map
    names ['glioma', ...], but the data's classes are ['no', 'yes']"); nor is the user's
    identifier key file made for them."""
    import mriscan.training.pretrain as train_mod
    from mriscan.hardware import setup_hardware
    from mriscan.store import ImageStore

    cfg = override(
        fast(pretrain__phantoms=40, pretrain__epochs=1),
        {
            "task.class_map": (("glioma", ("glioma",)), ("meningioma", ("meningioma",))),
            "task.healthy": None,
        },
    )
    hw = setup_hardware(precision="float32", per_replica_batch=cfg.optimizer.batch_size)
    pre = ImageStore.open(small_store).config
    # N3: no patient ids to key, so the identifier key file is neither read nor created
    typo = tmp_path / "keys" / "id.kye"
    monkeypatch.setenv("MRISCAN_KEY_FILE", str(typo))
    path = train_mod.pretrain_on_phantoms(cfg, hw, pre, cache_dir=tmp_path / "cache")
    assert path.is_file() and not typo.exists()
    # the task does not shape the phantom weights: the same cache entry as without a map
    plain = fast(pretrain__phantoms=40, pretrain__epochs=1)
    assert train_mod.pretrain_key(plain, pre) == train_mod.pretrain_key(cfg, pre)


def test_implants_add_tumor_copies_of_healthy_training_slices(small_store, tmp_path):
    import mriscan.training.fit as fit_mod
    from mriscan.store import ImageStore
    from mriscan.training.pretrain import pretrain_key

    with pytest.raises(ConfigError, match="implant must be 0"):
        fast(fit__implant=-1)
    cfg = fast(fit__implant=2)
    with ImageStore.open(small_store) as store:
        train_idx = np.arange(0, 40)
        images, labels = store.read_batch(train_idx)
        with fit_mod._with_implants(store, train_idx, cfg, tmp_path) as aug:
            new_images, new_labels = aug.read_batch(np.arange(len(aug)))
            assert list(aug.class_names) == list(store.class_names)
    n_healthy = int((labels == 0).sum())
    assert len(new_labels) == 40 + 2 * n_healthy
    assert np.array_equal(new_images[:40], images) and np.array_equal(new_labels[:40], labels)
    assert (new_labels[40:] == 1).all()  # the implants are tumor examples
    healthy = np.repeat(images[labels == 0], 2, axis=0)
    assert (new_images[40:] != healthy).any(axis=(1, 2)).all()  # each copy got a lesion
    # the pre-trained weights do not depend on it (implants are for the real slices only)
    pre = ImageStore.open(small_store).config
    assert pretrain_key(cfg, pre) == pretrain_key(fast(), pre)


def test_implants_follow_the_class_map(tmp_path):
    """With a class map, implants go into the slices the task calls healthy and are labelled
    with a data class the task maps to its tumor class (``--implant`` refused any map)."""
    from conftest import build_class_store

    import mriscan.training.fit as fit_mod
    from mriscan.store import ImageStore

    path = build_class_store(tmp_path / "s.zarr", ["glioma", "meningioma", "notumor", "pituitary"])
    cmap = (("yes", ("glioma", "meningioma")), ("no", ("notumor",)))  # pituitary left out
    cfg = override(fast(fit__implant=1), {"task.class_map": cmap})
    with ImageStore.open(path) as store:
        train_idx = np.flatnonzero(store.labels != 3)  # the kept classes, as training gives
        images, labels = store.read_batch(train_idx)
        with fit_mod._with_implants(store, train_idx, cfg, tmp_path) as aug:
            new_images, new_labels = aug.read_batch(np.arange(len(aug)))
    notumor = labels == 2
    assert len(new_labels) == len(labels) + int(notumor.sum())  # one copy per notumor slice
    assert (new_labels[len(labels) :] == 0).all()  # data label of glioma: maps to "yes"
    assert (new_images[len(labels) :] != images[notumor]).any(axis=(1, 2)).all()
    # a task without a healthy class is refused, naming the task
    four = override(fast(fit__implant=1), {"task.healthy": "notumor"})
    with ImageStore.open(path) as store, pytest.raises(ConfigError, match="two-class task"):
        fit_mod._with_implants(store, train_idx, four, tmp_path / "x")


def test_training_with_implants_fits_on_the_larger_set_and_validates_on_real_slices(
    small_store, tmp_path, monkeypatch
):
    import mriscan.training.fit as train_mod

    seen = {}
    real_fit = train_mod._fit

    def spy(store, train_idx, val_store, val_idx, *a):
        seen.update(n_train=len(train_idx), train_labels=store.labels[train_idx].copy())
        seen.update(val=val_store, n_val=len(val_idx))
        return real_fit(store, train_idx, val_store, val_idx, *a)

    monkeypatch.setattr(train_mod, "_fit", spy)
    result = train(small_store, fast(fit__epochs=1, fit__implant=1), out=tmp_path)
    split = result.split
    n_train, n_healthy = len(split["train"]), int((seen["train_labels"] == 0).sum())
    assert seen["n_train"] == n_train + n_healthy  # one implanted copy per healthy slice
    assert seen["val"].location == str(small_store)  # validation: the real slices only
    assert seen["n_val"] == len(split["val"])


class _StoppedError(Exception):
    """Stands for a process killed after an epoch's backup was written."""


@pytest.mark.backend
def test_a_run_with_implants_stopped_midway_resumes_from_its_backup(small_store, tmp_path):
    """The backup's identity is that of the real data and settings (the implants follow from
    them), not of the scratch store the implants are written to afresh each run: the same
    run started again resumes instead of being refused as another store."""
    import keras

    from mriscan.artifacts import RunLayout
    from mriscan.hardware import setup_hardware
    from mriscan.store import ImageStore
    from mriscan.training.fit import fit_model

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise _StoppedError

    cfg = fast(fit__implant=1, fit__epochs=2)
    hw = setup_hardware(precision="float32", per_replica_batch=cfg.optimizer.batch_size)
    layout = RunLayout(tmp_path)
    with ImageStore.open(small_store) as st:
        tr, va = np.arange(0, 30), np.arange(30, 40)
        with pytest.raises(_StoppedError):
            fit_model(st, tr, va, cfg, layout, hw, callbacks=[StopAfterFirstEpoch()])
        assert layout.run_marker.is_file()
        begun = []
        seen = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: begun.append(e))
        fitted = fit_model(st, tr, va, cfg, layout, hw, callbacks=[seen])  # no ResumeError
    assert begun == [1]  # only the second epoch was left to train
    assert len(fitted.history["loss"]) == 2


@pytest.mark.parametrize("lr", [1e12])
def test_a_diverged_run_writes_nothing_and_keeps_the_previous_model(small_store, tmp_path, lr):
    from mriscan.errors import TrainingDivergedError

    out = tmp_path / "art"
    train(small_store, fast(fit__epochs=1), out=out)
    files = ("models/best_model.keras", "models/best_model.json", "metrics.json", "split.json")
    before = {f: (out / f).read_bytes() for f in files}
    with pytest.raises(TrainingDivergedError, match="diverged"):
        train(
            small_store, fast(optimizer__learning_rate=lr, optimizer__class_weight=False), out=out
        )
    assert {f: (out / f).read_bytes() for f in files} == before
    assert not (out / "backup").exists()  # nothing left to resume


def test_resume_only_the_same_run(tmp_path):
    from mriscan.artifacts import RunLayout, write_json
    from mriscan.errors import ResumeError
    from mriscan.training.fit import _check_resume

    layout = RunLayout(tmp_path)
    assert _check_resume(layout, "run-a") is False  # no backup: a fresh start
    layout.backup.mkdir()
    with pytest.raises(ResumeError, match="other data, settings, seed"):
        _check_resume(layout, "run-a")  # a backup without identity is never adopted
    write_json(layout.run_marker, {"run_id": "run-b"})
    with pytest.raises(ResumeError, match="only the same run may resume"):
        _check_resume(layout, "run-a")
    write_json(layout.run_marker, {"run_id": "run-a"})
    assert _check_resume(layout, "run-a") is True
    (layout.backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(ResumeError, match="damaged"):
        _check_resume(layout, "run-a")
    # a whole HDF5 file written by Keras' own in-place BackupAndRestore (mriscan before the
    # fourteenth session) records no finished epoch: it may be torn, so it is not trusted
    import h5py

    with h5py.File(layout.backup / "latest.weights.h5", "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    with pytest.raises(ResumeError, match=r"cannot be trusted.*older mriscan.*Delete"):
        _check_resume(layout, "run-a")


def test_resume_ignores_display_settings_and_names_what_differs(small_store, tmp_path):
    """--verbose-fit (runtime.verbose) and runtime.workers change what is shown or how fast
    batches arrive, --threshold-rule what is decided after the last epoch, never the weights: a
    run killed with one value resumes with another. A
    real difference is refused naming the setting, its value in the backup and now."""
    from mriscan.artifacts import RunLayout, write_json
    from mriscan.errors import ResumeError
    from mriscan.store import ImageStore
    from mriscan.training.fit import _check_resume, run_fingerprint, run_identity

    layout = RunLayout(tmp_path)
    killed = fast(runtime__verbose="line", runtime__workers=1)
    with ImageStore.open(small_store) as st:
        tr, va = np.arange(0, 30), np.arange(30, 40)
        old = run_identity(st, tr, va, killed, None)
        layout.backup.mkdir()
        write_json(
            layout.run_marker,
            {"run_id": run_fingerprint(old), "identity": old},
        )
        for shown in (
            fast(runtime__verbose="silent"),
            fast(runtime__verbose="bar", runtime__workers=3),
            fast(runtime__verbose="line", runtime__workers=1, fit__threshold_rule="youden"),
        ):
            now = run_identity(st, tr, va, shown, None)
            assert _check_resume(layout, run_fingerprint(now), now) is True
        longer = fast(runtime__verbose="silent", fit__epochs=killed.fit.epochs + 5)
        now = run_identity(st, tr, va, longer, None)
        with pytest.raises(ResumeError) as err:
            _check_resume(layout, run_fingerprint(now), now)
        msg = str(err.value)
        assert f"fit.epochs: {killed.fit.epochs} in the backup, {killed.fit.epochs + 5} now" in msg
        assert "verbose" not in msg and "other data, settings" not in msg
        other = run_identity(st, tr, np.arange(30, 41), killed, None)
        with pytest.raises(
            ResumeError,
            match=r"data: other training/validation slices \(30/10 in the backup, 30/11 now\)",
        ):
            _check_resume(layout, "x", other)
        # equal counts of other slices: said once, not as "30/10 in the backup, 30/10 now"
        moved = run_identity(st, np.arange(10, 40), np.arange(0, 10), killed, None)
        with pytest.raises(ResumeError) as err:
            _check_resume(layout, "x", moved)
        assert "in equal numbers (30/10) (or the same slices' pixels)" in str(err.value)
        assert "30/10 in the backup" not in str(err.value)
        seven = fast(runtime__verbose="line", runtime__workers=1, seed=7)
        reseeded = run_identity(st, np.arange(10, 40), np.arange(0, 10), seven, None)
        with pytest.raises(ResumeError) as err:
            _check_resume(layout, "x", reseeded)
        msg = str(err.value)
        assert f"seed: {killed.seed} in the backup, 7 now" in msg
        assert "in equal numbers (30/10): the split is drawn from the seed" in msg


def test_a_class_too_small_to_split_is_not_sent_to_cv():
    """A class with too few groups for train/val/test cannot be cross-validated either: the
    message offers more data or --class-map, never `mriscan cv` as a way around it."""
    from mriscan.tasks import Task
    from mriscan.training.workflow import check_split

    task = Task(("a", "b", "c"), ("a", "b", "c"), np.arange(3), None)
    labels = np.array([0] * 10 + [1] * 10 + [2])
    split = {"train": np.arange(0, 20, 2), "val": np.arange(1, 20, 2), "test": np.array([20])}
    with pytest.raises(ConfigError, match=r"holds no slice of \['c'\]") as err:
        check_split(split, labels, task, test=True)
    msg = str(err.value)
    assert "--class-map" in msg and "`mriscan cv` is no way around this" in msg
    assert "or use `mriscan cv`" not in msg


@pytest.mark.slow
@pytest.mark.backend
def test_retraining_removes_the_evaluation_of_the_replaced_model(small_store, tmp_path):
    """evaluate records the model file's SHA-256; a new model published into the same run
    folder removes the evaluation of the one it replaced."""
    from mriscan.artifacts import ModelCard, RunLayout
    from mriscan.evaluate import evaluate

    out = tmp_path / "art"
    layout = RunLayout(out)
    train(small_store, fast(fit__epochs=1), out=out)
    result = evaluate(layout.model, n_boot=10)
    assert result["model_sha256"] == ModelCard.load(layout.model).model_sha256
    saved = json.loads(layout.evaluation.metrics.read_text())
    assert saved["model_sha256"] == result["model_sha256"]
    train(small_store, fast(fit__epochs=1, seed=1), out=out)
    assert not layout.evaluation.root.exists()


def test_only_the_evaluation_of_the_replaced_model_is_removed(tmp_path):
    from mriscan.artifacts import RunLayout, write_json
    from mriscan.training.workflow import _remove_stale_evaluation

    layout = RunLayout(tmp_path)
    ev = layout.evaluation

    def evaluation(**rec):
        write_json(ev.metrics, rec)
        (ev.root / "predictions.csv").write_text("source,label\n")

    evaluation(model=str(layout.model), model_sha256="old")
    _remove_stale_evaluation(layout, "other", "new")  # scored a model other than the replaced
    assert ev.metrics.is_file()
    _remove_stale_evaluation(layout, "old", "old")  # the same bytes published again
    assert ev.metrics.is_file()
    _remove_stale_evaluation(layout, "old", "new")
    assert not ev.root.exists()
    evaluation(model=str(tmp_path / "elsewhere" / "models" / "best_model.keras"))
    _remove_stale_evaluation(layout, "old", "new")  # an older record of another model: kept
    assert ev.metrics.is_file()
    evaluation(model=str(layout.model))  # an older record of this run's model: stale
    _remove_stale_evaluation(layout, "old", "new")
    assert not ev.root.exists()


class _Killed(BaseException):
    """Stands in for SIGKILL at a save point (not an Exception: nothing may catch it)."""


def _kill_at(monkeypatch, point: str) -> None:
    """Make the next write at ``point`` die half-way."""
    import mriscan.artifacts as art
    import mriscan.training.workflow as wf

    def dies(*a, **k):
        raise _Killed(point)

    if point == "backup":
        from mriscan.training.backup import AtomicBackupAndRestore

        monkeypatch.setattr(AtomicBackupAndRestore, "_save_model", dies)
    elif point == "checkpoint":
        from mriscan.training.backup import BestCheckpoint

        monkeypatch.setattr(BestCheckpoint, "_save", dies)
    elif point == "model":  # Keras writing the model file: a truncated file, then death
        real = art.publish_model

        def half(save, card, path, **kw):
            def save_half(p):
                save(p)
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
                raise _Killed(point)

            return real(save_half, card, path, **kw)

        monkeypatch.setattr(wf, "publish_model", half)
    elif point == "card":  # the model file is in place, the card is not yet
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith("best_model.keras"):
                raise _Killed(point)

        monkeypatch.setattr(art.os, "replace", replace)
    elif point == "metrics":
        real_write = wf.write_json

        def write(path, data, **kw):
            if path.name == "metrics.json":
                raise _Killed(point)
            return real_write(path, data, **kw)

        monkeypatch.setattr(wf, "write_json", write)


def _consistent(out) -> bool:
    """Model, card, split and metrics of ``out`` belong together."""
    from mriscan.artifacts import ModelCard
    from mriscan.readers import file_sha256

    card = ModelCard.load(out / "models" / "best_model.keras")
    sha = file_sha256(out / "models" / "best_model.keras")
    split = json.loads((out / "split.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return card.model_sha256 == sha == split["model_sha256"] == metrics["model_sha256"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, Path]:
    """(store, run folder) of one finished run, trained once for the kill tests below: each
    copies the folder as the previous good run its killed run must not spoil."""
    root = tmp_path_factory.mktemp("good_run")
    store = build_small_store(root / "small.zarr")
    train(store, fast(fit__epochs=2, fit__select="best"), out=root / "art")
    return store, root / "art"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["backup", "checkpoint", "model", "card", "metrics"])
def test_a_kill_at_any_save_point_leaves_a_usable_folder(good_run, tmp_path, monkeypatch, point):
    import shutil

    from mriscan.artifacts import ModelCardError
    from mriscan.errors import ResumeError

    small_store, done = good_run
    out = tmp_path / "art"
    shutil.copytree(done, out)  # a previous good run (of the same store)
    assert _consistent(out)
    old_model = (out / "models" / "best_model.keras").read_bytes()
    with monkeypatch.context() as m:
        _kill_at(m, point)
        with pytest.raises(_Killed):
            train(small_store, fast(fit__epochs=2, fit__select="best", seed=1), out=out)
    # right after the kill: the published pair is the old one, or a new one that is detected
    try:
        load_model(out / "models" / "best_model.keras")
        new = (out / "models" / "best_model.keras").read_bytes() != old_model
        assert point in ("metrics",) or not new, "a new model was published before its card"
    except ModelCardError as exc:
        assert point == "card" and "belongs to another model file" in str(exc)
    # the same run again finishes (resuming where it can) and leaves everything consistent
    try:
        train(small_store, fast(fit__epochs=2, fit__select="best", seed=1), out=out)
    except ResumeError as exc:  # only a damaged backup may be refused, with the way out
        assert "Delete" in str(exc)
        shutil.rmtree(out / "backup")
        train(small_store, fast(fit__epochs=2, fit__select="best", seed=1), out=out)
    assert _consistent(out)
    assert not (out / "backup").exists() and not (out / "checkpoint").exists()


def test_a_class_map_in_another_order_that_makes_the_same_task_resumes(tmp_path):
    """A two-class map written in another order (entries, sources, spaces) resolves to the
    same task, so its run resumes; a K-class map whose entries are reordered is another model
    (the entries' order is the classes' order) and is refused saying so, both maps shown as
    --class-map text."""
    from mriscan.artifacts import RunLayout, write_json
    from mriscan.config import TaskConfig, parse_class_map
    from mriscan.errors import ResumeError
    from mriscan.store import ImageStore
    from mriscan.tasks import resolve_task
    from mriscan.training.fit import _check_resume, run_fingerprint, run_identity
    from tests.conftest import build_class_store

    four = ("glioma", "meningioma", "notumor", "pituitary")
    path = build_class_store(tmp_path / "s.zarr", four, 6)

    def with_map(text):
        return fast(task__class_map=parse_class_map(text))

    def task_of(text):
        t = resolve_task(four, TaskConfig(class_map=parse_class_map(text)), warn=False)
        return t.class_names, t.label_map.tolist(), t.healthy

    killed = "yes=glioma,meningioma,pituitary;no=notumor"
    again = "no = notumor; yes = pituitary,meningioma,glioma"
    assert task_of(killed) == task_of(again)
    k3 = "a=glioma;b=meningioma,pituitary;notumor=notumor"
    k3_moved = "b=pituitary,meningioma;a=glioma;notumor=notumor"
    assert task_of(k3) != task_of(k3_moved)  # the entries' order is the classes' order
    assert task_of(k3) == task_of("a=glioma;b=pituitary,meningioma;notumor=notumor")
    with ImageStore.open(path) as st:
        tr, va = np.arange(0, 16), np.arange(16, 24)
        for old_map, new_map in ((killed, again), (k3, k3_moved)):
            layout = RunLayout(tmp_path / old_map.replace(";", "_").replace(",", "-"))
            old = run_identity(st, tr, va, with_map(old_map), None)
            layout.backup.mkdir(parents=True)
            write_json(layout.run_marker, {"run_id": run_fingerprint(old), "identity": old})
            now = run_identity(st, tr, va, with_map(new_map), None)
            if old_map == killed:
                assert _check_resume(layout, run_fingerprint(now), now) is True
                continue
            with pytest.raises(ResumeError) as err:
                _check_resume(layout, run_fingerprint(now), now)
            msg = str(err.value)
            assert (
                "task.class_map: 'a=glioma;b=meningioma,pituitary;notumor=notumor' in the "
                "backup, 'b=meningioma,pituitary;a=glioma;notumor=notumor' now (the same "
                "entries in another order" in msg
            ), msg


def test_implant_for_a_task_it_cannot_serve_is_refused_before_pre_training(tmp_path, monkeypatch):
    """train and cv refuse --implant on a task without exactly a healthy and a tumor class
    before the phantom pre-training starts (they refused only after it: minutes, first time)."""
    from conftest import build_class_store

    import mriscan.training.crossval as cv_mod
    import mriscan.training.workflow as wf

    store = build_class_store(tmp_path / "s.zarr", ["glioma", "meningioma", "notumor"])

    def no_pretraining(*a, **k):
        raise AssertionError("pre-training started before the --implant check")

    monkeypatch.setattr(wf, "starting_weights", no_pretraining)
    monkeypatch.setattr(cv_mod, "starting_weights", no_pretraining)
    cfg = fast(fit__implant=1)
    with pytest.raises(ConfigError, match="--implant needs a two-class task"):
        wf.train(store, cfg, out=tmp_path / "run")
    from mriscan.config import CVConfig

    with pytest.raises(ConfigError, match="--implant needs a two-class task"):
        cv_mod.cross_validate(store, CVConfig(folds=2, train=cfg), out=tmp_path / "cv")
