"""The per-epoch backup (mriscan.training.backup): a kill while it is written damages nothing."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from mriscan.errors import ResumeError
from mriscan.training.backup import EPOCH_ATTR, AtomicBackupAndRestore, BestCheckpoint, epochs_done


def _model() -> keras.Model:
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(inp))
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="binary_crossentropy")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32")


def test_a_kill_while_saving_leaves_the_last_whole_backup(tmp_path):
    x, y = _data()
    folder = tmp_path / "backup"
    model = _model()
    cb = AtomicBackupAndRestore(str(folder))
    cb.delete_checkpoint = False  # keep it, as a killed run does
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    final = folder / "latest.weights.h5"
    saved = final.read_bytes()
    import h5py

    with h5py.File(final, "r") as f:
        assert int(f.attrs[EPOCH_ATTR]) == 2
    assert json.loads((folder / "training_metadata.json").read_text())["epoch"] == 2

    # the third save dies after writing part of its file (Ctrl-C inside Keras' save_weights)
    real_save = model.save_weights

    def dies_half_way(filepath, overwrite=True):
        real_save(filepath, overwrite=overwrite)
        with open(filepath, "r+b") as fh:
            fh.truncate(len(saved) // 3)
        raise KeyboardInterrupt

    model.save_weights = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[cb])
    assert final.read_bytes() == saved  # untouched: the partial file never replaced it

    # a new process resumes from the whole backup, at the epoch stored in the same file
    fresh = _model()
    resumed = AtomicBackupAndRestore(str(folder))
    epochs_run: list[int] = []
    log = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs_run.append(e))
    fresh.fit(x, y, epochs=3, verbose=0, callbacks=[resumed, log])
    assert epochs_run == [2]
    assert not folder.exists()  # removed once training ends


def test_the_epoch_comes_from_the_weights_file_not_the_metadata(tmp_path):
    """A kill between the weights' replace and the metadata's leaves them one epoch apart: the
    epoch stored with the weights is the one that matches them."""
    x, y = _data()
    folder = tmp_path / "backup"
    model = _model()
    cb = AtomicBackupAndRestore(str(folder))
    cb.delete_checkpoint = False
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    (folder / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    fresh = _model()
    epochs_run: list[int] = []
    log = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs_run.append(e))
    fresh.fit(x, y, epochs=4, verbose=0, callbacks=[AtomicBackupAndRestore(str(folder)), log])
    assert epochs_run == [2, 3]


def test_a_backup_that_does_not_fit_the_model_is_a_one_line_resume_error(tmp_path):
    """Weights that open but do not load (another model, or a file torn by a kill under the
    old in-place saves) stop the run with the way out, not a traceback."""
    x, y = _data()
    folder = tmp_path / "backup"
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    other.compile(optimizer="adam", loss="mse")
    folder.mkdir()
    other.save_weights(str(folder / "latest.weights.h5"))
    with pytest.raises(ResumeError, match=r"is damaged: its weights do not load.*Delete"):
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[AtomicBackupAndRestore(str(folder))])
    assert epochs_done(folder / "latest.weights.h5") is None  # Keras' own file: no record


def test_the_best_checkpoint_survives_a_kill_while_it_is_replaced(tmp_path):
    x, y = _data()
    path = tmp_path / "checkpoint" / "best_model.keras"
    model = _model()
    best = BestCheckpoint(path, "val_loss_neg")
    values = iter([0.5, 0.4, 0.9])  # epoch 1 best, epoch 2 worse (not saved), epoch 3 better

    class Feed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss_neg"] = next(values)

    model.fit(x, y, epochs=2, verbose=0, callbacks=[Feed(), best])
    saved = path.read_bytes()
    assert best.best == 0.5 and keras.saving.load_model(path) is not None

    def dies_half_way(filepath, overwrite=True):
        with open(filepath, "wb") as fh:
            fh.write(saved[: len(saved) // 4])
        raise KeyboardInterrupt

    model.save = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[Feed(), best])
    assert path.read_bytes() == saved  # the whole previous best, never the torn file
    resumed = BestCheckpoint(path, "val_loss_neg", initial_value_threshold=0.95)
    resumed.set_model(_model())
    resumed.on_epoch_end(3, {"val_loss_neg": 0.9})  # not better than the threshold: kept
    assert path.read_bytes() == saved
