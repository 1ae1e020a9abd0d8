"""The identifier key stays outside the store: a shared store cannot be dictionary-attacked,
the same key re-ingests incrementally, another key is refused, old stores with their salt inside
are still read (with a warning)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from mriscan.errors import ConfigError
from mriscan.ingest import IngestConfig, ingest
from mriscan.keys import KEY_FILE_ENV, KeyMismatchError, identifier_key, key_fingerprint
from mriscan.preprocess import PreprocessConfig
from mriscan.scan import salted_hash
from mriscan.store import ImageStore
from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)
# guessable record numbers: a hospital's patient IDs run in a range
PATIENTS = {"yes": ("100017", "100342"), "no": ("101205", "101999")}
GUESSES = [str(n) for n in range(100000, 102000)]


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    for cls, ids in PATIENTS.items():
        for k, pid in enumerate(ids):
            write_dicom_series(
                root / cls / pid, phantom_volume(k + 3 * len(cls), n_slices=2, canvas=32,
                                                 tumor=cls == "yes"),
                patient=FakePatient(patient_id=pid), seed=k,
            )  # fmt: skip
    return root


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "keys" / "id.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    return path


def _attack(key: bytes, hashes: set[str]) -> set[str]:
    """Patient IDs of the dictionary whose hash under ``key`` is one of ``hashes``."""
    return {g for g in GUESSES if salted_hash(key, "patient", g) in hashes}


def _patient_hashes(store: Path) -> set[str]:
    with ImageStore.open(store) as st:
        return {k.split(":", 1)[1] for r in st.index.records for k in r.group_key.split()
                if k.startswith("patient:")}  # fmt: skip


def test_store_alone_does_not_reveal_patient_ids(scans, key_file, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(scans, store, SMALL)
    key = identifier_key()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    hashes = _patient_hashes(store)
    assert len(hashes) == 4
    # with the key, the dictionary recovers every patient: this is what must not travel
    assert _attack(key, hashes) == {p for ids in PATIENTS.values() for p in ids}
    # the store's own content: no key in any file, and no hex string in it works as one
    candidates: set[bytes] = set()
    for f in (p for p in store.rglob("*") if p.is_file()):
        data = f.read_bytes()
        assert key not in data and key.hex().encode() not in data, f
        candidates |= {bytes.fromhex(m.decode()) for m in re.findall(rb"[0-9a-f]{32,}", data)
                       if len(m) % 2 == 0}  # fmt: skip
    index = json.loads((store / "index.json").read_text())
    assert index["salt"] == "" and index["key_id"] == key_fingerprint(key)
    candidates |= {index["key_id"].encode(), bytes.fromhex(index["key_id"])}
    for cand in candidates:
        assert _attack(cand, hashes) == set()


def test_same_key_is_incremental_and_another_key_is_refused(scans, key_file, tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    first = ingest(scans, store, SMALL)
    again = ingest(scans, store, SMALL)
    assert first.n_added == 8 and again.n_added == 0 and again.already_stored == 8
    before = (store / "index.json").read_bytes()
    other = tmp_path / "other.key"
    identifier_key(other)  # another key that exists
    monkeypatch.setenv(KEY_FILE_ENV, str(other))
    with pytest.raises(KeyMismatchError) as err:
        ingest(scans, store, SMALL)
    assert KEY_FILE_ENV in str(err.value) and key_fingerprint(identifier_key()) in str(err.value)
    assert (store / "index.json").read_bytes() == before  # nothing written


def test_a_mistyped_key_file_is_refused_without_creating_a_key(scans, key_file, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """A store that records a key, and $MRISCAN_KEY_FILE naming a file that does not exist (a
    typo): the command is refused and no key file is left behind; a new store still gets one."""
    store = tmp_path / "s.zarr"
    ingest(scans, store, SMALL)
    before = (store / "index.json").read_bytes()
    typo = tmp_path / "keys" / "id.kye"
    monkeypatch.setenv(KEY_FILE_ENV, str(typo))
    with pytest.raises(KeyMismatchError, match="no key was created") as err:
        ingest(scans, store, SMALL)
    assert str(typo) in str(err.value) and KEY_FILE_ENV in str(err.value)
    assert not typo.exists() and (store / "index.json").read_bytes() == before
    ingest(scans, tmp_path / "new.zarr", SMALL)  # a store without a key: created on first use
    assert typo.exists()


def test_a_given_key_is_used_and_the_key_file_is_not_touched(scans, key_file, tmp_path):
    """``ingest(key=...)`` (evaluate's temporary store, phantom pre-training): the ids are
    hashed with that key, the store records its fingerprint, no key file is created; another
    key for that store is refused, and so is one too short to be a key."""
    key = bytes(range(32))
    store = tmp_path / "s.zarr"
    ingest(scans, store, SMALL, key=key)
    assert not key_file.exists()
    with ImageStore.open(store) as st:
        assert st.key_id == key_fingerprint(key)
    assert len(_attack(key, _patient_hashes(store))) == 4
    with pytest.raises(KeyMismatchError, match="another identifier key"):
        ingest(scans, store, SMALL, key=bytes(32))
    with pytest.raises(ConfigError, match="salt must be bytes"):
        ingest(scans, tmp_path / "t.zarr", SMALL, key=b"short")
    assert not key_file.exists() and not (tmp_path / "t.zarr").exists()


def test_store_with_its_salt_inside_is_read_and_warned_about(scans, key_file, tmp_path, caplog):
    """A store written before the key left the store: its salt keeps its ids matching."""
    store = tmp_path / "old.zarr"
    salt = os.urandom(32)
    with ImageStore.create(store, 32, SMALL.preprocess) as st:
        st.set_salt(salt)
        st.commit()
    with caplog.at_level(logging.WARNING, logger="mriscan.ingest"):
        ingest(scans, store, SMALL)
        again = ingest(scans, store, SMALL)
    assert again.n_added == 0 and again.already_stored == 8
    hashes = _patient_hashes(store)
    assert _attack(salt, hashes) == {p for ids in PATIENTS.values() for p in ids}
    warned = [r.getMessage() for r in caplog.records if "secret salt" in r.getMessage()]
    assert len(warned) == 1 and "new --store" in warned[0]


def test_a_key_file_that_holds_no_key_is_a_clear_error(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold a key"):
        identifier_key()
    with pytest.raises(ConfigError, match=KEY_FILE_ENV):
        identifier_key(key_file.parent / "missing.key", create=False)
