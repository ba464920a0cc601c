"""The SQLite backend against the store contract, plus what only SQLite does."""

from __future__ import annotations

import sqlite3

import pytest

from contract import StoreContract, commit, nonce, register
from rxfed.store import StoredRecord
from rxfed.store.sqlite import MIGRATIONS, SQLiteStore


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    yield s
    await s.close()


class TestSQLiteContract(StoreContract):
    pass


async def test_pragmas_and_schema(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_erase_leaves_no_ciphertext_in_database_files(store, tmp_path):
    p = await register(store, 1)
    blob = b"CIPHERTEXT-" + bytes(range(256)) * 8
    await commit(store, p, 1, [StoredRecord("a" * 32, 1, blob)])

    def files_contain(needle: bytes) -> bool:
        return any(needle in f.read_bytes() for f in tmp_path.iterdir() if f.is_file())

    assert files_contain(blob[:64])  # the scan does see stored bytes
    await store.erase_patient(p.patient, signer=p.device, tombstone=b"t", nonce=nonce(), now=1)
    assert not files_contain(blob[:64])
    assert not files_contain(p.device_sign_key)


async def test_reopen_keeps_data_and_nonces(tmp_path):
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    p = await register(s, 1)
    await commit(s, p, 1, [StoredRecord("a" * 32, 1, b"x")])
    await s.close()
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    try:
        assert (await s.account(p.patient)).counter == 1
        assert len(await s.load_nonces(now=0)) == 2
    finally:
        await s.close()


async def test_newer_schema_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "rxfed.db")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SQLiteStore(tmp_path / "rxfed.db").open()
