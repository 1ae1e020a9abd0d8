"""The identifier key: the secret that patient, study, series and volume ids are hashed with.

A hash of an identifier is only as private as its key. Patient IDs are guessable (hospital
record numbers run in ranges), so anyone who holds both a store and its key can hash every
candidate and match: the key must not travel with the store. It is therefore kept **outside**
the store, in a per-user key file:

- ``$MRISCAN_KEY_FILE`` when set, else ``<user config dir>/mriscan/identifier.key``
  (``platformdirs.user_config_dir``; ``~/.config/mriscan/identifier.key`` on Linux);
- created on first use with 32 random bytes (``secrets.token_bytes``), written as 64 hex
  characters, readable by its owner only (mode 0600, created with ``O_EXCL`` so that two
  processes starting at once end up with one key);
- the store records only the key's fingerprint (``key_fingerprint``: an HMAC of a fixed text
  under the key; it reveals nothing about the key), so a re-ingest with another key is refused
  instead of silently making ids that no longer match.

Who needs the key: whoever ingests more data into the store (the ids must match). Whoever only
trains, evaluates or predicts from the store does not. Keras-free.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from mriscan.errors import ConfigError, StoreError

__all__ = [
    "KEY_FILE_ENV",
    "KeyMismatchError",
    "identifier_key",
    "key_file_path",
    "key_fingerprint",
]

log = logging.getLogger(__name__)

#: environment variable naming the key file
KEY_FILE_ENV = "MRISCAN_KEY_FILE"
_KEY_BYTES = 32
_FINGERPRINT_TEXT = b"mriscan identifier key fingerprint v1"


class KeyMismatchError(StoreError):
    """The store's ids were made with another identifier key than the one found."""


def key_file_path() -> Path:
    """Where the identifier key is kept: ``$MRISCAN_KEY_FILE`` if set (and non-empty), else
    ``platformdirs.user_config_dir("mriscan") / "identifier.key"``."""
    env = os.environ.get(KEY_FILE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("mriscan")) / "identifier.key"


def identifier_key(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> bytes:
    """The identifier key (32 bytes) from ``path`` (default ``key_file_path()``), created there
    on first use when ``create``.

    Parameters
    ----------
    path : path-like, optional
    create : bool
        Create a missing key file (mode 0600, parent folders 0700). False: a missing file is an
        error.

    Returns
    -------
    bytes
        The key (length >= 16; 32 when created here).

    Raises
    ------
    ConfigError
        The file is missing (``create`` False), cannot be created or read, or does not hold a
        key (hex text of at least 32 characters).
    """
    p = Path(path).expanduser() if path is not None else key_file_path()
    if not p.exists():
        if not create:
            raise ConfigError(
                f"Identifier key file {p} does not exist. Point {KEY_FILE_ENV} at the key file "
                "the store was made with."
            )
        _create(p)
    try:
        text = p.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except OSError as exc:
        raise ConfigError(
            f"Identifier key file {p} cannot be read ({exc.strerror or exc})."
        ) from exc
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError(
            f"Identifier key file {p} does not hold a key (expected at least 32 hex characters). "
            f"Restore the file from a backup, or point {KEY_FILE_ENV} at the right key file."
        )
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("identifier key file %s is readable by other users: run `chmod 600 %s`", p, p)
    return key


def _create(p: Path) -> None:
    """Write a fresh key to ``p`` (0600, O_EXCL: a concurrent creator's key wins)."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the identifier key file {p} ({exc.strerror or exc}); set "
            f"{KEY_FILE_ENV} to a writable path."
        ) from exc
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_bytes(_KEY_BYTES).hex() + "\n")
    log.warning(
        "created the identifier key %s (patient ids are hashed with it; keep it, back it up, "
        "and do not share it with the stores)",
        p,
    )


def key_fingerprint(key: bytes) -> str:
    """A public name of ``key``: ``HMAC-SHA-256(key, fixed text)``, first 16 hex characters.

    It tells two keys apart without revealing either (recovering the key from it is a brute
    force over 2^256 keys)."""
    return hmac.new(key, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:16]
