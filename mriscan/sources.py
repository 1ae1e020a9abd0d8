"""Where training data come from: an existing store, or class folders ingested into one.

Keras-free. ``open_or_ingest`` is the data-source policy every command shares; the default
locations of raw and processed data are named here once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from mriscan.errors import ConfigError
from mriscan.ingest import EMPTY_LEFT_OUT, IngestConfig, check_reading_options, ingest
from mriscan.paths import DEFAULT_RAW, PHANTOM_STORE
from mriscan.preprocess import PreprocessConfig
from mriscan.readers import ReadOptions
from mriscan.scan_config import ReaderSettings
from mriscan.store import DEFAULT_STORE, ImageStore

__all__ = [
    "DEFAULT_RAW",
    "DEFAULT_STORE",
    "PHANTOM_STORE",
    "check_image_size",
    "flag_mask",
    "flagged_slices",
    "is_store",
    "no_anatomy_mask",
    "open_or_ingest",
    "reading_for_store",
]

log = logging.getLogger(__name__)


def is_store(data: str | os.PathLike[str]) -> bool:
    """True when ``data`` is an mriscan store (a folder with ``index.json``, or a memory URL)."""
    return (Path(data) / "index.json").is_file() or str(data).startswith("memory://")


def reading_for_store(
    store_path: str | os.PathLike[str], read_options: ReadOptions | None
) -> ReaderSettings | None:
    """The reading settings ``read_options`` choose for an ingest into ``store_path``: None
    when they choose none (the ingest then reads as the store records, ``IngestConfig``),
    else the chosen ones on top of the store's recorded settings (the defaults for a new store
    or one that records none), so that typing one option changes only that setting."""
    if read_options is None or not read_options.chosen:
        return None
    recorded = None
    if is_store(store_path):
        with ImageStore.open(store_path) as existing:
            recorded = existing.reader_settings
    return read_options.resolve(recorded)


def open_or_ingest(
    data: str | os.PathLike[str] | ImageStore,
    *,
    store_path: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    check_classes: Callable[[tuple[str, ...]], object] | None = None,
    read_options: ReadOptions | None = None,
    used_classes: Collection[str] | None = None,
) -> ImageStore:
    """Open ``data`` if it is a store; otherwise ingest its class folders into ``store_path``.

    ``check_classes(class_names)`` (e.g. ``mriscan.tasks.resolve_task`` with the run's task)
    is called on the class folders' names before anything is written, so a wrong folder leaves
    no store behind to block the corrected command.

    Parameters
    ----------
    data : path, URL or ImageStore
        A store, a folder of class folders (JPEG/PNG, DICOM, NIfTI), or a CSV manifest.
    store_path : path, optional
        Where class folders are ingested (default ``DEFAULT_STORE``).
    image_size : int, optional
        Side S of the slices when ingesting (default ``PreprocessConfig``'s). For a store it
        must equal the store's size if given.
    read_options : mriscan.readers.ReadOptions, optional
        How DICOM and NIfTI files are read when ingesting (``DicomConfig``, ``NiftiConfig``,
        ``overrides``); what it leaves open is the existing store's recorded settings, else the
        defaults. Settings other than the store's for a kind of file it holds are refused by
        ``mriscan.ingest.ingest``.
    used_classes : collection of str, optional
        The class folders the run uses (a class map's sources; None: all): an empty class
        folder outside them is not refused (``IngestConfig.used_classes``).

    Raises
    ------
    ConfigError
        If ``image_size`` is given and differs from the size of the store ``data``, or
        ``read_options`` ask for other reading than the store ``data``'s slices had
        (``mriscan.ingest.check_reading_options``).
    """
    if isinstance(data, ImageStore):
        store = data
    elif is_store(data):
        store = ImageStore.open(data)
        try:
            check_reading_options(store, data, read_options)
        except ConfigError:
            store.close()
            raise
        _say_flagged(store)
    else:
        target = Path(store_path) if store_path is not None else DEFAULT_STORE
        if image_size is None and is_store(target):
            # adding to an existing store: its own preprocessing, unless a size was asked for
            with ImageStore.open(target) as existing:
                pre = existing.config
        else:
            pre = PreprocessConfig() if image_size is None else PreprocessConfig(size=image_size)
        used = None if used_classes is None else tuple(used_classes)
        if check_classes is not None and Path(data).is_dir():
            from mriscan.io import scan_class_folders

            check_classes(tuple(sorted(scan_class_folders(data, used).classes)))
        chosen = reading_for_store(target, read_options)
        cfg = IngestConfig(
            preprocess=pre,
            dicom=None if chosen is None else chosen.dicom,
            nifti=None if chosen is None else chosen.nifti,
            used_classes=used,
        )
        report = ingest(Path(data), target, cfg)
        log.info("ingested %s: %d new, %d in store %s", data, report.n_added, report.total, target)
        # by class folder (a manifest's folders may name patients: not shown)
        skipped = _skipped_by_class(report.skipped) if Path(data).is_dir() else ""
        if skipped:
            log.warning("files not stored (`mriscan ingest` lists each): %s", skipped)
        if report.warnings:  # stored, but the user must learn of them (tester28: train and cv
            # were silent about near-identical slices under two classes that ingest warns of)
            shown = "; ".join(f"{n}: {why.splitlines()[0]}" for n, why in report.warnings[:3])
            more = len(report.warnings) - 3
            log.warning(
                "slices stored with %d warning(s) (`mriscan ingest` lists each): %s%s",
                len(report.warnings), shown, f"; and {more} more" if more > 0 else "",
            )  # fmt: skip
        left_out = [name for name, why in report.ignored if why == EMPTY_LEFT_OUT]
        if left_out:  # said where the task's "left out:" line cannot (no class in the store)
            log.info("empty class folder(s) the class map leaves out: %s", ", ".join(left_out))
        store = ImageStore.open(target)
        _say_flagged(store, listed=report.n_added)  # this run's own were listed above
        return store
    if check_classes is not None:
        check_classes(tuple(store.class_names))
    try:
        check_image_size(store, image_size)
    except ConfigError:
        if not isinstance(data, ImageStore):
            store.close()
        raise
    return store


def check_image_size(store: ImageStore, image_size: int | None) -> None:
    """Refuse an ``--image-size`` other than the side of the slices ``store`` holds (a store
    is read as it was ingested). None passes.

    Raises
    ------
    ConfigError
        Naming both sizes and the way out.
    """
    if image_size is not None and image_size != store.image_size:
        size = store.image_size
        raise ConfigError(
            f"--image-size {image_size} was given, but the store {store.location} holds "
            f"{size}×{size} slices. Drop --image-size, or ingest the class folders again "
            "into another store with that size."
        )


def flag_mask(store: ImageStore, idx: np.ndarray, flag: str) -> np.ndarray:
    """Which of the slices at positions ``idx`` (int array (n,)) carry the record flag
    ``flag`` (``mriscan.store.columns.FLAG_BITS``: "uniform", "thin", ...): bool array (n,).

    Raises
    ------
    ValueError
        ``flag`` is not a record flag.
    """
    from mriscan.store.columns import FLAG_BITS

    idx = np.asarray(idx, np.int64)
    return (store.table.fixed("flags")[idx] >> FLAG_BITS.index(flag)) & 1 == 1


def no_anatomy_mask(store: ImageStore, idx: np.ndarray) -> np.ndarray:
    """Which of the slices at positions ``idx`` (int array (n,)) ingest flagged as having no
    anatomy (``mriscan.readers.NO_ANATOMY_FLAGS``: uniform or noise): bool array (n,)."""
    from mriscan.readers import NO_ANATOMY_FLAGS

    idx = np.asarray(idx, np.int64)
    out = np.zeros(idx.shape, bool)
    for flag in NO_ANATOMY_FLAGS:
        out |= flag_mask(store, idx, flag)
    return out


def flagged_slices(store: ImageStore, idx: np.ndarray) -> dict[str, list[str]]:
    """The slices among ``idx`` (positions, int array) that ingest stored with a warning:
    {flag: their sources} for the record flags ``uniform`` and ``noise`` (no anatomy,
    ``mriscan.readers.has_no_anatomy``) and ``thin`` (a side under
    ``mriscan.readers.MIN_SIDE``), a flag with none left out."""
    idx = np.asarray(idx, np.int64)
    out = {}
    for flag in ("uniform", "noise", "thin"):
        hit = idx[flag_mask(store, idx, flag)]
        if hit.size:
            out[flag] = [store.index.records[int(i)].source for i in hit]
    return out


def _say_flagged(store: ImageStore, listed: int = 0) -> None:
    """Log the store's active slices that ingest stored with a warning (``flagged_slices``):
    a later train, cv or evaluate on the store, or on its folder again, trains or scores them
    too, and the ingest that listed them may be long past (tester29: said only the first
    time).

    ``listed``: how many of the store's newest rows the ingest that just ran added (an ingest
    appends its slices after the committed ones); their warnings were logged with the ingest's
    own, so only the earlier rows are counted here ("earlier ingests stored ..."), and nothing
    is said when none of those is flagged.
    """
    idx = store.active_indices()
    flagged = flagged_slices(store, idx[idx < len(store) - listed])
    if flagged:
        examples = [src for sources in flagged.values() for src in sources[:2]]
        log.warning(
            "the store holds slices %s stored with a warning: %s (e.g. %s); they are "
            "used like the others",
            "earlier ingests" if listed else "ingest",
            ", ".join(f"{len(v)} {k}" for k, v in flagged.items()), ", ".join(examples[:3]),
        )  # fmt: skip


def _skipped_by_class(skipped) -> str:
    """'zdupes: 3 label conflict(s); yes: 1 unreadable or not an input' of an ingest's
    ``skipped`` entries (``(name relative to the data folder, reason)``), by class folder."""
    counts: dict[str, dict[str, int]] = {}
    for name, reason in skipped:
        folder = Path(name).parts[0] if Path(name).parts else name
        kind = (
            "label conflict(s)"
            if reason.startswith("label conflict")
            else "unreadable or not an input"
        )
        by = counts.setdefault(folder, {})
        by[kind] = by.get(kind, 0) + 1
    return "; ".join(
        f"{folder}: " + ", ".join(f"{n} {kind}" for kind, n in by.items())
        for folder, by in sorted(counts.items())
    )
