"""``rxfed node accounts|communities|plugins|log|matching|insights|bans|reports|clinicians``:
administer a node's accounts and communities (while it runs, too), see plugin health, what
operators did and the node's matching sessions, keep block and ban lists, read forwarded
reports, vouch for clinicians, release insights tables and read the privacy-budget ledger."""

from __future__ import annotations

import argparse
import time

from rxfed.cli import Output, UsageError, input_file, json_flag, write_export


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

    cl = nsub.add_parser("clinicians", help="issue, list or revoke the verified-clinician credentials this node "
                                            "vouches for")
    cl.add_argument("data_dir", metavar="DATA_DIR")
    clsub = cl.add_subparsers(dest="clinician_action", metavar="ACTION", required=True)
    ci = clsub.add_parser("issue", help="check a clinician with the configured verification backends, then sign "
                                        "their credentials (one per disclosure profile: badge, role, full)")
    ci.add_argument("--key", required=True, metavar="DID_KEY",
                    help="the clinician's public key, as 'rxfed patient clinician key' prints it (did:key:z6Mk...)")
    ci.add_argument("--role", required=True, help="physician, nurse, nurse-practitioner, physician-assistant, "
                    "pharmacist, psychologist, dietitian, therapist, social-worker or midwife")
    ci.add_argument("--specialty", required=True, metavar="CODE",
                    help="NUCC Health Care Provider Taxonomy code, e.g. 207RE0101X")
    ci.add_argument("--specialty-name", required=True, metavar="NAME", help="what readers see, e.g. Endocrinology")
    ci.add_argument("--name", help="the clinician's name (only in the full profile)")
    ci.add_argument("--npi", help="the clinician's NPI (checked by the npi backend; only in the full profile)")
    ci.add_argument("--staff-id", help="the hospital's staff id (checked by the hospital-directory backend; never "
                                       "in a credential)")
    ci.add_argument("--valid-days", type=float, default=365.0, help="how long the credentials are valid (default "
                                                                    "365, at most 400)")
    ci.add_argument("--out", metavar="FILE", help="write the signed credentials here (default: standard output)")
    json_flag(ci)
    ci.set_defaults(func=cmd_clinicians)
    cli_list = clsub.add_parser("list", help="the credentials this node issued, with their state")
    json_flag(cli_list)
    cli_list.set_defaults(func=cmd_clinicians)
    cr = clsub.add_parser("revoke", help="revoke a clinician's credentials (every profile): verifiers refuse them "
                                         "once they fetch the status list again")
    cr.add_argument("credential", metavar="ID", help="the id 'clinicians list' shows")
    cr.add_argument("--reason", help="why, for the operator log")
    json_flag(cr)
    cr.set_defaults(func=cmd_clinicians)

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


    insights = nsub.add_parser("insights", help="insights tables: the privacy-budget ledger, releases, the budget")
    insights.add_argument("data_dir", metavar="DATA_DIR")
    insights.add_argument("insights_action", metavar="ACTION",
                          choices=("ledger", "releases", "budget", "release", "schedule", "round", "rounds"),
                          help="ledger | releases | budget EPSILON | release CATEGORY --table FILE --epsilon E | "
                               "schedule CATEGORY --table FILE --epsilon E --aggregator NODE --nodes A,B,C | "
                               "round CATEGORY | rounds")
    insights.add_argument("value", metavar="ARG", nargs="?",
                          help="budget: the epsilon per period (e.g. 1, 1/2, 0.5); release: the ICD-10 category")
    insights.add_argument("--table", metavar="FILE", type=input_file,
                          help="release, schedule: the table declaration, JSON {treatments, side_effects, symptoms, "
                               "max_groups}")
    insights.add_argument("--epsilon", help="release, schedule: the epsilon a release spends (exact: 1/4, 0.25)")
    insights.add_argument("--period", help="ledger, release, round: the calendar month YYYY-MM (release and round: "
                                           "this month)")
    insights.add_argument("--category", help="releases: only this category's")
    insights.add_argument("--aggregator", metavar="NODE", help="schedule: the node that runs the round")
    insights.add_argument("--nodes", metavar="NODE,...", type=lambda v: [n for n in v.split(",") if n],
                          help="schedule: every node of the round, this one and the aggregator included")
    insights.add_argument("--collusion", type=int, default=1,
                          help="schedule: how many nodes may pool what they know (default 1)")
    insights.add_argument("--dropouts", type=int, default=0,
                          help="schedule: how many may leave before their masked input (default 0)")
    insights.add_argument("--monthly", action="store_true",
                          help="schedule: the aggregator starts the round of the month just ended by itself")
    json_flag(insights)
    insights.set_defaults(func=cmd_insights)


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
def cmd_clinicians(args: argparse.Namespace) -> None:
    from rxfed.node import clinician_admin as clinicians

    action = args.clinician_action
    if action == "list":
        rows = clinicians.issued(args.data_dir)
        Output(args.json).result({"credentials": rows}, lambda: [
            f"{r['id']}\t{r['state'].upper() if r['state'] != 'valid' else 'valid'} until {_when(r['valid_until'])}\t"
            f"{r['role']} {r['specialty']}\t{r['clinician']}"
            + (f"\trevoked {_when(r['revoked'])}" + (f": {r['revoked_reason']}" if r["revoked_reason"] else "")
               if r["revoked"] else "") for r in rows] or ["no credentials issued"])
        return
    if action == "revoke":
        doc = clinicians.revoke(args.data_dir, args.credential, reason=args.reason)
        Output(args.json).result(doc, [f"{args.credential} is revoked" if doc["changed"] else
                                       f"{args.credential} was already revoked"])
        return
    import json
    from pathlib import Path

    if args.out and Path(args.out).exists():
        raise UsageError(f"--out {args.out} exists; credentials are never written over another file")
    if args.out and not Path(args.out).absolute().parent.is_dir():
        # checked before anything is signed or recorded: an issuance whose file cannot be written
        raise UsageError(f"--out {args.out}: its directory does not exist")
    doc = clinicians.issue(args.data_dir, key=args.key, role=args.role, specialty=args.specialty,
                           specialty_name=args.specialty_name, name=args.name, npi=args.npi, staff_id=args.staff_id,
                           valid_days=args.valid_days)
    bundle = json.dumps({"clinician": doc["clinician"], "credentials": doc["credentials"]}, indent=2,
                        ensure_ascii=False) + "\n"
    summary = {k: v for k, v in doc.items() if k != "credentials"}
    if args.out:
        from rxfed.cli.profile import write_private

        write_private(Path(args.out), bundle)
        Output(args.json).result({**summary, "file": args.out}, [
            f"issued {doc['id']}: {doc['role']} {doc['specialty']} for {doc['clinician']}, valid until "
            f"{_when(doc['valid_until'])}", f"credentials ({', '.join(doc['credentials'])}) written to {args.out}"])
        return
    if args.json:
        Output(True).result(doc, [])
        return
    import sys

    from rxfed.cli import note

    sys.stdout.write(bundle)
    note(f"issued {doc['id']}: {doc['role']} {doc['specialty']}, valid until {_when(doc['valid_until'])}")
def _ledger_lines(doc: dict) -> list[str]:
    out = [f"budget per period: epsilon {doc['budget']}"]
    for p in doc["periods"]:
        out.append(f"{p['period']}: spent {p['spent']}, {p['remaining']} left")
        out += [f"  {r['release']}\tepsilon {r['epsilon']}\t{_when(r['at'])}" for r in p["releases"]]
    return out if doc["periods"] else out + ["no release charged yet"]


def _declaration(path: str):
    import json
    import sys

    try:
        with (open(path, encoding="utf-8") if path != "-" else sys.stdin) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{path} is not JSON") from None


def cmd_insights(args: argparse.Namespace) -> None:
    from rxfed.node import administer

    action = args.insights_action
    extra = {"--table": args.table, "--epsilon": args.epsilon}
    if action not in ("release", "schedule") and any(v is not None for v in extra.values()):
        raise UsageError("--table and --epsilon go with release and schedule")
    if action != "schedule" and (args.aggregator or args.nodes or args.monthly or args.collusion != 1
                                 or args.dropouts != 0):
        raise UsageError("--aggregator, --nodes, --collusion, --dropouts and --monthly go with schedule")
    if action in ("schedule", "round") and args.value is None:
        raise UsageError(f"'insights {action}' needs a CATEGORY")
    if action == "rounds":
        rows = administer.insights_rounds(args.data_dir)
        Output(args.json).result({"rounds": rows}, lambda: [
            f"{r['round']}\t{r['role']}\t{r['category']}\t{r['period']}\t{r['phase']}\taggregator {r['aggregator']}"
            for r in rows] or ["no rounds"])
        return
    if action == "round":
        doc = administer.insights_round(args.data_dir, args.value, args.period)
        Output(args.json).result(doc, [f"round {doc['round']} of {doc['category']} started; "
                                       "'rxfed node insights DATA_DIR rounds' shows how it goes"])
        return
    if action == "schedule":
        if args.table is None or args.epsilon is None or not args.aggregator or not args.nodes:
            raise UsageError("'insights schedule' needs --table, --epsilon, --aggregator and --nodes")
        doc = administer.insights_schedule(args.data_dir, args.value, _declaration(args.table), epsilon=args.epsilon,
                                           aggregator=args.aggregator, nodes=args.nodes, collusion=args.collusion,
                                           dropouts=args.dropouts, monthly=args.monthly)
        Output(args.json).result(doc, [f"{doc['category']}: a round of {', '.join(doc['nodes'])} run by "
                                       f"{doc['aggregator']}, epsilon {doc['epsilon']} per month"
                                       + (", started monthly" if doc["monthly"] else "")])
        return
    if action in ("ledger", "releases") and args.value is not None:
        raise UsageError(f"'insights {action}' takes no ARG")
    if args.category is not None and action != "releases":
        raise UsageError("--category goes with releases")
    if args.period is not None and action not in ("ledger", "release", "round"):
        raise UsageError("--period goes with ledger, release and round")
    if action == "ledger":
        doc = administer.insights_ledger(args.data_dir, args.period)
        Output(args.json).result(doc, lambda: _ledger_lines(doc))
    elif action == "releases":
        rows = administer.insights_releases(args.data_dir, args.category)
        Output(args.json).result({"releases": rows}, lambda: [
            f"{r['release']}\t{r['category']}\t{r['period']}\tepsilon {r['published']['epsilon']}\t"
            f"{len(r['published']['rows'])} treatments\t{_when(r['computed'])}" for r in rows] or ["no releases"])
    elif action == "budget":
        if args.value is None:
            raise UsageError("'insights budget' needs the EPSILON per period")
        doc = administer.insights_budget(args.data_dir, args.value)
        Output(args.json).result(doc, lambda: _ledger_lines(doc))
    else:
        if args.value is None or args.table is None or args.epsilon is None:
            raise UsageError("'insights release' needs a CATEGORY, --table FILE and --epsilon")
        doc = administer.insights_release(args.data_dir, args.value, _declaration(args.table), epsilon=args.epsilon,
                                          period=args.period)
        published = doc["published"]
        Output(args.json).result(doc, lambda: [
            f"released {doc['category']} for {published['period']} as {doc['release']} (epsilon {published['epsilon']})",
            *[f"  {name}: {row['reports']} reports" for name, row in sorted(published["rows"].items())],
            *_ledger_lines(doc["ledger"])])
