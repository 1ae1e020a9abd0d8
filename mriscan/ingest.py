"""Ingest: class folders of JPEG/PNG → decoded, preprocessed slices committed to an ImageStore."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mriscan.duplicates import duplicate_groups, signatures
from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import DEFAULT_MAX_PIXELS, decode_bytes, list_class_folders, read_file
from mriscan.preprocess import PreprocessConfig, preprocess_batch
from mriscan.store import ImageStore, StoreNotFoundError

__all__ = ["IngestConfig", "IngestReport", "ingest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Options of one ingest run.

    Parameters
    ----------
    preprocess : PreprocessConfig
        How slices are cropped and resized (``preprocess.size`` is the stored side S).
    workers : int, optional
        Decoding threads (default: CPU cores).
    batch_size : int
        Slices preprocessed and appended per batch.
    strict : bool
        Fail (commit nothing) on the first bad file instead of skipping it.
    max_pixels : int
        Decompression-bomb cap per image.
    merge : bool
        Allow adding a raw folder other than the one(s) the store was built from (otherwise
        refused, so that two datasets are never mixed by accident).
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    workers: int | None = None
    batch_size: int = 32
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    merge: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1. Received: workers={self.workers}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1. Received: batch_size={self.batch_size}.")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1. Received: max_pixels={self.max_pixels}.")

    @property
    def n_workers(self) -> int:
        """Resolved number of decoding threads."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class IngestReport:
    """What an ingest run did."""

    store: str
    added: dict[str, int]
    total: int
    exact_duplicates: int
    already_stored: int
    skipped: tuple[tuple[str, str], ...]
    duplicate_groups: int
    seconds: float

    @property
    def n_added(self) -> int:
        """Samples added by this run."""
        return sum(self.added.values())


class BadFilesError(MriscanError, ValueError):
    """``strict`` ingest found bad files; nothing was committed."""


@dataclass
class _Decoded:
    path: Path
    label: int
    sha256: str
    image: np.ndarray | None
    error: str | None


def _load(path: Path, label: int, max_pixels: int) -> _Decoded:
    """Read, hash and decode one file, capturing decode errors."""
    try:
        data = read_file(path)
    except ImageDecodeError as exc:
        return _Decoded(path, label, "", None, exc.reason)
    digest = hashlib.sha256(data).hexdigest()
    try:
        return _Decoded(path, label, digest, decode_bytes(data, path, max_pixels=max_pixels), None)
    except ImageDecodeError as exc:
        return _Decoded(path, label, digest, None, exc.reason)


def ingest(
    raw_dir: str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    config: IngestConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Add every new image under ``raw_dir``'s class folders to the store at ``store_path``.

    Files already stored (same SHA-256) are skipped, so re-running adds nothing; a file whose
    bytes equal another's is recorded as its duplicate. Bad files are skipped with a reason
    (or, with ``strict``, fail the run before anything is committed). Everything new becomes
    visible in one atomic commit.

    Parameters
    ----------
    raw_dir : path
        Folder with one sub-folder per class (e.g. ``yes/``, ``no/``).
    store_path : path or fsspec URL
    config : IngestConfig, optional
    progress : callable(done, total), optional

    Returns
    -------
    IngestReport
    """
    config = config if config is not None else IngestConfig()
    t0 = time.perf_counter()
    root = Path(raw_dir)
    classes = list_class_folders(root)
    source = str(root.resolve())
    try:
        store = ImageStore.open(store_path, mode="a")
        if store.config != config.preprocess:
            size = store.config.size
            store.close()
            raise ConfigError(
                f"Store {store_path} was built with {store.config}; this ingest asks for "
                f"{config.preprocess}. Use a new --store path or the same options "
                f"(e.g. --image-size {size})."
            )
        if store.index.sources and source not in store.index.sources and not config.merge:
            store.close()
            raise ConfigError(
                f"Store {store_path} holds slices from {', '.join(store.index.sources)}; "
                f"adding {source} would mix two datasets in one store. Use another --store "
                "path, or pass --merge (IngestConfig(merge=True)) to combine them on purpose."
            )
    except StoreNotFoundError:
        store = ImageStore.create(store_path, config.preprocess.size, config.preprocess)
    with store:
        store.add_source(source)
        names = list(store.class_names)
        names += [c for c in classes if c not in names]
        store.set_class_names(names)
        known = {r.sha256: r.position for r in store.index.records if r.sha256}
        seen = {(r.source, r.sha256) for r in store.index.records}
        seen |= {(d["source"], d["sha256"]) for d in store.index.duplicates}
        jobs = [(p, names.index(c)) for c, files in classes.items() for p in files]
        added = dict.fromkeys(classes, 0)
        skipped: list[tuple[str, str]] = []
        n_dup = n_known = 0
        pending = len(store)
        done = 0
        batches = [jobs[i : i + config.batch_size] for i in range(0, len(jobs), config.batch_size)]
        with ThreadPoolExecutor(max_workers=config.n_workers) as pool:
            # Keep a few batches decoding ahead so workers never wait on the main thread,
            # while memory stays bounded to those batches.
            in_flight: deque[list] = deque()
            ahead = iter(batches)

            def submit_next() -> None:
                chunk = next(ahead, None)
                if chunk is not None:
                    in_flight.append(
                        [pool.submit(_load, p, lab, config.max_pixels) for p, lab in chunk]
                    )

            for _ in range(3):
                submit_next()
            while in_flight:
                futures = in_flight.popleft()
                submit_next()
                results = [f.result() for f in futures]
                keep: list[_Decoded] = []
                for r in results:
                    rel = r.path.relative_to(root).as_posix()
                    if r.error is not None:
                        if config.strict:
                            raise BadFilesError(
                                f"{r.path}: {r.error}. Nothing was committed "
                                "(--strict); fix or remove the file and rerun."
                            )
                        skipped.append((rel, r.error))
                        log.warning("skipping %s: %s", r.path, r.error)
                    elif (rel, r.sha256) in seen:
                        n_known += 1
                    elif r.sha256 in known:
                        store.add_duplicate(rel, r.sha256, known[r.sha256])
                        seen.add((rel, r.sha256))
                        n_dup += 1
                    else:
                        known[r.sha256] = pending + len(keep)
                        seen.add((rel, r.sha256))
                        keep.append(r)
                if keep:
                    imgs = [k.image for k in keep]
                    batch = preprocess_batch(imgs, config.preprocess)
                    sigs = signatures(imgs)
                    records = [
                        {
                            "source": k.path.relative_to(root).as_posix(),
                            "sha256": k.sha256,
                            "height": int(k.image.shape[0]),
                            "width": int(k.image.shape[1]),
                        }
                        for k in keep
                    ]
                    store.append(batch, [k.label for k in keep], records, signatures=sigs)
                    pending += len(keep)
                    for k in keep:
                        added[names[k.label]] += 1
                done += len(results)
                if progress is not None:
                    progress(done, len(jobs))
        # Near-duplicate groups over every slice, old and new (a new slice may join two old
        # groups); nothing appended leaves the committed groups as they are.
        if store.n_pending:
            sigs = np.concatenate([store.signatures(), store.pending_signatures()])
            store.commit(groups=duplicate_groups(sigs))
        else:
            store.commit()
        report = IngestReport(
            store=str(store_path),
            added=added,
            total=len(store),
            exact_duplicates=n_dup,
            already_stored=n_known,
            skipped=tuple(skipped),
            duplicate_groups=len(set(store.groups.tolist())),
            seconds=time.perf_counter() - t0,
        )
    log.info("ingest added %d samples to %s in %.1fs", report.n_added, store_path, report.seconds)
    return report
