"""The settings of the DICOM and NIfTI readers (``DicomConfig``, ``NiftiConfig``), apart from the
readers themselves so that the command line can offer them as options without importing pydicom
and nibabel (``mriscan.dicom`` and ``mriscan.nifti`` export them under their usual names).
Keras-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mriscan.errors import ConfigError
from mriscan.io import DEFAULT_MAX_PIXELS

__all__ = [
    "INPUT_KINDS",
    "NIFTI_PLANES",
    "NIFTI_SELECTIONS",
    "READER_FLAGS",
    "DicomConfig",
    "NiftiConfig",
    "ReaderSettings",
    "describe_setting",
]

#: the kinds of input file (``mriscan.io.file_kind``), as a store's records name them
INPUT_KINDS = ("image", "dicom", "nifti")
#: slicing axis of each plane in a RAS+ volume
NIFTI_PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
NIFTI_SELECTIONS = ("all", "middle", "brain")
_AXIS = NIFTI_PLANES
_SELECTIONS = NIFTI_SELECTIONS


@dataclass(frozen=True)
class DicomConfig:
    """How DICOM slices become uint8.

    Parameters
    ----------
    window_percentiles : (float, float)
        Percentiles (0-100) of the real-world values mapped to 0 and 255 when the file has no
        usable Window Center/Width (or ``use_header_window`` is False). Computed per file: per
        slice for single-frame files, over all frames of a multi-frame file.
    use_header_window : bool
        Use the file's first Window Center/Width (VOI LUT Function LINEAR, LINEAR_EXACT or
        SIGMOID) when present.
    max_pixels : int
        Refuse frames with more pixels than this (``ImageTooLargeError``) before decoding.
    modalities : tuple of str, or None
        The Modality (0008,0060) values whose images are read (default ``("MR",)``: mriscan
        classifies brain MRI). Images of any other modality (CT, US, NM, CR, ...), and images
        without a Modality, are not decoded: ``DicomRead.excluded`` says why, and ingest lists
        them (``--strict`` refuses them). None reads every modality.
    """

    window_percentiles: tuple[float, float] = (0.5, 99.5)
    use_header_window: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    modalities: tuple[str, ...] | None = ("MR",)

    def __post_init__(self) -> None:
        lo, hi = self.window_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(
                "window_percentiles must satisfy 0 <= low < high <= 100. "
                f"Received: window_percentiles={self.window_percentiles}."
            )
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1. Received: max_pixels={self.max_pixels}.")
        if self.modalities is not None:
            if isinstance(self.modalities, str) or not all(
                isinstance(m, str) and m.strip() for m in self.modalities
            ):
                raise ConfigError(
                    "modalities must be a tuple of Modality codes such as ('MR',), or None for "
                    f"all. Received: modalities={self.modalities!r}."
                )
            object.__setattr__(
                self, "modalities", tuple(m.strip().upper() for m in self.modalities)
            )


@dataclass(frozen=True)
class NiftiConfig:
    """How a NIfTI volume becomes slices.

    Parameters
    ----------
    plane : {"axial", "coronal", "sagittal"}
        Slicing plane in the canonical (RAS+) volume.
    selection : {"brain", "all", "middle"}
        Which slices to keep: ``"brain"`` those whose foreground area is at least
        ``brain_fraction`` of the largest slice's (a slice without anatomy,
        ``mriscan.scan.has_no_anatomy``, has none: noise is not brain); ``"middle"`` the
        ``middle_count`` central slices; ``"all"`` every slice.
    brain_fraction : float in (0, 1]
        See ``selection="brain"``. 0.3 drops the vertex and skull-base slices that hold little
        brain while keeping most of the cerebrum.
    middle_count : int >= 1
        See ``selection="middle"`` (all slices when the volume has fewer).
    foreground_level : float in [0, 1)
        A voxel counts as foreground (for the area) when above ``low + level * (high - low)``
        of the volume's window.
    window_percentiles : (float, float)
        Percentiles (0-100) of the volume mapped to 0 and 255 (one window per volume).
    four_d : {"first", "refuse"}
        4-D volumes: keep the first volume (with a warning), or raise ``UnsupportedFormatError``.
    """

    plane: str = "axial"
    selection: str = "brain"
    brain_fraction: float = 0.3
    middle_count: int = 16
    foreground_level: float = 0.1
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    four_d: str = "first"

    def __post_init__(self) -> None:
        if self.plane not in _AXIS:
            raise ConfigError(f"plane must be one of {sorted(_AXIS)}. Received: {self.plane!r}.")
        if self.selection not in _SELECTIONS:
            raise ConfigError(
                f"selection must be one of {list(_SELECTIONS)}. Received: {self.selection!r}."
            )
        if not 0.0 < self.brain_fraction <= 1.0:
            raise ConfigError(f"brain_fraction must be in (0, 1]. Received: {self.brain_fraction}.")
        if self.middle_count < 1:
            raise ConfigError(f"middle_count must be >= 1. Received: {self.middle_count}.")
        if not 0.0 <= self.foreground_level < 1.0:
            raise ConfigError(
                f"foreground_level must be in [0, 1). Received: {self.foreground_level}."
            )
        lo, hi = self.window_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(
                "window_percentiles must satisfy 0 <= low < high <= 100. "
                f"Received: window_percentiles={self.window_percentiles}."
            )
        if self.four_d not in ("first", "refuse"):
            raise ConfigError(f"four_d must be 'first' or 'refuse'. Received: {self.four_d!r}.")


#: The reading settings a store and a model card record (``ReaderSettings.flat`` names), each
#: with the command-line option that sets it ("" where there is none).
READER_FLAGS: dict[str, str] = {
    "dicom.modalities": "--modality",
    "dicom.window_percentiles": "--dicom-window",
    "dicom.use_header_window": "--dicom-header-window",
    "nifti.plane": "--nifti-plane",
    "nifti.selection": "--nifti-slices",
    "nifti.brain_fraction": "--nifti-brain-fraction",
    "nifti.middle_count": "--nifti-middle-count",
    "nifti.foreground_level": "",
    "nifti.window_percentiles": "--nifti-window",
    "nifti.four_d": "--nifti-4d",
}
_CLASSES = {"dicom": DicomConfig, "nifti": NiftiConfig}


def _plain(value: Any) -> Any:
    """JSON form of a setting's value (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ReaderSettings:
    """How scanner files were (or are to be) read: the ``DicomConfig`` and ``NiftiConfig``.

    Recorded in a store's ``index.json`` when an ingest creates it (``"reader"``) and copied
    into the model card of every model trained on the store, so that a later ingest into the
    store and ``predict`` / ``explain`` / ``evaluate`` with the model read scanner files the same
    way. ``DicomConfig.max_pixels`` is a safety cap, not a way of reading, and is not recorded.
    Plain JSON form: ``{"dicom": {...}, "nifti": {...}}`` (``to_dict``); setting names are
    dotted (``"nifti.plane"``, ``READER_FLAGS``).
    """

    dicom: DicomConfig = field(default_factory=DicomConfig)
    nifti: NiftiConfig = field(default_factory=NiftiConfig)

    def flat(self) -> dict[str, Any]:
        """``{dotted name: value}`` of every recorded setting (``READER_FLAGS`` order)."""
        return {
            name: getattr(getattr(self, name.split(".")[0]), name.split(".")[1])
            for name in READER_FLAGS
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{"dicom": {field: value}, "nifti": {field: value}}``."""
        out: dict[str, dict[str, Any]] = {"dicom": {}, "nifti": {}}
        for name, value in self.flat().items():
            kind, key = name.split(".")
            out[kind][key] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ReaderSettings:
        """Inverse of ``to_dict``; a setting left out takes its default.

        Raises
        ------
        ConfigError
            ``data`` is not of that form, names an unknown setting, or holds a value the
            configs refuse.
        """
        if not isinstance(data, Mapping) or set(data) - set(_CLASSES):
            raise ConfigError(
                "reader settings must be an object with 'dicom' and 'nifti' entries. "
                f"Received: {data!r}."
            )
        overrides = {}
        for kind, values in data.items():
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"reader settings {kind!r} must be an object. Received: {values!r}."
                )
            for key, value in values.items():
                overrides[f"{kind}.{key}"] = value
        return cls().replace(overrides)

    def replace(self, overrides: Mapping[str, Any]) -> ReaderSettings:
        """A copy with the dotted settings ``overrides`` changed (lists become tuples).

        Raises
        ------
        ConfigError
            An unknown setting name, or a value the configs refuse.
        """
        changes: dict[str, dict[str, Any]] = {"dicom": {}, "nifti": {}}
        for name, value in overrides.items():
            if name not in READER_FLAGS:
                raise ConfigError(
                    f"unknown reader setting {name!r}; known: {', '.join(READER_FLAGS)}."
                )
            kind, key = name.split(".")
            changes[kind][key] = tuple(value) if isinstance(value, list) else value
        try:
            return ReaderSettings(
                dicom=dataclasses.replace(self.dicom, **changes["dicom"]),
                nifti=dataclasses.replace(self.nifti, **changes["nifti"]),
            )
        except TypeError as exc:  # a value of the wrong kind (e.g. a number for a tuple)
            raise ConfigError(f"invalid reader setting: {exc}.") from exc

    def differences(
        self, other: ReaderSettings, kinds: Iterable[str] = ("dicom", "nifti")
    ) -> list[tuple[str, Any, Any]]:
        """``(dotted name, self's value, other's value)`` of every setting of ``kinds`` (of
        ``"dicom"``, ``"nifti"``) that differs."""
        kinds = set(kinds)
        mine, theirs = self.flat(), other.flat()
        return [
            (name, mine[name], theirs[name])
            for name in READER_FLAGS
            if name.split(".")[0] in kinds and mine[name] != theirs[name]
        ]


def describe_setting(name: str, value: Any) -> str:
    """A reader setting as the user would type it: ``--nifti-plane sagittal``,
    ``--modality MR``, ``--no-dicom-header-window``, or ``NiftiConfig.foreground_level=0.1``
    for one without an option."""
    flag = READER_FLAGS.get(name, "")
    if not flag:
        kind, key = name.split(".")
        return f"{_CLASSES[kind].__name__}.{key}={value!r}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if name == "dicom.modalities":
        return " ".join(f"{flag} {m}" for m in value) if value else f"{flag} any"
    if isinstance(value, tuple | list):
        return f"{flag} {' '.join(str(v) for v in value)}"
    return f"{flag} {value}"
