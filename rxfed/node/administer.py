"""What an operator does to a node's accounts and communities, and the log that keeps it.

Each action writes the store (a second process may do so while the node runs, as ``rxfed
node peers`` does) together with its line in the operator log, in one transaction, then
tells the running node over its control socket to drop what it cached (a node that cannot
be told reads suspensions again within seconds). The operator log names the system user
who ran the command; ``rxfed node log`` shows it.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
from pathlib import Path

from rxfed.errors import BadRequest, Conflict, NotFound
from rxfed.node.config import NodeConfig
from rxfed.protocol.canonical import canonical
from rxfed.store import OperatorEntry

_PATIENT = re.compile(r"[0-9a-f]{32}")
MAX_REASON = 500
#: The node's statement kept as an operator-erased account's tombstone (a patient's own
#: erasure keeps the tombstone their device signed).
OPERATOR_TOMBSTONE = "rxfed.operator-erasure"


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _entry(action: str, subject: str, **detail) -> OperatorEntry:
    return OperatorEntry(int(time.time()), action, subject, _operator(),
                         json.dumps(detail, sort_keys=True, ensure_ascii=False))


def _run(data_dir: str | Path, action):
    from rxfed.node.admin import _with_store

    config = NodeConfig.load(data_dir)
    return config, asyncio.run(_with_store(config, action))


def _tell_node(config: NodeConfig, **changed: list[str]) -> bool:
    """Tell the running node what changed; False when no node runs (or it cannot be told)."""
    from rxfed.node import control

    try:
        return control.ask(config.data_dir, "POST", "/reload", changed) is not None
    except control.NodeUnreachable:
        return False


def _patient(value: str) -> str:
    if not _PATIENT.fullmatch(value):
        raise BadRequest(f"{value!r} is not an account id (32 lower-case hex characters, as "
                         "'rxfed node accounts DATA_DIR list' shows them)", code="bad_account")
    return value


def _reason(value: str | None) -> str | None:
    if value is not None and (len(value) > MAX_REASON or any(ord(c) < 32 for c in value)):
        raise BadRequest(f"--reason must be one line of at most {MAX_REASON} characters", code="bad_reason")
    return value


# -- accounts ------------------------------------------------------------------------------------


def accounts_list(data_dir: str | Path) -> list[dict]:
    now = int(time.time())
    _config, rows = _run(data_dir, lambda store: store.accounts(now))
    return [{"account": a.patient, "created": a.created, "records": a.records, "bytes": a.bytes,
             "devices": a.devices, "live_grants": a.live_grants, "suspended": a.suspended,
             "suspended_reason": a.suspended_reason} for a in rows]


def suspend(data_dir: str | Path, patient: str, *, reason: str | None) -> dict:
    """Suspend an account: its signed requests get 403 ``account_suspended``, except what
    lets the patient take their data and go (reads, consent revocation, leaving
    communities, deleting records, erasure)."""
    patient, reason = _patient(patient), _reason(reason)
    now = int(time.time())
    config, changed = _run(data_dir, lambda store: store.set_suspended(
        patient, since=now, reason=reason, log=_entry("account.suspend", patient, reason=reason)))
    told = _tell_node(config, accounts=[patient]) if changed else False
    return {"account": patient, "suspended": True, "changed": changed, "node_told": told}


def unsuspend(data_dir: str | Path, patient: str) -> dict:
    patient = _patient(patient)
    config, changed = _run(data_dir, lambda store: store.set_suspended(
        patient, since=None, reason=None, log=_entry("account.unsuspend", patient)))
    told = _tell_node(config, accounts=[patient]) if changed else False
    return {"account": patient, "suspended": False, "changed": changed, "node_told": told}


def erase(data_dir: str | Path, patient: str, *, reason: str | None, force: bool = False) -> dict:
    """Erase an account on the operator's word: every record, device and key, as the
    patient's own erasure does, with a tombstone stating the node erased it.

    Only the patient's devices can sign the consent revocations other nodes act on, so an
    account with live grants is refused unless ``force``: then the nodes that received its
    signals keep them until each grant ends (they are told nothing). The node cannot tell
    which community seats were the patient's (it keeps no such link); they stay until the
    community's admin removes them."""
    patient, reason = _patient(patient), _reason(reason)
    now = int(time.time())

    async def action(store):
        found = [a for a in await store.accounts(now) if a.patient == patient]
        if not found:
            erased = await store.tombstone(patient) is not None
            raise NotFound(f"no account {patient} on this node" + (" (it was erased)" if erased else ""),
                           code="unknown_account")
        live = found[0].live_grants
        if live and not force:
            raise Conflict(f"the account has {live} live consent grant(s): only the patient's devices can revoke "
                           "them, so the nodes that received its signals would keep them until each grant ends; "
                           "ask the patient to erase the account themselves ('rxfed patient delete-account'), or "
                           "pass --force", code="live_grants")
        tombstone = canonical({"type": OPERATOR_TOMBSTONE, "patient": patient, "deleted": now})
        await store.operator_erase(patient, tombstone=tombstone, now=now,
                                   log=_entry("account.erase", patient, reason=reason, live_grants=live))
        return live

    config, live = _run(data_dir, action)
    told = _tell_node(config, accounts=[patient])
    return {"account": patient, "erased": True, "live_grants_left": live, "node_told": told}


# -- communities ---------------------------------------------------------------------------------


def _fold(events) -> tuple[dict | None, int]:
    """(the state's admin summary, joined members) of a community's stored events."""
    from rxfed.protocol import community as pc
    from rxfed.protocol.canonical import loads

    try:
        state = pc.CommunityState.from_events([(e.seq, loads(e.event)) for e in events])
    except Exception:  # noqa: BLE001 - a mirror with gaps folds no state; say so, do not fail
        return None, 0
    admin_joined = state.status(state.meta.admin) is pc.MemberStatus.JOINED if state.meta else False
    return {"admin_left": not admin_joined}, len(state.joined())


def communities_list(data_dir: str | Path) -> list[dict]:
    """Every community this node hosts or keeps a copy of, with counts; a hosted one whose
    admin left is flagged (``admin_left``): nobody can approve or remove members any more,
    and only the operator can remove it."""
    from rxfed.node.admin import _with_store

    config = NodeConfig.load(data_dir)

    async def action(store):
        out = []
        for row in await store.communities():
            hosted = row.host == config.node_id
            events, after = [], 0
            if hosted:
                while True:
                    page = await store.community_events(row.id, row.host, after=after, limit=1000)
                    events += page
                    if len(page) < 1000:
                        break
                    after = page[-1].seq
            summary, members = _fold(events) if hosted else (None, None)
            out.append({"community": f"{row.id}@{row.host}", "hosted": hosted, "name": row.name if hosted else None,
                        "condition": row.condition if hosted else None, "public": row.public, "events": row.seq,
                        "created": row.created, "members": members,
                        "admin_left": summary["admin_left"] if summary else None})
        return out

    return asyncio.run(_with_store(config, action))


def _address(value: str) -> tuple[str, str]:
    from rxfed.errors import RxfedError
    from rxfed.protocol import community as pc

    try:
        address = pc.CommunityAddress.parse(value, "COMMUNITY")
    except RxfedError:
        raise BadRequest(f"{value!r} is not a community address (ID@HOST, as 'rxfed node communities DATA_DIR "
                         "list' shows them)", code="bad_community") from None
    return address.id, address.host


def remove_community(data_dir: str | Path, address: str, *, reason: str | None) -> dict:
    """Remove this node's copy of a community: hosted, it leaves the directory and takes no
    more events (its members' nodes keep their copies of what happened); a copy of one
    hosted elsewhere is fetched again only if the host sends its history again."""
    community_id, host = _address(address)
    reason = _reason(reason)

    async def action(store):
        return await store.remove_community(community_id, host, log=_entry(
            "community.remove", f"{community_id}@{host}", reason=reason))

    config, removed = _run(data_dir, action)
    if not removed:
        raise NotFound(f"no community {community_id}@{host} on this node", code="unknown_community")
    told = _tell_node(config, communities=[community_id])
    return {"community": f"{community_id}@{host}", "removed": True, "node_told": told}


# -- plugins and the log -------------------------------------------------------------------------


def plugins(data_dir: str | Path) -> dict:
    """Plugin health from the running node, or as it last recorded it."""
    from rxfed.node.admin import node_status

    status = node_status(data_dir)
    return {"running": status["running"], "plugins": status["plugins"], "reported_at": status["plugins_reported_at"]}


def operator_log(data_dir: str | Path, limit: int) -> list[dict]:
    _config, rows = _run(data_dir, lambda store: store.operator_log(limit))
    return [{"seq": e.seq, "time": e.time, "action": e.action, "subject": e.subject, "by": e.by,
             "detail": json.loads(e.detail)} for e in rows]


def matching_sessions(data_dir: str | Path, limit: int) -> list[dict]:
    """The newest ``limit`` matching sessions, newest first (``rxfed node matching DATA_DIR
    sessions``): peer, role, times, outcome, set sizes and how many categories were common;
    the categories themselves are never in the log."""
    _config, rows = _run(data_dir, lambda store: store.matching_sessions(limit))
    return [s.to_json() for s in rows]
# -- block lists (spec/moderation.md, "Operators") ---------------------------------------------
# The running node reads the lists from the store on every check, so it needs no telling.


def _read_file(path: str) -> bytes:
    import sys

    from rxfed.protocol.blocklists import MAX_FILE

    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_FILE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}", code="unreadable") from None
    return data


def blocks_list(data_dir: str | Path) -> list[dict]:
    _config, blocks = _run(data_dir, lambda store: store.domain_blocks())
    return [b.to_json() for b in blocks]


def block_domain(data_dir: str | Path, domain: str, severity: str, *, reject_media: bool = False,
                 reject_reports: bool = False, comment: str = "", obfuscate: bool = False) -> dict:
    from rxfed.protocol import blocklists as pbl

    block = pbl.domain_block(domain, severity, reject_media=reject_media, reject_reports=reject_reports,
                             public_comment=comment, obfuscate=obfuscate, where="--")
    _run(data_dir, lambda store: store.put_domain_blocks(
        [block], now=int(time.time()), log=_entry(f"domain.{severity}", block.domain, **block.to_json())))
    return block.to_json()


def unblock_domain(data_dir: str | Path, domain: str) -> dict:
    _config, found = _run(data_dir, lambda store: store.delete_domain_block(domain, log=_entry("domain.unblock",
                                                                                                domain)))
    if not found:
        raise NotFound(f"no block of {domain} (blocks are by domain, as 'node peers DATA_DIR list' shows them)",
                       code="not_blocked")
    return {"domain": domain, "unblocked": True}


def import_blocks(data_dir: str | Path, path: str) -> dict:
    """Import a Mastodon domain-block CSV: every row checked first, then all of them in one
    transaction (a bad row imports nothing). Blocks already kept for a domain are replaced."""
    from rxfed.protocol import blocklists as pbl

    blocks = pbl.parse_csv(_read_file(path))
    _run(data_dir, lambda store: store.put_domain_blocks(
        blocks, now=int(time.time()), log=_entry("domain.import", f"{len(blocks)} blocks", file=str(path))))
    return {"imported": len(blocks), "blocks": [b.to_json() for b in blocks]}


def export_blocks(data_dir: str | Path) -> str:
    from rxfed.protocol import blocklists as pbl

    _config, blocks = _run(data_dir, lambda store: store.domain_blocks())
    return pbl.to_csv(blocks)


def bans_list(data_dir: str | Path) -> list[dict]:
    _config, entries = _run(data_dir, lambda store: store.ban_entries())
    return [e.to_json() for e in entries]


def ban(data_dir: str | Path, pseudonym: str, *, reason: str) -> dict:
    """Ban a pseudonym: the node keeps only its hash (and the operator log only the hash)."""
    from rxfed.protocol import blocklists as pbl

    entry = pbl.ban_entry(pseudonym, _reason(reason) or "")
    _run(data_dir, lambda store: store.put_ban_entries([entry], now=int(time.time()),
                                                       log=_entry("pseudonym.ban", entry.hash, reason=reason)))
    return entry.to_json()


def unban(data_dir: str | Path, value: str) -> dict:
    """Lift a ban, named by its hash, or by the pseudonym itself."""
    from rxfed.protocol import blocklists as pbl

    def action(store):
        async def go():
            if await store.delete_ban_entry(value, log=_entry("pseudonym.unban", value)):
                return value
            try:
                hashed = pbl.ban_hash(value)
            except BadRequest:
                return None
            return hashed if await store.delete_ban_entry(hashed, log=_entry("pseudonym.unban", hashed)) else None
        return go()

    _config, hashed = _run(data_dir, action)
    if hashed is None:
        raise NotFound("no such ban (name it by its hash, as 'node bans DATA_DIR list' shows it, or by the "
                       "pseudonym)", code="not_banned")
    return {"hash": hashed, "unbanned": True}


def import_bans(data_dir: str | Path, path: str) -> dict:
    from rxfed.protocol import blocklists as pbl

    entries = pbl.parse_ban_list(_read_file(path))
    _run(data_dir, lambda store: store.put_ban_entries(
        entries, now=int(time.time()), log=_entry("pseudonym.import", f"{len(entries)} bans", file=str(path))))
    return {"imported": len(entries)}


def export_bans(data_dir: str | Path) -> bytes:
    from rxfed.protocol import blocklists as pbl

    _config, entries = _run(data_dir, lambda store: store.ban_entries())
    return pbl.to_ban_list(entries)


def forwarded_reports(data_dir: str | Path) -> list[dict]:
    """Reports communities' moderators forwarded about messages of this node's members:
    each verified on arrival (host's stamp, sender's signature, franking, a moderator's
    signature). The member appears under the community pseudonym only; no reporter."""
    _config, rows = _run(data_dir, lambda store: store.forwarded_reports())
    return [{"community": f"{r['community_id']}@{r['host']}", "seq": r["seq"], "sender": r["sender"],
             "category": r["category"], "text": r["text"], "sent": r["sent"], "moderator": r["moderator"],
             "from": r["origin"], "received": r["received"]} for r in rows]
