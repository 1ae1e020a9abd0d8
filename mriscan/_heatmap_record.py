"""The record of the heat maps ``mriscan explain`` wrote into its output folder, so that a rerun
replaces them instead of adding a second set beside them. Keras-free.

Why: scanner slices' PNGs are named by pseudonyms salted afresh each run
(``series-<hash>_slice<k>_layercam.png``), so a rerun into the same folder cannot overwrite the
earlier run's files and the folder ends up holding two sets no one can tell apart.

``explain_files.json`` in the folder lists, per map method and explained class (the two parts
of a PNG name that keep runs apart on purpose), the PNGs explain wrote there, each with its
SHA-256 and the SHA-256 of the input file it explains (a JPEG/PNG, a DICOM file, a NIfTI
volume: by content, so the record names no path). A run replaces the maps of its own inputs
only: once it has written its own, it removes the recorded maps of its method and class whose
input file is among those it was given (the same image, series or volume explained again) and
that still hold the bytes recorded; maps of other inputs stay, and stay recorded. Never a file
explain did not write, nor one changed or made read-only since (a user protecting a map). A
run that fails, or writes nothing, removes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from mriscan.artifacts import write_json
from mriscan.readers import file_sha256

# explain's logger: its messages are explain's, and filtered with them
log = logging.getLogger("mriscan.explain")

#: the record's file name in explain's output folder
RECORD_NAME = "explain_files.json"
_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: the fields of a file's entry: the PNG's SHA-256 and its input file's
_ENTRY = ("sha256", "source")


class _NotARecordError(ValueError):
    """The file named ``RECORD_NAME`` is not a record this mriscan wrote or can read."""


@dataclass(frozen=True)
class RunFiles:
    """The PNGs explain wrote for one method and class: ``files`` maps each name (in the output
    folder) to ``{"sha256": the PNG's, "source": its input file's}``; ``method`` and
    ``explained`` (the ``--class``, or None for the predicted class) say which runs may
    replace them."""

    method: str
    explained: str | None
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not (
            self.explained is None or isinstance(self.explained, str)
        ):
            raise _NotARecordError(f"method/class of {self.method!r}, {self.explained!r}")
        if not isinstance(self.files, dict) or not all(
            _plain_png(n)
            and isinstance(h, dict)
            and all(isinstance(h.get(k), str) and _SHA256.fullmatch(h[k]) for k in _ENTRY)
            for n, h in self.files.items()
        ):
            raise _NotARecordError(f"file list {str(self.files)[:200]!r}")

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.method, self.explained)

    def to_dict(self) -> dict[str, Any]:
        files = {n: {k: e[k] for k in _ENTRY} for n, e in self.files.items()}
        return {"method": self.method, "class": self.explained, "files": files}


def _plain_png(name: Any) -> bool:
    """Whether ``name`` is a plain ``.png`` file name (no folder, not hidden): the only names a
    record may make explain delete, so a damaged or hand-edited record cannot reach a file
    outside the folder."""
    return (
        isinstance(name, str)
        and name.endswith(".png")
        and not name.startswith(".")
        and not re.search(r"[\\/\x00]", name)
        and Path(name).name == name
    )


def read_record(folder: Path) -> list[RunFiles]:
    """The runs recorded in ``folder`` ([] when it holds no record).

    Raises
    ------
    _NotARecordError
        ``folder/explain_files.json`` exists but is not such a record (another program's file,
        or a newer mriscan's format).
    """
    path = folder / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _NotARecordError(str(exc)) from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != _VERSION:
        raise _NotARecordError(f"format_version {version!r}, expected {_VERSION}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise _NotARecordError("runs must be a list of objects")
    return [RunFiles(r.get("method"), r.get("class"), r.get("files")) for r in runs]


def _unchanged(path: Path, digest: str) -> bool:
    """Whether ``path`` is a plain file (no link) that still holds the bytes of ``digest``."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return file_sha256(path) == digest
    except OSError:
        return False


def _read_only(path: Path) -> bool:
    """Whether the owner may not write ``path`` (``chmod a-w``: a user keeping a map). Read
    from the mode bits, not ``os.access``, which says yes to root whatever the bits."""
    try:
        return not path.stat().st_mode & stat.S_IWUSR
    except OSError:
        return False


def recorded_maps(folder: Path) -> set[str]:
    """The names of the heat maps ``folder``'s record lists (any method and class) whose files
    still hold the recorded bytes (a file put there since under such a name is no map), and the
    record's own name when it holds one; empty when there is no readable record."""
    try:
        runs = read_record(folder)
    except _NotARecordError:
        return set()
    names = {n for r in runs for n, e in r.files.items() if _unchanged(folder / n, e["sha256"])}
    return names | {RECORD_NAME} if runs else names


def _write_record(folder: Path, runs: list[RunFiles]) -> None:
    """Write the record atomically (temp file + ``os.replace``)."""
    write_json(
        folder / RECORD_NAME,
        {
            "format_version": _VERSION,
            "about": "the heat maps `mriscan explain` wrote here, per --method and --class, each "
            "with the SHA-256 of the map and of the input file it explains; a rerun with the "
            "same ones removes the unchanged maps of the input files it explains again, once "
            "it has written its own",
            "runs": [r.to_dict() for r in runs],
        },
    )


class HeatmapLedger:
    """Records the PNGs one explain run writes into ``folder`` and, when the run ends having
    written some, replaces those an earlier run with the same ``method`` and ``explained``
    class wrote there for the same input files (see the module docstring). Use as a context
    manager around the run; call ``inputs`` with every input file of the run and ``add``
    after each PNG is written."""

    def __init__(self, folder: str | os.PathLike[str], method: str, explained: str | None):
        self.folder = Path(folder)
        self.key = (method, explained)
        self.written: dict[str, dict[str, str]] = {}
        self.sources: set[str] = set()  # SHA-256 of every input file of this run
        self._digest: dict[Path, str] = {}
        self.problem = ""
        try:  # read before anything is written: the run's own files are never "earlier"
            self.runs = read_record(self.folder)
        except _NotARecordError as exc:
            self.runs = []
            self.problem = str(exc)
        # every recorded map's name -> its SHA-256 (any method and class), for ``replaceable``
        self._recorded = {n: e["sha256"] for r in self.runs for n, e in r.files.items()}

    def _source(self, path: Path) -> str:
        if path not in self._digest:
            try:
                self._digest[path] = file_sha256(path)
            except OSError:  # unreadable: its own error row says so; it matches no record
                self._digest[path] = ""
        return self._digest[path]

    def inputs(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Note the input files of this run (its earlier maps of them are replaced)."""
        if not any(r.key == self.key for r in self.runs):
            return  # no earlier map of this method and class to match: no file to hash
        self.sources |= {d for p in paths if (d := self._source(Path(p)))}

    def replaceable(self, name: str) -> bool:
        """Whether this run may write a PNG named ``name`` in ``folder``: nothing is there, or
        this run wrote it, or an earlier run recorded it and it still holds the recorded bytes
        (one of explain's own maps). A file explain did not write, or one changed or made
        read-only since (a user's notes, an annotated or protected map), is never written
        over."""
        path = self.folder / name
        if name in self.written or not (path.exists() or path.is_symlink()):
            return True
        digest = self._recorded.get(name)
        return digest is not None and _unchanged(path, digest) and not _read_only(path)

    def add(self, png: str | os.PathLike[str], source: str | os.PathLike[str]) -> None:
        """Note a PNG this run wrote (in ``folder``) and the input file it explains."""
        png = Path(png)
        self.written[png.name] = {"sha256": file_sha256(png), "source": self._source(Path(source))}

    def __enter__(self) -> HeatmapLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.written:  # nothing new to show: the earlier run's maps stay, as recorded
            return
        if self.problem:
            log.warning(
                "%s is not a record of mriscan explain (%s): heat maps of earlier runs in %s "
                "are kept and this run's are not recorded, so a rerun adds a second set beside "
                "them; move that file away to have reruns replace their heat maps",
                self.folder / RECORD_NAME,
                self.problem,
                self.folder,
            )
            return
        others = [r for r in self.runs if r.key != self.key]
        recorded = {n: e for r in self.runs if r.key == self.key for n, e in r.files.items()}
        # only the maps of inputs this run explains again are replaced; the others stay listed
        earlier = {n: e for n, e in recorded.items() if e["source"] in self.sources}
        kept = {n: e for n, e in recorded.items() if n not in earlier}
        # a failed run removes nothing; its files join the earlier runs' in the record, so the
        # next complete run replaces both
        files = {**kept, **self.written} if exc_type is None else {**recorded, **self.written}
        try:
            _write_record(self.folder, [*others, RunFiles(*self.key, files)])
        except OSError as err:  # the maps are written: keep the earlier ones, say why
            log.warning(
                "could not write %s (%s): the heat maps of earlier runs in %s are kept",
                self.folder / RECORD_NAME,
                err,
                self.folder,
            )
            return
        if exc_type is not None:
            return
        removed, changed = _remove_unchanged(self.folder, earlier, self.written)
        replaced = removed + sum(n in earlier for n in self.written)
        if replaced or changed:  # INFO: shown on the console by default (mriscan.cli)
            method, explained = self.key
            log.info(
                "replaced %d heat map(s) an earlier run made of these inputs in %s (same method "
                "%s and %s)%s",
                replaced,
                self.folder,
                method,
                "predicted class" if explained is None else f"class {explained}",
                f"; kept {len(changed)} of its files changed or made read-only since it wrote "
                "them: " + ", ".join(changed[:3])
                if changed
                else "",
            )


def _remove_unchanged(
    folder: Path, earlier: dict[str, dict[str, str]], written: dict[str, dict[str, str]]
) -> tuple[int, list[str]]:
    """Delete the files of ``earlier`` that this run did not write again and that still hold
    the recorded bytes and are not read-only; returns (how many were deleted, the names kept
    as changed or made read-only since)."""
    removed, changed = 0, []
    for name, entry in earlier.items():
        path = folder / name
        if name in written or not _plain_png(name) or path.is_symlink() or not path.is_file():
            continue
        if not _unchanged(path, entry["sha256"]) or _read_only(path):
            changed.append(name)
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed, changed
