"""The committed records of a store as columns: ``RecordTable`` (read lazily, patches applied)
and ``RecordView`` (the records as a sequence of ``SampleRecord``, built on access).

A table is either backed by the column files of a format-3 store (``ColumnFiles``), or by the
records of a format-1/2 ``index.json`` held in memory (``RecordTable.from_records``): both answer
the same questions, so ``ImageStore`` reads old stores as they are and writes them as format 3
at the next commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import numpy as np

from mriscan.errors import StoreCorruptError
from mriscan.store.columns import (
    COLUMN_DIR,
    FIXED,
    MUTABLE,
    STRINGS,
    ColumnFiles,
    flags_from_mask,
    key_hash,
    mask_from_flags,
)
from mriscan.store.index import RETIRED_FLAGS, SampleRecord

__all__ = ["RecordTable", "RecordView", "canonical_groups", "resolve_labels"]

_RETIRED_MASK = mask_from_flags(sorted(RETIRED_FLAGS))
#: single-record reads before ``RecordTable.record`` reads whole columns instead
_SINGLE_READS = 64


def resolve_labels(merges: np.ndarray) -> dict[int, int]:
    """Root label of every label named in ``merges`` (pairs ``(label, into)``), union-find with
    path halving; the root of a group is its smallest label."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            parent[a] = parent.get(parent[a], parent[a])
            a = parent[a]
        return a

    for a, b in np.asarray(merges, np.int64).reshape(-1, 2).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {a: find(a) for a in list(parent)}


def canonical_groups(labels: np.ndarray) -> np.ndarray:
    """Renumber group labels 0.. in order of first appearance, ndarray (N,) int64 (the numbering
    ``mriscan.duplicates.duplicate_groups`` and ``mriscan.splits.union_groups`` use)."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    if not labels.size:
        return np.empty(0, np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


class RecordTable:
    """Committed records, column by column (every accessor reads only what it returns).

    Parameters
    ----------
    count : int
        Committed rows.
    columns : ColumnFiles, optional
        The column files (format 3); None with ``memory`` (format 1/2 read from ``index.json``).
    patch_bytes, group_file, merges : int, str, int
        Committed sizes of ``patches.jsonl``, the group generation and the number of merges.
    memory : dict, optional
        Every column in memory (``from_records``).
    projections : callable () -> ndarray (count, 32) float32, optional
        How to get the signature projections of an in-memory table.
    """

    def __init__(
        self,
        count: int,
        columns: ColumnFiles | None = None,
        *,
        patch_bytes: int = 0,
        group_file: str = "0",
        merges: int = 0,
        memory: dict[str, Any] | None = None,
        projections: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.count = int(count)
        self.columns = columns
        self.patch_bytes = int(patch_bytes)
        self.group_file = group_file
        self.n_merges = int(merges)
        self.memory = memory
        self._projections = projections
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_records(
        cls, records: Sequence[SampleRecord], projections: Callable[[], np.ndarray]
    ) -> RecordTable:
        """A table over records held in memory (a format-1/2 index).

        Raises
        ------
        StoreCorruptError
            The records' positions are not 0..N-1 in order, or a record has an unknown flag.
        """
        if any(r.position != k for k, r in enumerate(records)):
            raise StoreCorruptError("index.json: record positions are not 0..N-1 in order")
        try:
            masks = [mask_from_flags(r.flags) for r in records]
        except ValueError as exc:
            raise StoreCorruptError(f"index.json: {exc}") from exc
        mem: dict[str, Any] = {
            "label": np.array([r.label for r in records], np.uint8),
            "height": np.array([r.height for r in records], np.int32),
            "width": np.array([r.width for r in records], np.int32),
            "origin": np.array([r.origin for r in records], np.int32),
            "flags": np.array(masks, np.uint8),
            "keyhash": np.array([key_hash(r.group_key) for r in records], np.int64),
            "group": np.array([r.group for r in records], np.int64),
        }
        for name in STRINGS:
            mem[name] = [getattr(r, name) for r in records]
        return cls(len(records), memory=mem, projections=projections)

    @property
    def in_memory(self) -> bool:
        """True for a format-1/2 index held in memory."""
        return self.memory is not None

    # ---- patches -----------------------------------------------------------------------
    def patches(self) -> dict[int, dict[str, Any]]:
        """Committed changes of mutable fields by position (empty in memory)."""
        if "patches" not in self._cache:
            p = {} if self.columns is None else self.columns.patches(self.patch_bytes)
            self._cache["patches"] = p
        return self._cache["patches"]

    def _patched(self, name: str, values: np.ndarray) -> np.ndarray:
        field = {"flags": "flags", "origin": "origin", "keyhash": "group_key"}.get(name)
        patches = self.patches()
        if field is None or not patches:
            return values
        values = values.copy()
        for pos, fields in patches.items():
            if field in fields:
                v = fields[field]
                values[pos] = {"flags": mask_from_flags, "group_key": key_hash}.get(
                    field, lambda x: x
                )(v)
        return values

    # ---- columns -----------------------------------------------------------------------
    def fixed(self, name: str) -> np.ndarray:
        """A fixed-width column with patches applied (read-only ndarray, cached)."""
        if name not in self._cache:
            if name == "proj":
                if self.memory is not None:
                    values = self._projections() if self._projections else None
                else:
                    values = self.columns.fixed(name, self.count)
            elif self.memory is not None:
                values = self.memory[name]
            else:
                values = self.columns.fixed(name, self.count)
            values = self._patched(name, values)
            if isinstance(values, np.ndarray):
                values.flags.writeable = False
            self._cache[name] = values
        return self._cache[name]

    def strings(self, name: str) -> list[str]:
        """A whole string column with patches applied."""
        if self.memory is not None:
            values = list(self.memory[name])
        else:
            values = self.columns.strings(name, self.count)
        if name in MUTABLE:
            for pos, fields in self.patches().items():
                if name in fields:
                    values[pos] = fields[name]
        return values

    def string_at(self, name: str, i: int) -> str:
        """One string with patches applied."""
        if name in MUTABLE and name in self.patches().get(i, {}):
            return self.patches()[i][name]
        if self.memory is not None:
            return self.memory[name][i]
        return self.columns.string_at(name, i)

    def rows_containing(self, name: str, byte: str) -> np.ndarray:
        """Rows (sorted int64) whose string in column ``name`` contains the one-byte character
        ``byte``, patches applied: found in the column's bytes with NumPy, so only those rows'
        strings need decoding (e.g. ``group_key`` values that carry several keys)."""
        if self.memory is not None:
            return np.array([i for i, v in enumerate(self.strings(name)) if byte in v], np.int64)
        if self.count == 0:
            rows = np.empty(0, np.int64)
        else:
            ends = self.columns.string_ends(name, self.count)
            blob = self.columns.read_bytes(f"{COLUMN_DIR}/{name}.bin", 0, int(ends[-1]))
            at = np.flatnonzero(np.frombuffer(blob, np.uint8) == ord(byte))
            rows = np.unique(np.searchsorted(ends, at, side="right")).astype(np.int64)
        if name in MUTABLE:
            patched = {p: f[name] for p, f in self.patches().items() if name in f}
            if patched:
                keep = {int(r) for r in rows if int(r) not in patched}
                keep |= {p for p, v in patched.items() if byte in v}
                rows = np.array(sorted(keep), np.int64)
        return rows

    def group_labels(self) -> np.ndarray:
        """Group label of every row with merges resolved (not renumbered), int64 (N,)."""
        if "group_labels" not in self._cache:
            if self.memory is not None:
                raw = self.memory["group"]
                merges = np.empty((0, 2), np.int64)
            else:
                raw = self.columns.groups(self.group_file, self.count)
                merges = self.columns.merges(self.group_file, self.n_merges)
            roots = resolve_labels(merges)
            if roots:
                uniq, inv = np.unique(raw, return_inverse=True)
                mapped = np.array([roots.get(u, u) for u in uniq.tolist()], np.int64)
                raw = mapped[inv.reshape(-1)]
            self._cache["group_labels"] = raw
        return self._cache["group_labels"]

    def roots(self) -> dict[int, int]:
        """Root of every merged label (labels not in the dict are their own root)."""
        if "roots" not in self._cache:
            merges = (
                np.empty((0, 2), np.int64)
                if self.memory is not None
                else self.columns.merges(self.group_file, self.n_merges)
            )
            self._cache["roots"] = resolve_labels(merges)
        return self._cache["roots"]

    def groups(self) -> np.ndarray:
        """Split group of every row, numbered 0.. by first appearance, int64 (N,), cached."""
        if "groups" not in self._cache:
            g = canonical_groups(self.group_labels())
            g.flags.writeable = False
            self._cache["groups"] = g
        return self._cache["groups"]

    def active_mask(self) -> np.ndarray:
        """True where a record carries no flag in ``RETIRED_FLAGS``, bool (N,)."""
        return (self.fixed("flags") & _RETIRED_MASK) == 0

    def columns_as_lists(self) -> dict[str, list]:
        """Every record field as a Python list (patches applied), cached: what iterating or
        indexing many records reads once instead of row by row."""
        if "lists" not in self._cache:
            lists: dict[str, list] = {name: self.strings(name) for name in STRINGS}
            for name in ("label", "height", "width", "origin", "flags"):
                lists[name] = self.fixed(name).tolist()
            lists["group"] = self.groups().tolist()
            self._cache["lists"] = lists
        return self._cache["lists"]

    def record(self, i: int) -> SampleRecord:
        """The ``SampleRecord`` at position ``i`` (0 <= i < count).

        The first ``_SINGLE_READS`` records are read row by row (a few bytes of each column
        file); after that every column is read once and kept (``columns_as_lists``), since the
        caller is evidently walking many records.
        """
        self._singles = getattr(self, "_singles", 0) + 1
        if "lists" in self._cache or self._singles > _SINGLE_READS or self.memory is not None:
            c = self.columns_as_lists()
            return SampleRecord(
                position=i,
                flags=flags_from_mask(c["flags"][i]),
                **{k: c[k][i] for k in (*STRINGS, "label", "height", "width", "origin", "group")},
            )
        patch = self.patches().get(i, {})
        fields: dict[str, Any] = {name: self.string_at(name, i) for name in STRINGS}
        for name in ("label", "height", "width", "origin"):
            fields[name] = int(self._one(name, i))
        if "origin" in patch:
            fields["origin"] = int(patch["origin"])
        mask = mask_from_flags(patch["flags"]) if "flags" in patch else int(self._one("flags", i))
        return SampleRecord(
            position=i, group=int(self.groups()[i]), flags=flags_from_mask(mask), **fields
        )

    def _one(self, name: str, i: int) -> Any:
        if name in self._cache or self.memory is not None:
            return self.fixed(name)[i]
        return self.columns.fixed_rows(name, np.array([i]))[0]


class RecordView(Sequence[SampleRecord]):
    """The committed records as a read-only sequence of ``SampleRecord``, each built when asked
    for (``store.index.records``): indexing reads one row of each column; iterating reads the
    columns once."""

    def __init__(self, table: RecordTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.count

    @overload
    def __getitem__(self, i: int) -> SampleRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[SampleRecord]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {n} records")
        return self._table.record(i + n if i < 0 else i)

    def __iter__(self) -> Iterator[SampleRecord]:
        t = self._table
        if not t.count:
            return
        c = t.columns_as_lists()
        names = (*STRINGS, "label", "height", "width", "origin", "group")
        for i in range(t.count):
            yield SampleRecord(
                position=i,
                flags=flags_from_mask(c["flags"][i]),
                **{k: c[k][i] for k in names},
            )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordView({len(self)} records)"


def columns_of(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Column form of new records (dicts of ``SampleRecord`` fields): what
    ``ColumnFiles.append_rows`` takes, minus ``proj``."""
    out: dict[str, Any] = {name: [r[name] for r in records] for name in STRINGS}
    for name in ("label", "height", "width", "origin"):
        out[name] = np.array([r[name] for r in records], FIXED[name][0])
    out["flags"] = np.array([mask_from_flags(r["flags"]) for r in records], np.uint8)
    out["keyhash"] = np.array([key_hash(r["group_key"]) for r in records], np.int64)
    return out
