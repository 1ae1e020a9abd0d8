"""The exception hierarchy: every error mriscan raises on purpose derives from ``MriscanError``."""

from __future__ import annotations

import os

__all__ = [
    "BadFilesError",
    "ConfigError",
    "CorruptImageError",
    "EmptyDatasetError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InitWeightsError",
    "ManifestError",
    "MissingCodecError",
    "MixedSeriesError",
    "MriscanError",
    "ResumeError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreNotFoundError",
    "TrainingDivergedError",
    "UnreadableFileError",
    "UnsupportedFormatError",
]


class MriscanError(Exception):
    """Base class of all mriscan errors."""


class ConfigError(MriscanError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class ImageDecodeError(MriscanError, ValueError):
    """An image file could not be turned into pixels; ``path`` names the file."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        # the message names the file in valid UTF-8 (see mriscan.io.display_path)
        shown = os.fsencode(self.path).decode("utf-8", "backslashreplace")
        super().__init__(f"{shown}: {reason}")


class CorruptImageError(ImageDecodeError):
    """The file is empty, truncated or damaged."""


class UnsupportedFormatError(ImageDecodeError):
    """The file is not a JPEG or PNG image (or not an image at all)."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the decompression-bomb cap allows."""


class UnreadableFileError(ImageDecodeError, OSError):
    """The file cannot be opened or read (missing, a directory, no permission)."""


class MissingCodecError(ImageDecodeError):
    """A DICOM file's pixel data are compressed with a codec no installed plugin can decode.

    ``packages`` names what to ``pip install`` to read it.
    """

    def __init__(self, path: object, reason: str, packages: tuple[str, ...] = ()) -> None:
        self.packages = tuple(packages)
        super().__init__(path, reason)


class MixedSeriesError(MriscanError, ValueError):
    """The slices of one DICOM series (or one folder of slices) disagree in size.

    The message names no file (a path below a scanner folder may name the patient);
    ``files``, when the raiser knows them, maps each size ``(rows, columns)`` to the paths of
    the slices of that size (most common size first), for a caller that must find them.
    """

    def __init__(self, message: str, files: dict[tuple[int, int], list] | None = None) -> None:
        self.files = dict(files or {})
        super().__init__(message)


class ManifestError(MriscanError, ValueError):
    """A CSV manifest (``path,label[,group]``) is missing, malformed or names missing files."""


class EmptyDatasetError(MriscanError, ValueError):
    """A data folder holds no usable class folders or images."""


class StoreError(MriscanError):
    """Base class of image-store errors."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No committed store exists at the given path."""


class StoreLockedError(StoreError, RuntimeError):
    """Another writer holds the store's write lock."""


class StoreCorruptError(StoreError, ValueError):
    """The store's arrays and index disagree, or a chunk cannot be read."""


class TrainingDivergedError(MriscanError, ArithmeticError):
    """Training produced non-finite losses or predictions; no model was published."""


class InitWeightsError(MriscanError, ValueError):
    """A starting-weights file (``--init-weights``) is missing, damaged, or fits no layer."""


class ResumeError(MriscanError):
    """An output folder holds an unfinished run that this run may not resume."""


class BadFilesError(MriscanError, ValueError):
    """``strict`` ingest found bad files; nothing was committed."""
