"""The settings of the DICOM and NIfTI readers (``DicomConfig``, ``NiftiConfig``), apart from the
readers themselves so that the command line can offer them as options without importing pydicom
and nibabel (``mriscan.dicom`` and ``mriscan.nifti`` export them under their usual names).
Keras-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from mriscan.errors import ConfigError
from mriscan.io import DEFAULT_MAX_PIXELS

__all__ = ["NIFTI_PLANES", "NIFTI_SELECTIONS", "DicomConfig", "NiftiConfig"]

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
        ``brain_fraction`` of the largest slice's; ``"middle"`` the ``middle_count`` central
        slices; ``"all"`` every slice.
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
                f"Received: {self.window_percentiles}."
            )
        if self.four_d not in ("first", "refuse"):
            raise ConfigError(f"four_d must be 'first' or 'refuse'. Received: {self.four_d!r}.")
