"""``rxfed community``: condition communities, end to end encrypted, across nodes."""

from __future__ import annotations

import argparse
import datetime as dt

from rxfed.cli import EXIT_REFUSED, HELP, Output, fail, json_flag, node_url, note, run_async
from rxfed.cli.moderation import country_option
from rxfed.cli.profile import profile_option, with_client


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("community", help=HELP["community"])
    csub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = csub.add_parser("create", help="create a community hosted on your home node")
    profile_option(create)
    create.add_argument("name", metavar="NAME")
    create.add_argument("--condition", metavar="CODE", help="ICD-10 category the community is about, e.g. G40")
    create.add_argument("--approval", action="store_true", help="joins need an admin's approval")
    json_flag(create)
    create.set_defaults(func=cmd_create)

    ls = csub.add_parser("list", help="list a node's public communities")
    ls.add_argument("--node", required=True, metavar="URL", type=node_url)
    json_flag(ls)
    ls.set_defaults(func=cmd_list)

    for name, helptext, func in (("join", "join a community (through your home node)", cmd_join),
                                 ("leave", "leave a community", cmd_leave),
                                 ("read", "decrypt and show a community's messages", cmd_read)):
        sp = csub.add_parser(name, help=helptext)
        profile_option(sp)
        sp.add_argument("address", metavar="ADDRESS")
        json_flag(sp)
        sp.set_defaults(func=func)

    rk = csub.add_parser("rekey", help="replace your member keys in one community, or all (after revoking a device)")
    profile_option(rk)
    rk.add_argument("address", metavar="ADDRESS", nargs="?", help="default: every community you are in")
    json_flag(rk)
    rk.set_defaults(func=cmd_rekey)

    post = csub.add_parser("post", help="post an end-to-end encrypted message")
    profile_option(post)
    post.add_argument("address", metavar="ADDRESS")
    post.add_argument("text", metavar="TEXT")
    post.add_argument("--send-anyway", action="store_true",
                      help="send even if a pre-send check warns (without a terminal, a warned message is "
                           "otherwise not sent)")
    country_option(post)
    json_flag(post)
    post.set_defaults(func=cmd_post)

    for name, helptext, func in (("approve", "approve a pending member (admins)", cmd_approve),
                                 ("remove", "remove a member (admins)", cmd_remove)):
        sp = csub.add_parser(name, help=helptext)
        profile_option(sp)
        sp.add_argument("address", metavar="ADDRESS")
        sp.add_argument("member", metavar="MEMBER", help="the member's pseudonym, from 'community read --json'")
        json_flag(sp)
        sp.set_defaults(func=func)


    report = csub.add_parser("report", help="report a message to the community's moderators (they learn what "
                                             "was said, never who reported it)")
    profile_option(report)
    report.add_argument("address", metavar="ADDRESS")
    report.add_argument("seq", metavar="SEQ", type=_seq, help="the message's seq, from 'community read --json'")
    report.add_argument("--category", required=True, choices=REPORT_CATEGORIES)
    json_flag(report)
    report.set_defaults(func=cmd_report)

    reports = csub.add_parser("reports", help="the moderator queue: reports sealed to you, each checked")
    profile_option(reports)
    reports.add_argument("address", metavar="ADDRESS")
    json_flag(reports)
    reports.set_defaults(func=cmd_reports)

    act = csub.add_parser("act", help="a moderator's signed action: hide a message, warn, remove or ban a member; "
                                      "the admin appoints and dismisses moderators")
    profile_option(act)
    act.add_argument("address", metavar="ADDRESS")
    act.add_argument("action", metavar="ACTION", choices=ACTIONS + ("forward",),
                     help=", ".join(ACTIONS) + ", or forward (the verified report of --seq, to its sender's "
                          "home node)")
    act.add_argument("member", metavar="MEMBER", nargs="?",
                     help="the member's pseudonym (default: the sender of --seq)")
    act.add_argument("--seq", type=_seq, default=0, help="the message hidden, or warned about")
    act.add_argument("--reason", help="shown to members: a report category or a few words (forward: the "
                                      "category, default the report's)")
    json_flag(act)
    act.set_defaults(func=cmd_act)


#: Here and not from rxfed.protocol.community, so that building the parser imports no protocol.
ACTIONS = ("hide", "warn", "remove", "ban", "appoint", "dismiss")
REPORT_CATEGORIES = ("medication_change", "dosing_advice", "miracle_cure", "drug_sourcing", "crisis", "harassment",
                     "spam", "privacy", "other")


def _seq(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**53:
        raise argparse.ArgumentTypeError("a message's seq: a positive integer")
    return int(value)


def _communities(client):
    from rxfed.client.community import PatientCommunities

    return PatientCommunities(client)


def cmd_create(args: argparse.Namespace) -> None:
    from rxfed.client import records

    condition = args.condition.strip().upper()[:3] if args.condition else None
    if condition:
        records.condition(condition, "icd10")  # validates the code shape; exit 2 if bad
    address = with_client(args, lambda c: _communities(c).create(args.name, condition=condition,
                                                                   approval=args.approval))
    Output(args.json).result({"address": address, "name": args.name, "condition": condition,
                              "approval": args.approval}, [f"community {args.name!r} created", address])


def cmd_list(args: argparse.Namespace) -> None:
    from rxfed.client.community import PatientCommunities

    found = run_async(PatientCommunities.directory(args.node))
    Output(args.json).result({"communities": found}, lambda: [
        f"{c['address']}  {c['name']}" + (f"  [{c['condition']}]" if c["condition"] else "")
        + f"  {c['members']} member(s)" + ("  (approval)" if c["approval"] else "") for c in found] or ["none"])


def cmd_join(args: argparse.Namespace) -> None:
    result = with_client(args, lambda c: _communities(c).join(args.address))
    queued = result.get("queued", False)
    Output(args.json).result({"address": args.address, "queued": queued, "seq": result.get("seq")},
                             [("join sent to the host (through your home node, which will deliver it)" if queued
                               else "joined"), args.address])


def cmd_leave(args: argparse.Namespace) -> None:
    result = with_client(args, lambda c: _communities(c).leave(args.address))
    Output(args.json).result({"address": args.address, "queued": result.get("queued", False)},
                             ["left; later messages are sealed to the remaining members only", args.address])


def cmd_rekey(args: argparse.Namespace) -> None:
    async def go(client):
        communities = _communities(client)
        if args.address:
            await communities.rekey(args.address)
            return {args.address: "rekeyed"}
        return await communities.rekey_all()

    outcomes = with_client(args, go)
    failed = {a: o for a, o in outcomes.items() if o != "rekeyed"}
    Output(args.json).result({"communities": outcomes}, [f"{a}: {o}" for a, o in outcomes.items()] or
                             ["you are in no community"])
    if failed:
        raise SystemExit(1)


def _presend_warnings(text: str, country: str | None = None) -> list:
    """Client hooks check the text here, on the device, before anything is sent; warnings are
    shown and never leave the device. Only plugins that implement the check are loaded, and
    none at all when no installed plugin does (rxfed.plugin_index)."""
    from rxfed.cli.moderation import PresendCheck

    check = PresendCheck()
    try:
        return check(text, country)
    finally:
        check.close()


def _confirmed() -> bool:
    """Whether the author sends a message the checks warned about: asked on the terminal
    (on stderr, so stdout stays the result), never without one: --send-anyway says so instead."""
    import sys

    if not sys.stdin.isatty():
        return False
    note("Send it anyway? [y/N] ")
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_post(args: argparse.Namespace) -> None:
    from rxfed.cli.moderation import chosen_country

    warnings = _presend_warnings(args.text, chosen_country(args))
    # Crisis support first, at once, and it never stands between the patient and sending.
    for w in sorted(warnings, key=lambda w: w.confirm):
        note(f"{'warning' if w.confirm else 'note'}: {w.message}" + "".join(f"\n  {r}" for r in w.resources))
    asking = [w for w in warnings if w.confirm]
    if asking and not args.send_anyway and not _confirmed():
        fail(f"not sent: the pre-send check warns about this message ({', '.join(w.code for w in asking)}); "
             "edit it, or send it as it is with --send-anyway", EXIT_REFUSED)
    result = with_client(args, lambda c: _communities(c).post(args.address, args.text))
    Output(args.json).result({"address": args.address, "queued": result.get("queued", False),
                              "seq": result.get("seq"), "id": result["id"],
                              "warnings": [w.to_json() for w in warnings]},
                             ["posted (end to end encrypted)" + (", queued for the host" if result.get("queued")
                                                                  else ""), result["id"]])


def _admin_action(args: argparse.Namespace, action: str, done: str) -> None:
    result = with_client(args, lambda c: getattr(_communities(c), action)(args.address, args.member))
    Output(args.json).result({"address": args.address, "member": args.member, "seq": result.get("seq"),
                              "queued": result.get("queued", False)}, [done, args.member])


def cmd_approve(args: argparse.Namespace) -> None:
    _admin_action(args, "approve", "approved")


def cmd_remove(args: argparse.Namespace) -> None:
    _admin_action(args, "remove", "removed; later messages are sealed to the remaining members only")


def cmd_report(args: argparse.Namespace) -> None:
    result = with_client(args, lambda c: _communities(c).file_report(args.address, args.seq, args.category))
    Output(args.json).result({"address": args.address, "seq": args.seq, "category": args.category,
                              "report": result.get("seq"), "queued": result.get("queued", False), "id": result["id"]},
                             [f"message {args.seq} reported as {args.category}; only the moderators can read the "
                              "report, and it does not say who made it"])


def cmd_reports(args: argparse.Namespace) -> None:
    queue = with_client(args, lambda c: _communities(c).reports(args.address))

    def lines():
        out = []
        for r in queue:
            if r["status"] != "verified":
                out.append(f"report {r['report']}: refused ({r['reason']}): it does not prove what was sent")
                continue
            done = ", ".join(f"{a['action']} (event {a['seq']})" for a in r["actions"]) or "no action yet"
            out.append(f"report {r['report']}: message {r['seq']} from {r['sender'][:8]} [{r['category']}] "
                       f"(verified; {done})\n  {r['text']}")
        return out or ["no reports"]

    Output(args.json).result({"address": args.address, "reports": queue}, lines)


def cmd_act(args: argparse.Namespace) -> None:
    if args.action in ("hide", "forward") and not args.seq:
        fail(f"{args.action} names the message: --seq SEQ", 2)
    if args.action == "forward":
        if args.member:
            fail("forward names the message (--seq), not a member", 2)
        if args.reason is not None and args.reason not in REPORT_CATEGORIES:
            fail(f"forward: --reason is a category, one of {', '.join(REPORT_CATEGORIES)}", 2)
        result = with_client(args, lambda c: _communities(c).forward(args.address, args.seq, args.reason))
        Output(args.json).result({"address": args.address, "action": "forward", "member": result["member"],
                                  "about": args.seq, "reason": result["category"], "node": result["node"],
                                  "queued": result.get("queued", False)},
                                 [f"the report of message {args.seq} is on its way to {result['node']}, the sender's "
                                  "home node (sealed to it; it names no reporter)"])
        return
    if not args.reason:
        fail(f"{args.action} needs --reason", 2)
    if args.member is None and not args.seq:
        fail(f"{args.action} names the member: MEMBER", 2)
    result = with_client(args, lambda c: _communities(c).act(args.address, args.action, args.member, seq=args.seq,
                                                             reason=args.reason))
    Output(args.json).result({"address": args.address, "action": args.action, "member": result["member"],
                              "about": args.seq or None, "reason": args.reason, "seq": result.get("seq"),
                              "queued": result.get("queued", False), "id": result["id"]},
                             [f"{args.action}: signed and sent; every member's client applies it", result["member"]])


def cmd_read(args: argparse.Namespace) -> None:
    view = with_client(args, lambda c: _communities(c).read(args.address))
    doc = view.to_json()

    def lines():
        out = [f"{doc['name'] or doc['address']}  (you are {doc['me'][:8]})"]
        pending = [m for m in doc["members"] if m["status"] == "pending"]
        if pending:
            out.append("pending approval: " + ", ".join(m["member"] for m in pending))
        hidden = {h["seq"]: h for h in doc["hidden"]}
        shown = sorted([(m["seq"], m) for m in doc["messages"]] + [(h["seq"], None) for h in doc["hidden"]],
                       key=lambda x: x[0])
        for seq, m in shown:
            if m is None:
                h = hidden[seq]
                out.append(f"[message {seq} from {'you' if h['mine'] else h['sender'][:8]} hidden by a moderator: "
                           f"{h['reason']}]")
                continue
            when = dt.datetime.fromtimestamp(m["sent"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            who = "you" if m["mine"] else m["sender"][:8]
            out.append(f"[{when}] {who}: {m['text']}")
        for w in doc["warnings"]:
            out.append("a moderator warned you" + (f" about message {w['about']}" if w["about"] else "")
                       + f": {w['reason']}")
        if not doc["messages"] and not doc["hidden"]:
            out.append("no messages you can read yet")
        if doc["unreadable"]:
            out.append(f"{len(doc['unreadable'])} message(s) not shown, tampered with or sent by a faulty client:")
            out.extend(f"  message {u['seq']} from {u['sender'][:8]}: {u['explanation']}" for u in doc["unreadable"])
        return out

    Output(args.json).result(doc, lines)
