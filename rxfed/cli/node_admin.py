"""``rxfed node accounts|communities|plugins|log|matching``: administer a node's accounts and
communities (while it runs, too), see plugin health, what operators did and the node's
matching sessions."""

from __future__ import annotations

import argparse
import time

from rxfed.cli import Output, UsageError, json_flag, write_export


def add_parsers(nsub) -> None:
    accounts = nsub.add_parser("accounts", help="list, suspend, unsuspend or erase accounts")
    accounts.add_argument("data_dir", metavar="DATA_DIR")
    accounts.add_argument("account_action", metavar="ACTION", choices=("list", "suspend", "unsuspend", "erase"),
                          help="list | suspend ACCOUNT | unsuspend ACCOUNT | erase ACCOUNT")
    accounts.add_argument("account", metavar="ACCOUNT", nargs="?", help="the account id (as list shows it)")
    accounts.add_argument("--reason", help="with suspend and erase: why, for the operator log")
    accounts.add_argument("--force", action="store_true",
                          help="with erase: erase an account that has live consent grants")
    json_flag(accounts)
    accounts.set_defaults(func=cmd_accounts)

    communities = nsub.add_parser("communities", help="list communities, or remove one")
    communities.add_argument("data_dir", metavar="DATA_DIR")
    communities.add_argument("community_action", metavar="ACTION", choices=("list", "remove"),
                             help="list | remove COMMUNITY")
    communities.add_argument("community", metavar="COMMUNITY", nargs="?", help="ID@HOST (as list shows it)")
    communities.add_argument("--reason", help="with remove: why, for the operator log")
    json_flag(communities)
    communities.set_defaults(func=cmd_communities)

    bans = nsub.add_parser("bans", help="the hashed ban list of pseudonyms: list, add, remove, import, export")
    bans.add_argument("data_dir", metavar="DATA_DIR")
    bans.add_argument("ban_action", metavar="ACTION", choices=("list", "add", "remove", "import", "export"),
                      help="list | add PSEUDONYM (kept as its hash) | remove HASH-OR-PSEUDONYM | import FILE (a "
                           "shared list; - for stdin) | export [FILE] (stdout by default)")
    bans.add_argument("value", metavar="ARG", nargs="?")
    bans.add_argument("--reason", help="with add: why (kept, and shared by export)")
    json_flag(bans)
    bans.set_defaults(func=cmd_bans)

    reports = nsub.add_parser("reports", help="reports communities' moderators forwarded about your members' "
                                              "messages (verified; no reporter named)")
    reports.add_argument("data_dir", metavar="DATA_DIR")
    json_flag(reports)
    reports.set_defaults(func=cmd_reports)

    plugins = nsub.add_parser("plugins", help="plugin health: calls, failures, disabled plugins")
    plugins.add_argument("data_dir", metavar="DATA_DIR")
    json_flag(plugins)
    plugins.set_defaults(func=cmd_plugins)

    log = nsub.add_parser("log", help="the operator log: what operators did to accounts and communities")
    log.add_argument("data_dir", metavar="DATA_DIR")
    log.add_argument("--limit", type=int, default=100, help="the newest LIMIT entries (default 100)")
    json_flag(log)
    log.set_defaults(func=cmd_log)

    matching = nsub.add_parser("matching", help="cross-node matching: the private set intersection sessions")
    matching.add_argument("data_dir", metavar="DATA_DIR")
    matching.add_argument("matching_action", metavar="ACTION", choices=("sessions",), help="sessions")
    matching.add_argument("--limit", type=int, default=100, help="the newest LIMIT sessions (default 100)")
    json_flag(matching)
    matching.set_defaults(func=cmd_matching)


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z" if ts else "-"


def _told(doc: dict) -> str:
    return "" if doc["node_told"] else " (no running node answered; a node that runs picks it up within seconds)"


def cmd_accounts(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    action = args.account_action
    if action == "list":
        if args.account or args.reason or args.force:
            raise UsageError("'accounts list' takes no ACCOUNT, --reason or --force")
        rows = administer.accounts_list(args.data_dir)
        Output(args.json).result({"accounts": rows}, lambda: [
            f"{r['account']}\tsince {_when(r['created'])}\t{r['records']} records\t{r['devices']} devices\t"
            f"{r['live_grants']} live grants"
            + (f"\tSUSPENDED {_when(r['suspended'])}" + (f": {r['suspended_reason']}" if r["suspended_reason"] else "")
               if r["suspended"] else "") for r in rows] or ["no accounts"])
        return
    if not args.account:
        raise UsageError(f"'accounts {action}' needs an ACCOUNT")
    if args.force and action != "erase":
        raise UsageError("--force goes with erase")
    if args.reason is not None and action == "unsuspend":
        raise UsageError("--reason goes with suspend and erase")
    if action == "suspend":
        doc = administer.suspend(args.data_dir, args.account, reason=args.reason)
        line = f"{args.account} is suspended" if doc["changed"] else f"{args.account} was already suspended"
    elif action == "unsuspend":
        doc = administer.unsuspend(args.data_dir, args.account)
        line = f"{args.account} is no longer suspended" if doc["changed"] else f"{args.account} was not suspended"
    else:
        doc = administer.erase(args.data_dir, args.account, reason=args.reason, force=args.force)
        line = f"{args.account} is erased" + (
            f"; {doc['live_grants_left']} live grant(s) stay with their recipients until they end"
            if doc["live_grants_left"] else "")
    Output(args.json).result(doc, [line + (_told(doc) if doc.get("changed", True) else "")])


def cmd_communities(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    if args.community_action == "list":
        if args.community or args.reason:
            raise UsageError("'communities list' takes no COMMUNITY or --reason")
        rows = administer.communities_list(args.data_dir)

        def line(r: dict) -> str:
            if not r["hosted"]:
                return f"{r['community']}\tcopy of a community hosted elsewhere\t{r['events']} events"
            return (f"{r['community']}\t{r['name']!r}{' ' + r['condition'] if r['condition'] else ''}\t"
                    f"{r['members']} members\t{r['events']} events"
                    + ("\tADMIN LEFT (only the operator can remove it)" if r["admin_left"] else ""))

        Output(args.json).result({"communities": rows}, lambda: [line(r) for r in rows] or ["no communities"])
        return
    if not args.community:
        raise UsageError("'communities remove' needs a COMMUNITY (ID@HOST)")
    doc = administer.remove_community(args.data_dir, args.community, reason=args.reason)
    Output(args.json).result(doc, [f"{doc['community']} is removed" + _told(doc)])


def plugin_health(p: dict) -> str:
    """One plugin's health in one line (``node plugins``, ``node status``)."""
    state = "enabled" if p["enabled"] else f"DISABLED ({p['disabled_reason']})"
    return (f"{p['name']}: {state}, {p['calls']} calls, {p['total_failures']} failures"
            + (f", last error: {p['last_error']}" if p["last_error"] else ""))


def cmd_plugins(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    doc = administer.plugins(args.data_dir)

    def lines() -> list[str]:
        if doc["plugins"] is None:
            return ["plugins: not reported yet (the node reports them while it runs)"]
        out = [] if doc["running"] else [f"the node is not running; as it last reported ({_when(doc['reported_at'])}):"]
        return out + [plugin_health(p) for p in doc["plugins"]]

    Output(args.json).result(doc, lines)


def cmd_log(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    rows = administer.operator_log(args.data_dir, args.limit)
    Output(args.json).result({"entries": rows}, lambda: [
        f"{_when(e['time'])}\t{e['by']}\t{e['action']}\t{e['subject']}"
        + "".join(f"\t{k}: {v}" for k, v in sorted(e["detail"].items()) if v is not None) for e in rows]
        or ["the operator log is empty"])


def cmd_matching(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    rows = administer.matching_sessions(args.data_dir, args.limit)

    def line(s: dict) -> str:
        sizes = (f"offered {s['own_size']} (sent as {s['own_padded']}), peer sent {s['peer_padded']}"
                 if s["own_padded"] is not None else "no sets exchanged")
        common = f"\t{s['common']} common" if s["common"] is not None else ""
        return (f"{_when(s['started'])}\t{s['peer']}\t{s['role']}\t{s['outcome']}\tfinished {_when(s['finished'])}"
                f"\t{sizes}{common}")

    Output(args.json).result({"sessions": rows}, lambda: [line(s) for s in rows] or ["no matching sessions"])
def cmd_bans(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    action = args.ban_action
    if args.reason is not None and action != "add":
        raise UsageError("--reason goes with add")
    if action == "list":
        if args.value:
            raise UsageError("'bans list' takes no ARG")
        rows = administer.bans_list(args.data_dir)
        Output(args.json).result({"bans": rows}, lambda: [
            f"{r['hashes']['sha256']}\t{r['recommendation']}\t{r['reason']}" for r in rows] or ["no bans"])
        return
    if action == "export":
        write_export(administer.export_bans(args.data_dir), args.value)
        return
    if not args.value:
        needs = {"import": "a FILE", "add": "a PSEUDONYM", "remove": "a HASH or PSEUDONYM"}[action]
        raise UsageError(f"'bans {action}' needs {needs}")
    if action == "add":
        if not args.reason:
            raise UsageError("'bans add' needs --reason")
        doc = administer.ban(args.data_dir, args.value, reason=args.reason)
        Output(args.json).result(doc, [f"banned; the node keeps only the hash {doc['hashes']['sha256']}"])
    elif action == "remove":
        doc = administer.unban(args.data_dir, args.value)
        Output(args.json).result(doc, [f"ban {doc['hash']} lifted"])
    else:
        doc = administer.import_bans(args.data_dir, args.value)
        Output(args.json).result(doc, [f"{doc['imported']} ban(s) imported"])


def cmd_reports(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    rows = administer.forwarded_reports(args.data_dir)
    Output(args.json).result({"reports": rows}, lambda: [
        f"{_when(r['received'])}\t{r['community']} message {r['seq']} from {r['sender']} [{r['category']}], "
        f"forwarded by {r['from']}: {r['text']}" for r in rows] or ["no reports"])
