"""The device's copy of the vault it last verified: sealed records only, never plaintext.

If the node is later restored from a backup, this copy is what tells the patient which
record versions the node lost and what this device can upload again (spec/crypto.md
section 11). It holds the same ciphertext the node holds, in ``vault-cache.jsonl`` (mode
0600) in the profile: one JSON line per record written (``{"id", "version", "blob"}``) or
deleted (``{"id", "deleted": true}``), rewritten whole from every verified vault that
another device changed. Which manifest counter it reflects is pinned in ``state.json``
(``cached``), so a copy that missed a write is known to be incomplete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from rxfed.crypto import b64d, b64e

FILE = "vault-cache.jsonl"


class VaultCache:
    def __init__(self, profile_dir: Path):
        self.path = Path(profile_dir) / FILE

    def rewrite(self, blobs: dict[str, tuple[int, bytes]]) -> None:
        """Replace the copy with ``blobs`` (record id to (version, sealed blob)), verified."""
        from rxfed.client.profile import write_private

        lines = [json.dumps({"id": rid, "version": v, "blob": b64e(blob)}) for rid, (v, blob) in sorted(blobs.items())]
        write_private(self.path, ("\n".join(lines) + "\n" if lines else "").encode(), durable=False)

    def append(self, puts: Iterable[tuple[str, int, bytes]], deletes: Iterable[str] = ()) -> None:
        """Add one commit the node accepted (puts as (id, version, sealed blob))."""
        self._append([{"id": rid, "version": v, "blob": b64e(blob)} for rid, v, blob in puts], deletes)

    def append_encoded(self, puts: list[dict], deletes: Iterable[str] = ()) -> None:
        """:meth:`append` for the puts of a commit body (``{"id", "version", "blob"}``, the
        blob already base64url; a device adds one per record written)."""
        self._append(puts, deletes)

    def _append(self, puts: list[dict], deletes: Iterable[str]) -> None:
        # each line formatted as it is, with no JSON encoder: ids are hex, blobs base64url
        lines = [f'{{"id": "{p["id"]}", "version": {int(p["version"])}, "blob": "{p["blob"]}"}}' for p in puts]
        lines += [json.dumps({"id": rid, "deleted": True}) for rid in deletes]
        if not lines:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)

    def load(self) -> dict[str, tuple[int, bytes]]:
        """Record id to (version, sealed blob); lines that do not parse (a write cut short)
        are skipped."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        out: dict[str, tuple[int, bytes]] = {}
        for line in text.splitlines():
            try:
                doc = json.loads(line)
                if doc.get("deleted"):
                    out.pop(doc["id"], None)
                else:
                    out[str(doc["id"])] = (int(doc["version"]), b64d(doc["blob"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return out
