"""What a killed run resumes from, written so that a kill never damages it: the per-epoch
backup (``AtomicBackupAndRestore``) and the best-so-far checkpoint (``BestCheckpoint``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras

__all__ = ["EPOCH_ATTR", "AtomicBackupAndRestore", "BestCheckpoint", "epochs_done"]

#: HDF5 attribute of the backup's weights file: the number of epochs those weights finished
EPOCH_ATTR = "mriscan_epochs_done"


def epochs_done(weights: Path) -> int | None:
    """The number of finished epochs an ``AtomicBackupAndRestore`` weights file records; None
    when the file is missing, unreadable, or was written without the record (by Keras' own
    ``BackupAndRestore`` in mriscan before the fourteenth session, whose in-place saves a kill
    could tear)."""
    import h5py

    if not Path(weights).is_file():
        return None
    try:
        with h5py.File(weights, "r") as f:
            done = f.attrs.get(EPOCH_ATTR)
    except (OSError, ValueError, RuntimeError):
        return None
    return None if done is None else int(done)


def _replace_durably(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk, then move it onto ``final`` in one step (``os.replace``)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose saves are all-or-nothing.

    Keras writes ``latest.weights.h5`` in place (and, with ``double_checkpoint``, copies it to
    ``.bkp`` first, in place too); it falls back to the copy only when loading raises
    ``OSError``. A kill during either write leaves a truncated HDF5 file that still opens:
    loading it then raised ``ValueError`` ("expected 2 variables, but received 0") on every
    rerun, or resumed silently with a fresh optimizer state (tester, fourteenth session). Here
    each epoch's weights are written to a temporary file in the backup folder, the number of
    finished epochs is stored in that file (HDF5 attribute ``EPOCH_ATTR``), and the file is
    moved into place with ``os.replace``: the backup is always one whole save, and the epoch to
    resume from is read from the same file, so weights and epoch cannot disagree. The metadata
    JSON Keras also keeps is written the same way (informational; the attribute wins).

    Parameters
    ----------
    backup_dir : str
        Folder of the backup (created on the first save; removed when training ends).
    """

    def __init__(self, backup_dir: str) -> None:
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=True)

    def _save_model(self) -> None:
        import h5py

        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        final = Path(self._weights_path)
        tmp = folder / "partial.weights.h5"  # Keras insists on the .weights.h5 suffix
        self.model.save_weights(str(tmp), overwrite=True)
        with h5py.File(tmp, "a") as f:
            f.attrs[EPOCH_ATTR] = int(self._current_epoch)
        _replace_durably(tmp, final)
        meta = Path(self._training_metadata_path)
        part = folder / "partial_metadata.json"
        part.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        _replace_durably(part, meta)

    def _load_model(self) -> None:
        from mriscan.errors import ResumeError

        try:
            super()._load_model()
        except ValueError as exc:  # a file that opens but does not fit the model
            first = (str(exc).strip().splitlines() or ["no reason given"])[0]
            raise ResumeError(
                f"{self.backup_dir} is damaged: its weights do not load into this model "
                f"({first}). Delete {self.backup_dir} to start afresh, or use another --out."
            ) from exc
        done = epochs_done(Path(self._weights_path))
        if done is not None:
            self.model._initial_epoch = done


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model of the epoch with the highest ``monitor`` (e.g. ``val_auc``) at ``path``,
    written all-or-nothing: to a temporary ``.keras`` file beside it, then ``os.replace``.

    Replaces ``keras.callbacks.ModelCheckpoint(save_best_only=True)``, which writes the file in
    place: a kill during the save left an empty or weight-less ``best_model.keras`` that the
    end of a resumed run then loaded (verifier, fourteenth session). Epochs whose value is not
    finite are skipped.

    Parameters
    ----------
    path : Path
        The ``.keras`` file.
    monitor : str
        The ``logs`` key to maximise.
    initial_value_threshold : float, optional
        The best value so far (a resumed run's); an epoch must beat it to be saved.
    """

    def __init__(
        self, path: Path, monitor: str = "val_auc", initial_value_threshold: float | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = -math.inf if initial_value_threshold is None else initial_value_threshold

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        self.best = float(value)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"partial_{self.path.name}")  # Keras wants .keras
        self.model.save(str(tmp), overwrite=True)
        _replace_durably(tmp, self.path)
