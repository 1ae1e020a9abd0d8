"""Prediction on inputs of every kind (JPEG/PNG, DICOM, NIfTI): read with ``mriscan.readers``
(the ingest path), predict each slice, add one aggregated row per series / volume
(``mriscan.aggregate``).

Scanner slices are named by pseudonyms (``dicom/<series>/<instance>#<frame>``,
``nifti/<volume>#<slice>``) hashed with a salt made fresh for each run, so an output file holds
no file or folder name of a scan (often the patient's name) unless ``show_paths`` asks for them.
Files that fail get an error row named the same way: by pseudonym (``dicom/<series>/file-<h>``,
``nifti/file-<h>``), the path removed from the library's reason too, or by path with
``show_paths`` (run again with it to find the file to fix). So do the files and folders found
beside scanner data that are no input (a ``notes.txt``, a folder that cannot be listed:
``other/file-<h>``, ``other/folder-<h>``; see ``problem_rows``): below a folder of DICOM or NIfTI
files a path may name the patient. JPEG/PNG files, and what lies in folders without scanner
files, keep their paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mriscan.aggregate import TOP_K, aggregate_rows
from mriscan.errors import ConfigError
from mriscan.inference import predict_batch, prediction_row
from mriscan.io import SourceFile, display_path
from mriscan.preprocess import normalize, preprocess_batch
from mriscan.readers import (
    FLAG_SUMMARY,
    NO_ANATOMY_FLAGS,
    InputRead,
    InputSlice,
    ReadOptions,
    describe_flags,
    dicom_unit,
    read_input,
    refuse_mixed_series,
    slice_warnings,
)
from mriscan.scan import new_salt, salted_hash

__all__ = [
    "SCAN_COLUMNS",
    "FailedFile",
    "SeriesReads",
    "failed_file_name",
    "iter_predict_inputs",
    "label_stem",
    "predict_arrays",
    "predict_inputs",
    "problem_rows",
    "read_inputs",
    "row_outcome",
    "series_labels",
]

# the columns scanner rows add to ``mriscan.inference.columns_for``
SCAN_COLUMNS = ("level", "unit", "slices", "aggregate")


def read_inputs(
    files: Sequence[SourceFile],
    *,
    salt: bytes | None = None,
    workers: int | None = None,
    options: ReadOptions | None = None,
) -> list[InputRead]:
    """Read every file with ``mriscan.readers.read_input`` (threads; ``options``: how DICOM
    and NIfTI are read); one ``InputRead`` per file, in order. Then DICOM series whose files,
    as read, disagree in size are refused whole (``mriscan.readers.refuse_mixed_series``): a
    file that failed on its own (an empty size, a truncated instance) keeps its own reason
    and is not counted as a size, so the rest of its series is still read."""
    salt = salt if salt is not None else new_salt()

    def load(f: SourceFile) -> InputRead:
        return _read_one(f, salt, options)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return refuse_mixed_series(list(pool.map(load, files)))


def predict_arrays(
    model: Any, card: Any, images: Sequence[np.ndarray], *, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities (float64, shape (n, K)) of decoded uint8 slices (H, W), with the
    model card's preprocessing, normalisation and test-time flip."""
    cfg = card.preprocess
    parts = []
    for start in range(0, len(images), batch_size):
        batch = preprocess_batch(list(images[start : start + batch_size]), cfg)
        x = normalize(batch, cfg.normalization, threshold=cfg.threshold)[..., None]
        parts.append(predict_batch(model, x, batch_size, tta=card.tta))
    k = max(len(card.class_names), 2)
    return np.concatenate(parts) if parts else np.empty((0, k), np.float64)


def predict_inputs(
    model: Any,
    card: Any,
    files: Sequence[SourceFile],
    *,
    threshold: float | None,
    batch_size: int = 32,
    workers: int | None = None,
    show_paths: bool = False,
    top_k: int = TOP_K,
    read_options: ReadOptions | None = None,
    salt: bytes | None = None,
    sources: dict[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``iter_predict_inputs`` (same arguments) in one list, in its order."""
    rows: list[dict[str, Any]] = []
    for part in iter_predict_inputs(
        model,
        card,
        files,
        threshold=threshold,
        batch_size=batch_size,
        workers=workers,
        show_paths=show_paths,
        top_k=top_k,
        read_options=read_options,
        salt=salt,
        sources=sources,
    ):
        rows += part
    return rows


def iter_predict_inputs(
    model: Any,
    card: Any,
    files: Sequence[SourceFile],
    *,
    threshold: float | None,
    batch_size: int = 32,
    workers: int | None = None,
    show_paths: bool = False,
    top_k: int = TOP_K,
    read_options: ReadOptions | None = None,
    salt: bytes | None = None,
    sources: dict[str, list[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    read_ahead: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Rows for DICOM / NIfTI files, yielded series by series (lists of rows) as each
    series / volume is read and scored, so that memory holds about one series' slices.

    Rows: one per slice (``level`` "slice", in slice order;
    ``warning`` as for JPEG/PNG rows: ``mriscan.readers.slice_warnings``, the rule ingest
    uses, e.g. "uniform image (all black): ...") and one per series / volume
    (``mriscan.aggregate.aggregate_rows``; its ``warning`` says "<m> of <n> instances
    unreadable" when files of the series failed, e.g. a truncated instance, and "<u> of <n>
    slices uniform ..." / "... thin ..." when slices were flagged, and "its files lie in <k>
    folders ..." when a series' scored files do); a failed file gives one row
    (``level`` "file") with the reason in ``error``; a DICOM file without an image, or an image
    of a modality not read (``DicomConfig.modalities``: MR only by default), one row with
    ``error`` starting "skipped:". Each SOP instance (and frame) of a series is scored once:
    a later file holding one already read (a copied file, another encoding of the instance)
    gets a ``level`` "file" row "skipped: same SOP Instance UID as <the scored slice's row>:
    scored once", a damaged one the same words after its error, and the series row's
    ``warning`` counts them ("<n> file(s) holding an instance read from another file ...");
    an undecodable file counts as an unreadable instance only when no other file gave its
    instance. A slice whose instance and frame a scored slice of other pixels holds (a broken
    anonymiser that reuses UIDs) is no copy: it is scored, named after its file
    (``dicom/<series>/file-<h>#<frame>`` without ``show_paths``), its ``warning`` "same SOP
    Instance UID as <that slice's row> but different pixels: scored as a slice of its own;
    ..." (``SAME_UID_OTHER_PIXELS``), and the series row's ``warning`` counts them. DICOM
    series whose files, as read, mix slice sizes are refused whole
    (``mriscan.readers.refuse_mixed_series``).

    Order and streaming: the DICOM files' headers are read first (Series and SOP Instance
    UIDs only, ``mriscan.dicom.read_header_ids``) to group the files into series (a file whose
    header cannot be read is read whole at once: it gives its own row, or joins the series
    its slices name); a NIfTI file is a volume of its own. Then the series / volumes are read
    (``workers`` threads), scored and yielded one after the other, in the order of their first
    file in ``files``: the rows of each are its files' ``level`` "file" rows (in ``files``
    order), its slice rows, then its series / volume row. A series of fewer slices than
    ``batch_size`` is scored together with the series after it when that one has fewer than
    ``batch_size`` files (one model call for many small series), so its rows come with
    theirs. With ``show_paths`` a series row whose folder holds files of series not read yet
    comes after their rows (its name, ``series_labels``, depends on them). While one series
    is scored, the files of the next ones are read: whole series, as long as fewer than
    ``read_ahead`` files are read ahead (default ``max(batch_size, 2 * workers)``; 0: none),
    so memory holds the decoded slices of the series being scored, those of the next series
    and those read ahead.

    Columns: ``path`` (pseudonym, or ``<file>#<frame or slice>`` with ``show_paths``; a failed
    file's row likewise: see the module doc; a series / volume row: the unit's pseudonym, or
    with ``show_paths`` its folder or file, followed by `` [series <N>]`` when its folder holds
    several series, see ``series_labels``), those
    of ``mriscan.inference.columns_for(card)``, then ``SCAN_COLUMNS``. ``threshold``: that of a
    two-class model (None for more classes). ``read_options``: how DICOM and NIfTI are read
    (``mriscan.readers.ReadOptions``; default: the readers' defaults). ``salt``: the key of
    this run's pseudonyms (default: a fresh one, ``mriscan.scan.new_salt``), given to name
    ``problem_rows`` with the same key. ``sources``: a dict filled with, per DICOM series
    unit, the ``mriscan.dicom_sr.SRSource`` (file, frame) of each slice pooled into its row,
    in slice order (the evidence of ``mriscan.dicom_sr.write_series_report``), as each series
    is yielded. ``progress(done, total)``: units of work done and their number, one per
    DICOM header read in the grouping pass (reported as the pass goes, every 0.5% of it) and
    one per file of ``files`` (reported after each yield), so a bar moves from the start on
    inputs of many DICOM files; ``total`` is ``progress_total(files)`` throughout.

    Raises
    ------
    ConfigError
        If ``threshold`` is not a number in [0, 1] for a two-class model (when the first rows
        are asked for, before any file is read).
    """
    if card.binary and (threshold is None or not 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a number in [0, 1]. Received: {threshold!r}.")
    salt = salt if salt is not None else new_salt()
    n_workers = workers or os.cpu_count() or 1
    ahead = max(batch_size, 2 * n_workers) if read_ahead is None else read_ahead
    pool = ThreadPoolExecutor(max_workers=n_workers)
    try:
        total = progress_total(files)
        headers = total - len(files)
        on_header = None if progress is None else lambda done: progress(done, total)
        ids = _header_pass(files, salt, pool, on_header)
        groups = _group_files(files, ids, salt, read_options, pool)
        stream = _Stream(model, card, files, ids, groups, threshold, batch_size, salt,
                         show_paths, top_k, sources, read_options)  # fmt: skip
        on_files = None if progress is None else lambda done, _: progress(headers + done, total)
        yield from stream.run(pool, ahead, on_files)
    finally:  # a consumer that stops early (an error, Ctrl-C) leaves no read-ahead running
        pool.shutdown(wait=True, cancel_futures=True)


def _read_one(f: SourceFile, salt: bytes, options: ReadOptions | None) -> InputRead:
    """``read_input`` of one file as ``read_inputs`` reads it."""
    # a NIfTI volume's id hashes its path relative to ``root``: the file's own folder
    # would give every ``sub-*/anat/T1w.nii.gz`` of a BIDS tree one id (one "volume"
    # pooling every subject), so volumes are named by their absolute path (root None)
    root = f.path.parent if f.kind == "image" else None
    return read_input(f.path, f.kind, salt=salt, root=root, options=options)


def progress_total(files: Sequence[SourceFile]) -> int:
    """The units of work ``iter_predict_inputs`` reports for ``files``: one per file, plus one
    per DICOM file for its header in the grouping pass."""
    return len(files) + sum(f.kind == "dicom" for f in files)


def _header_pass(
    files: Sequence[SourceFile],
    salt: bytes,
    pool: Executor,
    progress: Callable[[int], None] | None = None,
) -> list[Any]:
    """Per file: the ``mriscan.dicom.HeaderIds`` of a DICOM file, None for a DICOM file whose
    header cannot be read and for other kinds (``mriscan.dicom.read_header_ids``).
    ``progress(headers read)``: every 0.5% of the DICOM files and after the last."""
    from mriscan.dicom import read_header_ids

    def ids(f: SourceFile) -> Any:
        return read_header_ids(f.path, salt) if f.kind == "dicom" else None

    n = sum(f.kind == "dicom" for f in files)
    step, read, out = max(1, n // 200), 0, []
    for f, got in zip(files, pool.map(ids, files), strict=True):
        out.append(got)
        if f.kind == "dicom" and progress is not None:
            read += 1
            if read % step == 0 or read == n:
                progress(read)
    return out


@dataclass
class _Group:
    """Files (places in ``files``, in order) that make one series or volume, or one file that
    fails alone; ``reads``: those already read (a header that could not be read alone)."""

    members: list[int]
    reads: dict[int, InputRead] = field(default_factory=dict)


def _group_files(
    files: Sequence[SourceFile],
    ids: Sequence[Any],
    salt: bytes,
    options: ReadOptions | None,
    pool: Executor,
) -> list[_Group]:
    """The files grouped into series by their headers' ``mriscan.readers.dicom_unit`` (the
    unit their slices will have), groups in the order of their first file. A DICOM file whose
    header could not be read is read now: it usually fails (a row of its own), and if it gives
    slices it joins the group of their unit, so no series is split by a header read that
    disagrees with the full read."""
    unknown = [i for i, f in enumerate(files) if f.kind == "dicom" and ids[i] is None]
    reads = pool.map(lambda i: _read_one(files[i], salt, options), unknown)
    probed = dict(zip(unknown, reads, strict=True))
    groups: list[_Group] = []
    by_unit: dict[str, _Group] = {}
    for i, f in enumerate(files):
        unit = None
        if i in probed:
            unit = probed[i].slices[0].unit if probed[i].slices else None
        elif f.kind == "dicom":
            unit = dicom_unit(ids[i].series, ids[i].instance)
        group = by_unit.get(unit) if unit is not None else None
        if group is None:
            group = _Group([])
            groups.append(group)
            if unit is not None:
                by_unit[unit] = group
        group.members.append(i)
        if i in probed:
            group.reads[i] = probed[i]
    return groups


def _files_in(groups: Sequence[_Group], which: Mapping[int, Any], *, but: int) -> int:
    """How many files the groups ``which`` (places in ``groups``) other than ``but`` hold."""
    return sum(len(groups[n].members) for n in which if n != but)


def _in_order(
    pool: Executor,
    files: Sequence[SourceFile],
    groups: Sequence[_Group],
    salt: bytes,
    options: ReadOptions | None,
    ahead: int,
) -> Iterator[tuple[int, _Group, list[InputRead]]]:
    """``(k, groups[k], its reads)`` in group order, each group's reads in ``members`` order;
    while one is used, the files of the next groups are read on ``pool``: whole groups, as
    long as fewer than ``ahead`` files are read ahead."""

    def submit(g: _Group) -> dict[int, Future]:  # the files of ``g`` not read yet
        return {
            i: pool.submit(_read_one, files[i], salt, options)
            for i in g.members
            if i not in g.reads
        }

    submitted: dict[int, dict[int, Future]] = {}  # group -> file -> its read
    for k, g in enumerate(groups):
        if k not in submitted:
            submitted[k] = submit(g)
        j = max(submitted) + 1
        while j < len(groups) and _files_in(groups, submitted, but=k) < ahead:
            submitted[j] = submit(groups[j])
            j += 1
        futures = submitted.pop(k)
        reads = [g.reads.pop(i) if i in g.reads else futures[i].result() for i in g.members]
        del futures
        yield k, g, reads
        del reads  # the consumer's copy is all that holds them now


class SeriesReads:
    """DICOM and NIfTI files read as ``iter_predict_inputs`` reads them, one series / volume at
    a time, so that memory holds about one series' slices (``mriscan explain`` on many files).

    On entering, the DICOM headers are read (``mriscan.dicom.read_header_ids``: Series and SOP
    Instance UIDs, Series Number) and the files grouped into series (a NIfTI file is a volume
    of its own; a DICOM file whose header cannot be read is read whole then, and joins the
    series its slices name, or stands alone). Iterating yields each group's reads
    (``mriscan.readers.InputRead``, in ``files`` order) in the order of the groups' first
    files, reading the next groups' files on ``workers`` threads while one is used (fewer than
    ``read_ahead`` files ahead; default ``max(32, 2 * workers)``). A group gives the slices of
    one series or volume, or only failed files. ``places``: per group, known before any pixel
    is read, the ``group_place`` triple of its series or volume (the folder of its first file
    or the NIfTI file, the Series Number, its first file in path order), or None for a group
    of failed files only; ``series_labels`` takes them (keyed by group). Leaving the context
    ends the reading threads, also when the iteration stopped early.

    Raises
    ------
    ConfigError
        If ``salt`` is no valid salt (``mriscan.scan.check_salt``).
    """

    def __init__(
        self,
        files: Sequence[SourceFile],
        *,
        salt: bytes,
        options: ReadOptions | None = None,
        workers: int | None = None,
        read_ahead: int | None = None,
    ) -> None:
        self.files, self.salt, self.options = list(files), salt, options
        self.workers = workers or os.cpu_count() or 1
        self.ahead = max(32, 2 * self.workers) if read_ahead is None else read_ahead
        self.places: list[tuple[Path, int | None, Path] | None] = []
        self._pool: ThreadPoolExecutor | None = None
        self._groups: list[_Group] = []

    def __enter__(self) -> SeriesReads:
        self._pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            ids = _header_pass(self.files, self.salt, self._pool)
            self._groups = _group_files(self.files, ids, self.salt, self.options, self._pool)
        except BaseException:
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        self.places = [group_place(self.files, g, ids) for g in self._groups]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[list[InputRead]]:
        if self._pool is None:
            raise RuntimeError("SeriesReads is read inside its `with` block")
        ordered = _in_order(self._pool, self.files, self._groups, self.salt, self.options,
                            self.ahead)  # fmt: skip
        for _, _, reads in ordered:
            yield reads


def group_place(
    files: Sequence[SourceFile], g: _Group, ids: Sequence[Any]
) -> tuple[Path, int | None, Path] | None:
    """The (place, Series Number, first file) triple ``series_labels`` takes, of one group of
    files (a series or volume), from its headers (or the reads of files whose header could not
    be read), before any pixel is read: the folder of its first file in path order (a NIfTI
    volume: its file), its Series Number, that first file. None when no file of it names a
    series or volume (files failing alone). Predict and explain both label a folder's series
    by these, so a series whose every file fails to decode still counts among its folder's
    series in both."""
    paths = [files[i].path for i in g.members]
    first = min(paths, key=str)
    head = files[g.members[0]]
    if head.kind == "nifti":
        return head.path, None, head.path
    numbers = [ids[i].number for i in g.members if ids[i] is not None]
    numbers += [s.series_number for r in g.reads.values() for s in r.slices]
    named = any(ids[i] is not None for i in g.members) or any(r.slices for r in g.reads.values())
    if not named:
        return None
    return first.parent, next((n for n in numbers if n is not None), None), first


@dataclass
class _Plan:
    """What one series / volume's reads give before scoring (see ``_plan``)."""

    file_rows: list[dict[str, Any]]  # its files that gave no slice to score, in file order
    slices: list[tuple[InputRead, InputSlice]]  # to score, by (unit, order)
    clashes: dict[int, tuple[str, str]]  # id(slice) -> (row name, warning): UID reused
    clashed: dict[str, int]  # series unit -> its slices of a reused UID scored anyway
    copies: dict[str, int]  # series unit -> its files not scored again (copies)
    unreadable: dict[str, set]  # series unit -> its instances that could not be read


class _Stream:
    """The state of ``iter_predict_inputs`` over its groups of files."""

    def __init__(
        self,
        model: Any,
        card: Any,
        files: Sequence[SourceFile],
        ids: Sequence[Any],
        groups: list[_Group],
        threshold: float | None,
        batch_size: int,
        salt: bytes,
        show_paths: bool,
        top_k: int,
        sources: dict[str, list[Any]] | None,
        options: ReadOptions | None,
    ) -> None:
        self.model, self.card, self.files, self.ids, self.groups = model, card, files, ids, groups
        self.threshold, self.batch_size, self.salt = threshold, batch_size, salt
        self.show_paths, self.top_k, self.sources = show_paths, top_k, sources
        self.options = options
        # show_paths: a series row is named once every group with a file in its folder is
        # done (``series_labels`` compares the series of a folder); groups left per folder
        self.left: dict[Path, int] = {}
        for g in groups:
            for folder in self._folders(g):
                self.left[folder] = self.left.get(folder, 0) + 1
        self.places: dict[str, tuple[Path, int | None, Path]] = {}  # unit -> group_place's
        self.at_place: dict[Path, list[str]] = {}  # place -> its units read so far
        self.held: list[dict[str, Any]] = []  # series rows waiting for their folder

    def _folders(self, g: _Group) -> set[Path]:
        return {self.files[i].path.parent for i in g.members if self.files[i].kind == "dicom"}

    def run(
        self, pool: Executor, ahead: int, progress: Callable[[int, int], None] | None
    ) -> Iterator[list[dict[str, Any]]]:
        """Read, score and yield the groups in order (see ``iter_predict_inputs``)."""
        groups = self.groups
        pending: list[tuple[_Group, _Plan]] = []  # read, not scored yet
        done = 0
        ordered = _in_order(pool, self.files, groups, self.salt, self.options, ahead)
        for k, g, reads in ordered:
            pending.append((g, self._plan(refuse_mixed_series(reads), g.members)))
            del reads
            waiting = sum(len(p.slices) for _, p in pending)
            last = k + 1 == len(groups)
            if last or waiting >= self.batch_size or len(groups[k + 1].members) >= self.batch_size:
                rows = self._score(pending)
                done += sum(len(pg.members) for pg, _ in pending)
                pending = []
                if progress is not None:
                    progress(done, len(self.files))
                if rows:
                    yield rows

    def _plan(self, reads: list[InputRead], members: list[int]) -> _Plan:
        """One group's reads (in ``members`` order) before scoring: copies of an instance and
        failed files turned into rows, the slices to score."""
        salt, show_paths, card, threshold = self.salt, self.show_paths, self.card, self.threshold
        slices = []
        file_rows: list[tuple[int, dict[str, Any]]] = []  # (place in ``reads``, row)
        # one slice per SOP instance and frame in each series: copies of an instance (a copied
        # file, the same instance exported twice) are not scored again, so they cannot tip the
        # series' pooled probability or its slice count
        # unless its pixels differ: a broken anonymiser may give different slices one SOP
        # Instance UID, and each is then scored (under its file's pseudonym, with a warning)
        first_of: dict[tuple[str, str], list[tuple[InputRead, InputSlice]]] = {}
        copies: dict[str, int] = {}
        clashes: dict[int, tuple[str, str]] = {}
        clashed: dict[str, int] = {}
        failed = []
        for i, r in enumerate(reads):
            if r.error is not None or r.skipped is not None or r.excluded is not None:
                failed.append((i, r))
                continue
            dup = []
            dup_of = []  # the scored slice each of ``dup`` copies
            for s in r.slices:
                key = (s.unit, s.instance) if s.instance else None
                held = first_of.get(key, []) if key is not None else []
                same = next((h for h in held if np.array_equal(h[1].image, s.image)), None)
                if same is not None:
                    dup.append(s)
                    dup_of.append(same)
                    continue
                if held:
                    clashes[id(s)] = _clash(r, s, held[0], salt, show_paths)
                    clashed[s.unit] = clashed.get(s.unit, 0) + 1
                if key is not None:
                    first_of.setdefault(key, []).append((r, s))
                slices.append((r, s))
            if dup:
                unit = dup[0].unit
                copies[unit] = copies.get(unit, 0) + 1
                first = [_slice_name(*rs, show_paths) for rs in dup_of]
                if len(dup) == 1:
                    why = f"same SOP Instance UID as {first[0]}"
                else:  # a multi-frame copy: its frames are those of the first file
                    why = f"same SOP Instance UID and frames as {first[0].rsplit('#', 1)[0]}"
                if len(dup) < len(r.slices):
                    why = f"{len(dup)} of its {len(r.slices)} frames: {why}"
                name = (
                    display_path(r.path)
                    if show_paths
                    else _file_pseudonym(r, unit.split(":", 1)[1], salt)
                )
                err = f"skipped: {why}: scored once" + (
                    " (its other frames are scored)" if len(dup) < len(r.slices) else ""
                )
                file_rows.append((i, _scan_row(card, name, None, threshold, err, "file", "")))
        scored = {(u, inst.rsplit("#", 1)[0]): rs[0] for (u, inst), rs in first_of.items()}
        unreadable: dict[str, set] = {}
        for i, r in failed:
            # the header pass's ids (a header it could not read: none), not a second read
            ids = self.ids[members[i]] or (None, None)
            name, err, series, inst = failed_file_name(r, salt=salt, show_paths=show_paths, ids=ids)
            if r.error is not None and series is not None:
                unit = f"series:{series}"
                if inst is not None and (unit, inst) in scored:
                    # a damaged copy of an instance read from another file: nothing is missing
                    first = _slice_name(*scored[(unit, inst)], show_paths).rsplit("#", 1)[0]
                    err += f"; it has the same SOP Instance UID as {first}, which was scored"
                    copies[unit] = copies.get(unit, 0) + 1
                else:
                    unreadable.setdefault(unit, set()).add(inst or ("file", str(r.path)))
            file_rows.append((i, _scan_row(card, name, None, threshold, err, "file", "")))
        slices.sort(key=lambda rs: (rs[1].unit, rs[1].order))
        rows = [row for _, row in sorted(file_rows, key=lambda ir: ir[0])]
        return _Plan(rows, slices, clashes, clashed, copies, unreadable)

    def _score(self, pending: list[tuple[_Group, _Plan]]) -> list[dict[str, Any]]:
        """The rows of read groups: their slices scored in one run of the model."""
        images = [s.image for _, p in pending for _, s in p.slices]
        probs = predict_arrays(self.model, self.card, images, batch_size=self.batch_size)
        out: list[dict[str, Any]] = []
        units: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
        earlier, self.held = self.held, []  # series rows held back by earlier calls
        start = 0
        for g, plan in pending:
            n = len(plan.slices)
            units.append(self._rows(plan, probs[start : start + n]))
            start += n
            if self.show_paths:
                # the group's place from its headers, as explain has it: a series whose
                # files all failed still counts among its folder's series
                place = group_place(self.files, g, self.ids)
                keys = {s.unit for _, s in plan.slices} or {f"unread:{g.members[0]}"}
                for unit in keys if place is not None else ():
                    self.places[unit] = place
                    self.at_place.setdefault(place[0], []).append(unit)
                for folder in self._folders(g):
                    self.left[folder] -= 1
        ready = self._ready
        for rows, agg in units:
            out += rows
            out += [row for row in agg if ready(row)]
            self.held += [row for row in agg if not ready(row)]
        if self.show_paths:
            # series rows held back by earlier groups whose folders are now done follow
            out += [row for row in earlier if ready(row)]
            self.held = [row for row in earlier if not ready(row)] + self.held
            self._name_units(out)
        return out

    def _ready(self, row: dict[str, Any]) -> bool:
        """Whether a series / volume row can be named: no group with a file in its folder
        is left (``show_paths`` only; without it, a pseudonym names it at once)."""
        if not self.show_paths or row.get("level") not in ("series", "volume"):
            return True
        return self.left.get(self.places[row["unit"]][0], 0) == 0

    def _name_units(self, rows: list[dict[str, Any]]) -> None:
        """``series_labels`` after the folder of each series / volume row (``show_paths``),
        over every unit of its folder (all read by now)."""
        wanted = {self.places[r["unit"]][0] for r in rows if r.get("level") in ("series", "volume")}
        labels = series_labels({u: self.places[u] for p in wanted for u in self.at_place[p]})
        for row in rows:
            if row.get("level") in ("series", "volume") and (label := labels[row["unit"]]):
                row["path"] = f"{row['path']} [{label}]"

    def _rows(
        self, plan: _Plan, probs: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A group's file and slice rows, and its series / volume rows (with ``show_paths``
        named by folder or file only: ``_name_units`` adds the label)."""
        card, threshold, show_paths = self.card, self.threshold, self.show_paths
        rows = list(plan.file_rows)
        slices = plan.slices
        flagged: dict[str, dict[str, int]] = {}  # unit -> flag -> its slices flagged so
        for (r, s), p in zip(slices, probs, strict=True):
            name, clash = plan.clashes.get(id(s), (_slice_name(r, s, show_paths), ""))
            row = _scan_row(card, name, p, threshold, "", "slice", s.unit)
            row["warning"] = clash
            flags = slice_warnings(s.image)  # the rule of ingest and of predict's JPEG/PNG rows
            if flags:
                # left out of its unit's pool
                row["no_anatomy"] = any(f in NO_ANATOMY_FLAGS for f in flags)
                row["warning"] = "; ".join(w for w in (clash, describe_flags(flags, s.image)) if w)
                for f in flags:
                    flagged.setdefault(s.unit, {}).setdefault(f, 0)
                    flagged[s.unit][f] += 1
            if show_paths:
                row["unit_path"] = display_path(r.path.parent if r.kind == "dicom" else r.path)
            rows.append(row)
        agg = aggregate_rows(rows, card=card, threshold=threshold, k=self.top_k)
        for row in rows:
            row.pop("unit_path", None)
            row.pop("no_anatomy", None)
        files_of: dict[str, set] = {}
        read_note: dict[str, str] = {}  # unit -> how it was read (the first volume of a 4-D file)
        for r, s in slices:
            files_of.setdefault(s.unit, set()).add(r.path)
            if self.sources is not None and r.kind == "dicom":
                from mriscan.dicom_sr import SRSource

                frame = int(s.source.rsplit("#", 1)[-1])
                self.sources.setdefault(s.unit, []).append(SRSource(r.path, frame))
            if r.note:
                read_note[s.unit] = r.note
        owners: dict[str, dict[str, dict[str, int]]] = {}  # unit -> patient/study -> id -> n
        for _, s in slices:
            if s.unit.startswith("series:"):
                for what, value in (("patient", s.patient), ("study", s.study)):
                    counts = owners.setdefault(s.unit, {}).setdefault(what, {})
                    counts[value] = counts.get(value, 0) + 1
        for row in agg:
            row["warning"] = _unit_warning(
                row, plan, read_note, owners, files_of, flagged.get(row["unit"], {})
            )
        return rows, agg


def _unit_warning(
    row: dict[str, Any],
    plan: _Plan,
    read_note: Mapping[str, str],
    owners: Mapping[str, Mapping[str, Mapping[str, int]]],
    files_of: Mapping[str, set],
    flagged: Mapping[str, int],
) -> str:
    """The ``warning`` of a series / volume row (see ``iter_predict_inputs``)."""
    unit = row["unit"]
    notes = [read_note[unit]] if unit in read_note else []
    for what, counts in owners.get(unit, {}).items():
        if len(counts) > 1:  # counts only: no identifier
            split = " + ".join(str(n) for n in sorted(counts.values(), reverse=True))
            kind = "patients (Patient ID)" if what == "patient" else "studies (Study UID)"
            notes.append(
                f"its slices belong to {len(counts)} {kind} ({split} slices): check the "
                "series; --dicom-out files no report for it"
            )
    if missing := len(plan.unreadable.get(unit, ())):
        total = missing + len(files_of.get(unit, ()))
        notes.append(
            f"{missing} of {total} instances unreadable (see their rows): scored from the "
            "others only"
        )
    if n := plan.copies.get(unit, 0):
        notes.append(
            f"{n} file{'s' if n != 1 else ''} holding an instance read from another file "
            "(same SOP Instance UID) not scored again (see their rows)"
        )
    if n := plan.clashed.get(unit, 0):
        notes.append(
            f"{n} slice{'s' if n != 1 else ''} sharing a SOP Instance UID with another "
            "slice of other pixels, scored as slices of their own (see their rows)"
        )
    total = row["slices"] + row.get("no_anatomy_left_out", 0)
    for flag, count in flagged.items():
        what = FLAG_SUMMARY[flag]
        pool = ""
        if flag in NO_ANATOMY_FLAGS:
            left_out = row.get("no_anatomy_left_out")
            pool = ", left out of P" if left_out else ", all pooled: none has anatomy"
        notes.append(f"{count} of {total} slices {what}{pool} (see their rows)")
    notes += _folders_note(unit, files_of)
    return "; ".join(notes)


def _folders_note(unit: str, files_of: Mapping[str, set]) -> list[str]:
    """A DICOM series whose scored files lie in several folders says so (counts only: with
    ``show_paths`` its row is named after its first slice's folder alone)."""
    folders = {Path(p).parent for p in files_of.get(unit, ())}
    if not unit.startswith("series:") or len(folders) < 2:
        return []
    return [f"its files lie in {len(folders)} folders: the row pools them all"]


class FailedFile(NamedTuple):
    """How a report names a scanner file that gave no slice (``failed_file_name``)."""

    name: str
    reason: str
    series: str | None
    instance: str | None


def failed_file_name(
    r: InputRead,
    *,
    salt: bytes,
    show_paths: bool = False,
    ids: tuple[str | None, str | None] | None = None,
) -> FailedFile:
    """How a report names a scanner file that gave no slice (``r.error``, ``r.skipped`` or
    ``r.excluded`` set), the rule of ``predict_inputs``: ``(name, reason, series, instance)``.

    ``name``: the pseudonym of ``_file_pseudonym`` (``dicom/<series>/file-<h>``,
    ``nifti/file-<h>``; ``salt`` the run's key), or the path with ``show_paths``; ``reason``:
    the error, or "skipped: <why>", with the file's path replaced by "the file" (libraries
    such as nibabel repeat it); ``series`` and ``instance``: the hashed Series and SOP
    Instance UIDs of a DICOM file whose header still names them, from one read of its header
    (``mriscan.dicom.header_ids``), else None; ``ids``: those two, when the caller read the
    header already (``(None, None)`` for a header it could not read), so it is not read again.
    """
    why = r.error if r.error is not None else f"skipped: {r.skipped or r.excluded}"
    series = instance = None
    if r.kind == "dicom":
        from mriscan.dicom import header_ids

        series, instance = ids[:2] if ids is not None else header_ids(r.path, salt)[:2]
    name = display_path(r.path) if show_paths else _file_pseudonym(r, series, salt)
    return FailedFile(name, _without_path(why, r.path), series, instance)


def problem_rows(
    problems: Sequence[tuple[Path, str]],
    inputs: Sequence[str | os.PathLike[str]],
    files: Sequence[SourceFile],
    *,
    salt: bytes,
    show_paths: bool = False,
) -> list[dict[str, Any]]:
    """Rows (``path``, ``label`` "", ``error``; ``level`` below scanner data) for what
    ``mriscan.readers.collect_inputs`` found that is no input (files of no input kind,
    sub-folders that cannot be listed, empty folders), named by the rule for scanner data.

    A problem that lies below a folder of ``inputs`` holding a DICOM or NIfTI file (``files``)
    is named by pseudonym, ``other/file-<h>`` or ``other/folder-<h>`` (``h`` = the salted hash
    of its absolute path; its path removed from the reason), as a scanner file that failed
    is: a path below scanner data may name the patient. Others keep their path
    (``mriscan.io.display_path``), as JPEG/PNG rows do; so do all with ``show_paths``. A
    problem below scanner data has ``level`` "file", as a scanner file that failed, whether
    it is named by pseudonym or (``show_paths``) by path; others have no ``level``, as
    JPEG/PNG rows.
    """

    scanned = []
    for item in inputs:
        root = Path(os.path.abspath(item))
        if Path(item).is_dir() and any(
            f.kind != "image" and Path(os.path.abspath(f.path)).is_relative_to(root) for f in files
        ):
            scanned.append(root)
    rows = []
    for p, why in problems:
        absolute = Path(os.path.abspath(p))
        below_scans = any(absolute.is_relative_to(r) for r in scanned)
        private = below_scans and not show_paths
        if private:
            what = "folder" if absolute.is_dir() else "file"
            name = f"other/{what}-{salted_hash(salt, 'file', str(absolute))}"
            why = _without_path(why, p)
        else:
            name = display_path(p)
        row = {"path": name, "label": "", "error": why}
        if below_scans:
            row["level"] = "file"
        rows.append(row)
    return rows


#: Why a DICOM slice that shares its SOP Instance UID (and frame) with a scored slice of other
#: pixels is scored all the same, after "same SOP Instance UID as <that slice's row> but"
SAME_UID_OTHER_PIXELS = (
    "different pixels: scored as a slice of its own; the file's UIDs are not unique (an "
    "anonymiser that reuses UIDs?)"
)


def _clash(
    r: InputRead,
    s: InputSlice,
    first: tuple[InputRead, InputSlice],
    salt: bytes,
    show_paths: bool,
) -> tuple[str, str]:
    """``(row name, warning)`` of slice ``s`` of ``r``, whose SOP Instance UID and frame a
    slice of other pixels (``first``) already holds. Its pseudonym would be that slice's, so
    without ``show_paths`` it is named after its file (``dicom/<series>/file-<h>#<frame>``,
    as a failed file is, ``_file_pseudonym``)."""
    frame = s.source.rsplit("#", 1)[-1]
    if show_paths:
        name = _slice_name(r, s, True)
    else:
        name = f"{_file_pseudonym(r, s.unit.split(':', 1)[1], salt)}#{frame}"
    return name, f"same SOP Instance UID as {_slice_name(*first, show_paths)} but " + (
        SAME_UID_OTHER_PIXELS
    )


#: ``row_outcome``'s kinds of row, as ``predict``'s summary counts them
OUTCOMES = ("scored", "unreadable", "copy", "not input")


def row_outcome(row: Mapping[str, Any]) -> str:
    """How ``mriscan predict``'s summary counts a row of ``mriscan.predict.predict`` (one of
    ``OUTCOMES``): "scored" (no ``error``); "copy", a file "skipped: same SOP Instance UID
    as ..." (an instance scored from another file); "not input", another "skipped: ..."
    (a DICOM file without an image, an image of a modality not read) or a ``problem_rows``
    row other than a folder that cannot be listed (a file of no input kind, an empty folder:
    those rows alone have no ``warning`` column); "unreadable", every other error (a file
    that could not be read or decoded, a damaged copy of a scored instance included)."""
    from mriscan.io import UNLISTED_FOLDER

    error = row.get("error") or ""
    if not error:
        return "scored"
    if error.startswith(_SKIPPED):
        return "copy" if _COPY in error else "not input"
    if "warning" not in row and not error.startswith(UNLISTED_FOLDER):
        return "not input"
    return "unreadable"


_SKIPPED = "skipped: "
_COPY = "same SOP Instance UID"  # in a copy's reason (``predict_inputs``): "... as <row>"


def _slice_name(r: InputRead, s: InputSlice, show_paths: bool) -> str:
    """The name of a scanner slice's row: its pseudonym, or ``<file>#<frame or slice>`` with
    ``show_paths`` (as ``predict_inputs`` names slice rows)."""
    return f"{display_path(r.path)}#{s.source.rsplit('#', 1)[-1]}" if show_paths else s.source


def _file_pseudonym(r: InputRead, series: str | None, salt: bytes) -> str:
    """The name of a file that gave no slice, without its path: ``dicom/<series>/file-<h>``
    (the series' own pseudonym when its header names one, else ``unknown``) or
    ``<kind>/file-<h>``, ``h`` a salted hash of the file's absolute path (this run's salt)."""
    h = salted_hash(salt, "file", os.path.abspath(r.path))
    if r.kind == "dicom":
        return f"dicom/{series or 'unknown'}/file-{h}"
    return f"{r.kind}/file-{h}"


def _without_path(reason: str, path: Path) -> str:
    """``reason`` with the file's path (as given, absolute or resolved; some libraries, e.g.
    nibabel, put it in their messages) replaced by "the file"."""
    forms = {str(path), os.path.abspath(path), str(path.resolve())}
    for form in sorted(forms, key=len, reverse=True):
        reason = reason.replace(f"'{form}'", "the file").replace(form, "the file")
    # nibabel writes "File <path> is not ...": not "File the file is not ..."
    return reason.replace("File the file", "the file")


def series_labels(units: Mapping[str, tuple[Path, int | None, Path]]) -> dict[str, str]:
    """What tells apart units shown by the same place (several series in one folder).

    ``units``: unit -> (place, Series Number or None, first file), as ``group_place`` gives.
    A unit alone at its place gets ""; one of several gets ``"series <N>"`` (its Series
    Number) when no other there has that number, else ``"series <N> #<k>"`` (``"series
    #<k>"`` without a number), ``k`` = 1, 2, ... in the order of the units' first files, so
    the labels do not depend on the run's salt.
    """
    by_place: dict[Path, list[str]] = {}
    for unit, (place, _, _) in units.items():
        by_place.setdefault(place, []).append(unit)
    out = dict.fromkeys(units, "")
    for members in by_place.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda u: str(units[u][2]))
        bases = {
            u: "series" + (f" {units[u][1]}" if units[u][1] is not None else "") for u in members
        }
        shared = {
            b for b in bases.values() if sum(v == b for v in bases.values()) > 1 or b == "series"
        }
        seen: dict[str, int] = {}
        for u in members:
            b = bases[u]
            if b in shared:
                seen[b] = seen.get(b, 0) + 1
                out[u] = f"{b} #{seen[b]}"
            else:
                out[u] = b
    return out


def label_stem(label: str) -> str:
    """A ``series_labels`` label as part of a file name: "series 3 #2" -> "series3-2"."""
    return label.replace(" #", "-").replace(" ", "")


def _scan_row(
    card: Any,
    path: str,
    p: np.ndarray | None,
    threshold: float | None,
    error: str,
    level: str,
    unit: str,
) -> dict:
    """A ``mriscan.inference.prediction_row`` (class probabilities, label) plus the scanner
    columns."""
    row = prediction_row(path, p, card, threshold, error)
    row["path"] = path  # pseudonyms and paths are already text
    row.update(level=level, unit=unit, slices=1 if level == "slice" else "", aggregate="")
    return row
