"""Operators' block lists: instance blocks with Mastodon's severities, read and written as
Mastodon's domain-block CSV, and shared ban lists of pseudonyms as hashed entries (the idea of
Matrix MSC4205: an entry is the hash of what it bans, so a list names nobody in the clear).

Sans-I/O: text in, rows out; every row checked before any is kept, so a bad file imports
nothing. spec/moderation.md ("Operators") says what each severity does on a node.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections.abc import Iterable
from typing import Any

import attrs

from rxfed.crypto import b64d, b64e, sha256
from rxfed.errors import BadRequest
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.community import node_id
from rxfed.protocol.schema import array, const, fields, integer, text

#: Mastodon's export header (``/admin/export_domain_blocks``), column for column.
CSV_HEADER = ("#domain", "#severity", "#reject_media", "#reject_reports", "#public_comment", "#obfuscate")
#: ``noop`` (Mastodon's "none": only the flags apply), ``silence`` (Mastodon's "limit"), ``suspend``.
SEVERITIES = ("noop", "silence", "suspend")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
MAX_COMMENT = 1000
#: Rows in one import at most, and the largest file read.
MAX_ROWS = 100_000
MAX_FILE = 16 * 1024 * 1024

BAN_LIST = "rxfed.ban-list"
RECOMMENDATIONS = ("ban",)
MAX_REASON = 200


@attrs.frozen
class DomainBlock:
    """One instance block: ``domain`` (a node id, host or host:port; a host also covers its
    subdomains and every port) and what the operator decided about it."""

    domain: str
    severity: str
    reject_media: bool = False
    reject_reports: bool = False
    public_comment: str = ""
    obfuscate: bool = False

    def row(self) -> tuple[str, str, str, str, str, str]:
        return (self.domain, self.severity, _bool_text(self.reject_media), _bool_text(self.reject_reports),
                self.public_comment, _bool_text(self.obfuscate))

    def to_json(self) -> dict:
        return {"domain": self.domain, "severity": self.severity, "reject_media": self.reject_media,
                "reject_reports": self.reject_reports, "public_comment": self.public_comment,
                "obfuscate": self.obfuscate}


def domain_block(domain: Any, severity: Any, *, reject_media: bool = False, reject_reports: bool = False,
                 public_comment: str = "", obfuscate: bool = False, where: str = "block") -> DomainBlock:
    """A checked block: the domain a node id (lower case), the severity one of :data:`SEVERITIES`."""
    if isinstance(domain, str) and domain.startswith("*."):
        domain = domain[2:]  # a wildcard says what a host block means anyway
    node_id(domain, f"{where}: domain")
    if severity not in SEVERITIES:
        raise BadRequest(f"{where}: severity must be one of {', '.join(SEVERITIES)}", code="bad_severity")
    if not isinstance(public_comment, str) or len(public_comment) > MAX_COMMENT or any(
            ord(ch) < 32 and ch not in "\t" for ch in public_comment):
        raise BadRequest(f"{where}: public_comment must be text of at most {MAX_COMMENT} characters on one line")
    return DomainBlock(domain, severity, reject_media, reject_reports, public_comment, obfuscate)


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _bool(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{where} must be true or false, not {value!r}", code="bad_row")


def parse_csv(data: str | bytes) -> list[DomainBlock]:
    """The blocks of a Mastodon domain-block CSV (its export, or a list in that format), every
    row checked: BadRequest naming the first bad line otherwise, and then nothing is
    imported. The header is Mastodon's, with or without the ``#``; a domain listed twice is
    refused (which of the two would win is not obvious)."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE:
            raise BadRequest(f"a block list is at most {MAX_FILE} bytes", code="too_large")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadRequest("a block list is UTF-8 text", code="bad_csv") from None
    try:
        rows = list(csv.reader(io.StringIO(data, newline=""), strict=True))
    except csv.Error as exc:
        raise BadRequest(f"not CSV: {exc}", code="bad_csv") from None
    if not rows:
        raise BadRequest("an empty file: the first line is the header " + ",".join(CSV_HEADER), code="bad_header")
    header = tuple(h.strip().lstrip("#").lower() for h in rows[0])
    wanted = tuple(h.lstrip("#") for h in CSV_HEADER)
    if header[:2] != wanted[:2] or not set(header) <= set(wanted) or len(set(header)) != len(header):
        raise BadRequest(f"line 1: the header must be {','.join(CSV_HEADER)} (Mastodon's domain-block export)",
                         code="bad_header")
    if len(rows) - 1 > MAX_ROWS:
        raise BadRequest(f"at most {MAX_ROWS} blocks in one file", code="too_large")
    out: list[DomainBlock] = []
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"line {line}"
        if len(row) != len(header):
            raise BadRequest(f"{where}: {len(row)} fields, the header has {len(header)}", code="bad_row")
        cells = dict(zip(header, (c.strip() for c in row)))
        try:
            block = domain_block(
                cells["domain"].lower(), cells["severity"].lower(),
                reject_media=_bool(cells.get("reject_media", ""), f"{where}: reject_media"),
                reject_reports=_bool(cells.get("reject_reports", ""), f"{where}: reject_reports"),
                public_comment=cells.get("public_comment", ""),
                obfuscate=_bool(cells.get("obfuscate", ""), f"{where}: obfuscate"), where=where)
        except BadRequest as exc:
            raise BadRequest(exc.message if exc.message.startswith(where) else f"{where}: {exc.message}",
                             code="bad_row") from None
        if block.domain in seen:
            raise BadRequest(f"{where}: {block.domain} is listed twice", code="bad_row")
        seen.add(block.domain)
        out.append(block)
    return out


def to_csv(blocks: Iterable[DomainBlock]) -> str:
    """Mastodon's domain-block CSV of ``blocks`` (header first, one row each, by domain)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for block in sorted(blocks, key=lambda b: b.domain):
        writer.writerow(block.row())
    return buffer.getvalue()


def candidates(node: str) -> list[str]:
    """The blocks that may apply to ``node``, most specific first: the node id itself, its
    host without the port, and each parent domain of the host (a block of ``example.org``
    covers ``a.example.org:8443``; trailing dots are dropped, ``a.example.org.`` is the same
    host). An IP address covers only itself."""
    host, _, port = node.rpartition(":") if not node.endswith("]") and ":" in node else (node, "", "")
    # ``host.`` is the absolute form of ``host``: the same name to DNS and TLS, and a valid
    # node id, so a node renaming itself so is covered by the blocks of the host
    host = host.rstrip(".")
    out = [f"{host}:{port}"] if port else []
    out.append(host)
    literal = host[1:-1] if host.startswith("[") else host
    try:
        ipaddress.ip_address(literal)
        return out
    except ValueError:
        pass
    labels = host.split(".")
    out.extend(".".join(labels[i:]) for i in range(1, len(labels)))
    return out


@attrs.frozen
class Effective:
    """What the blocks that apply to one node add up to: the most severe severity and any
    flag one of them sets (None: no block applies)."""

    severity: str
    reject_media: bool
    reject_reports: bool
    domains: tuple[str, ...]


def effective(blocks: Iterable[DomainBlock]) -> Effective | None:
    found = list(blocks)
    if not found:
        return None
    worst = max(found, key=lambda b: _RANK[b.severity])
    return Effective(worst.severity, any(b.reject_media for b in found), any(b.reject_reports for b in found),
                     tuple(b.domain for b in found))


# -- hashed ban lists (MSC4205) -------------------------------------------------------------------


def ban_hash(pseudonym: str | bytes) -> str:
    """The entry that bans a pseudonym: base64url of SHA-256 over its base64url text (a
    member key as ``community read --json`` shows it). The list holds only this: whoever
    meets the pseudonym can check it against the list, nobody can read a name off the list."""
    try:
        key = pseudonym if isinstance(pseudonym, bytes) else b64d(pseudonym, length=32)
    except ValueError:
        raise BadRequest("a pseudonym is a member key: 43 characters of base64url", code="bad_pseudonym") from None
    if len(key) != 32:
        raise BadRequest("a pseudonym is a 32-byte member key", code="bad_pseudonym")
    return b64e(sha256(b64e(key).encode()))


@attrs.frozen
class BanEntry:
    hash: str
    reason: str
    recommendation: str = "ban"

    def to_json(self) -> dict:
        return {"hashes": {"sha256": self.hash}, "recommendation": self.recommendation, "reason": self.reason}


def ban_entry(pseudonym: str, reason: str) -> BanEntry:
    text(MAX_REASON)(reason, "reason")
    return BanEntry(ban_hash(pseudonym), reason)


def parse_ban_list(data: str | bytes) -> list[BanEntry]:
    """The entries of a ban list file (``to_ban_list``), all checked, or BadRequest (nothing
    imported). An entry must be a hash: a list that carries a pseudonym in the clear is
    refused, so a list can never name anybody by accident."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_FILE:
        raise BadRequest(f"a ban list is at most {MAX_FILE} bytes", code="too_large")
    try:
        doc = loads(data)
    except (ValueError, BadRequest):
        raise BadRequest("a ban list is a JSON document", code="bad_list") from None

    def entry(value: Any, where: str) -> BanEntry:
        f = fields(value, where, {"hashes": lambda v, w: fields(v, w, {"sha256": _hash}),
                                  "recommendation": text(16, "|".join(RECOMMENDATIONS)),
                                  "reason": text(MAX_REASON)})
        return BanEntry(f["hashes"]["sha256"], f["reason"], f["recommendation"])

    f = fields(doc, "ban list", {"type": const(BAN_LIST), "version": integer(1, 1),
                                 "entries": array(entry, MAX_ROWS)})
    hashes = [e.hash for e in f["entries"]]
    if len(set(hashes)) != len(hashes):
        raise BadRequest("a hash is listed twice", code="bad_list")
    return f["entries"]


def _hash(value: Any, where: str) -> str:
    try:
        b64d(value, length=32)
    except (ValueError, TypeError):
        raise BadRequest(f"{where} must be the base64url SHA-256 of a pseudonym", code="bad_list") from None
    return value


def to_ban_list(entries: Iterable[BanEntry]) -> bytes:
    """The shareable file: hashes, recommendations and reasons, no pseudonym."""
    return canonical({"type": BAN_LIST, "version": 1,
                      "entries": [e.to_json() for e in sorted(entries, key=lambda e: e.hash)]})
