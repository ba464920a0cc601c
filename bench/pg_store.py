#!/usr/bin/env python3
"""The PostgreSQL store alone (no HTTP): what a request's shared guards cost, in-process.

Makes a fresh database through ``--pg-dsn``, opens the store (``max_connections`` 10), then
runs ``--n`` calls of ``Store.spend`` (a request's nonce and its signer's budget, what each
request costs among several workers) with ``--conc`` callers at once, then ``--n`` record
commits by 16 patients at once (one writer each), and prints per phase calls per second,
this process's CPU time per call (the node's share of the work) and the statements sent
per call (each one round trip to the server; counted on the connections). The last line
is one JSON object.

    python bench/pg_store.py --pg-dsn postgresql://postgres@127.0.0.1:5432/postgres --n 2000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

import asyncpg

from rxfed.store import NewPatient, Nonce, Quota, Recovery, StoredRecord
from rxfed.store.operations import Store
from rxfed.store.postgresql import PostgreSQLBackend


def _patient(n: int) -> NewPatient:
    b = bytes([n]) * 32
    return NewPatient(f"{n:032x}", b, f"d{n:031x}", b[:31] + b"d", b"cert", b"keyring",
                      Recovery(b[:31] + b"r", b"statement", b"root-bundle", b"recovery-keyring"), b"identity-1")


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


class Counting:
    """Counts the statements sent on every pooled connection (each is one round trip)."""

    def __init__(self):
        self.n = 0

    def install(self):
        counter = self
        for name in ("fetchrow", "fetch", "execute", "executemany", "fetchval"):
            original = getattr(asyncpg.connection.Connection, name)

            def wrapped(self, *a, _o=original, **k):
                counter.n += 1
                return _o(self, *a, **k)

            setattr(asyncpg.connection.Connection, name, wrapped)


async def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-dsn", default=os.environ.get("RXFED_TEST_PG_DSN"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=16)
    args = ap.parse_args(argv)
    if not args.pg_dsn:
        ap.exit(2, "pg_store.py needs --pg-dsn (or RXFED_TEST_PG_DSN)\n")
    name = f"rxfed_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(args.pg_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    counting = Counting()
    out = {"n": args.n, "conc": args.conc}
    try:
        store = Store(PostgreSQLBackend(_with_database(args.pg_dsn, name)))
        await store.open()
        counting.install()
        try:
            sem = asyncio.Semaphore(args.conc)

            async def spend(i):
                async with sem:
                    await store.spend(Nonce(os.urandom(16), 2**40), b"k%d" % (i % 64), now=time.time(), rate=1e6,
                                      burst=10**9)

            before, t, cpu = counting.n, time.perf_counter(), time.process_time()
            await asyncio.gather(*(spend(i) for i in range(args.n)))
            wall = time.perf_counter() - t
            out["spend_per_s"] = round(args.n / wall, 1)
            out["spend_cpu_ms"] = round((time.process_time() - cpu) * 1000 / args.n, 3)
            out["spend_statements"] = round((counting.n - before) / args.n, 2)

            patients = [_patient(i) for i in range(16)]
            for p in patients:
                await store.register_patient(p, invite_hash=None, nonce=Nonce(os.urandom(16), 2**40), now=1000)
            counters = {p.patient: 0 for p in patients}

            async def writer(p, count):
                for _ in range(count):
                    counters[p.patient] += 1
                    c = counters[p.patient]
                    await store.commit(p.patient, signer=p.device, counter=c, manifest=b"m%d" % c,
                                       puts=[StoredRecord(os.urandom(16).hex(), 1, os.urandom(300))], deletes=[],
                                       quota=Quota(10**9, 10**12), nonce=Nonce(os.urandom(16), 2**40), epoch=1)

            per = max(1, args.n // len(patients))
            before, t, cpu = counting.n, time.perf_counter(), time.process_time()
            await asyncio.gather(*(writer(p, per) for p in patients))
            done = per * len(patients)
            out["commit_per_s"] = round(done / (time.perf_counter() - t), 1)
            out["commit_cpu_ms"] = round((time.process_time() - cpu) * 1000 / done, 3)
            out["commit_statements"] = round((counting.n - before) / done, 2)
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
