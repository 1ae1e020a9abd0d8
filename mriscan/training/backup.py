"""The per-epoch backup a killed run resumes from, written so that a kill never damages it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

__all__ = ["EPOCH_ATTR", "AtomicBackupAndRestore"]

#: HDF5 attribute of the backup's weights file: the number of epochs those weights finished
EPOCH_ATTR = "mriscan_epochs_done"


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
        import h5py

        super()._load_model()
        final = Path(self._weights_path)
        if final.is_file():
            with h5py.File(final, "r") as f:
                done = f.attrs.get(EPOCH_ATTR)
            if done is not None:
                self.model._initial_epoch = int(done)
