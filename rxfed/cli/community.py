"""``rxfed community``: condition communities, end to end encrypted, across nodes."""

from __future__ import annotations

import argparse
import datetime as dt

from rxfed.cli import EXIT_REFUSED, HELP, Output, UsageError, fail, json_flag, node_url, note, run_async
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
    post.add_argument("--badge", metavar="FILE", help="show a verified-clinician badge: the credentials file "
                      "'rxfed node clinicians issue' wrote for your clinician key")
    post.add_argument("--badge-profile", metavar="PROFILE", default="badge",
                      help="which of the file's credentials the post shows: badge (role, specialty, hospital; the "
                           "default), role (only that you are a clinician there) or full (also name and NPI)")
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

    badge = None
    if args.badge:
        from rxfed.client.clinician import load_credential

        badge = load_credential(args.badge, args.badge_profile)
    elif args.badge_profile != "badge":
        raise UsageError("--badge-profile goes with --badge")
    warnings = _presend_warnings(args.text, chosen_country(args))
    # Crisis support first, at once, and it never stands between the patient and sending.
    for w in sorted(warnings, key=lambda w: w.confirm):
        note(f"{'warning' if w.confirm else 'note'}: {w.message}" + "".join(f"\n  {r}" for r in w.resources))
    asking = [w for w in warnings if w.confirm]
    if asking and not args.send_anyway and not _confirmed():
        fail(f"not sent: the pre-send check warns about this message ({', '.join(w.code for w in asking)}); "
             "edit it, or send it as it is with --send-anyway", EXIT_REFUSED)
    result = with_client(args, lambda c: _communities(c).post(args.address, args.text, badge=badge))
    Output(args.json).result({"address": args.address, "queued": result.get("queued", False),
                              "seq": result.get("seq"), "id": result["id"], "badge": badge is not None,
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


def cmd_read(args: argparse.Namespace) -> None:
    view = with_client(args, lambda c: _communities(c).read(args.address))
    doc = view.to_json()

    def lines():
        out = [f"{doc['name'] or doc['address']}  (you are {doc['me'][:8]})"]
        pending = [m for m in doc["members"] if m["status"] == "pending"]
        if pending:
            out.append("pending approval: " + ", ".join(m["member"] for m in pending))
        for m in doc["messages"]:
            when = dt.datetime.fromtimestamp(m["sent"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            who = "you" if m["mine"] else m["sender"][:8]
            out.append(f"[{when}] {who}: {m['text']}")
            b = m["badge"]
            if b is not None:
                out.append(f"    [{b['badge']}]" if b["verified"] else
                           f"    [clinician badge REFUSED: {b['explanation']}]")
        if not doc["messages"]:
            out.append("no messages you can read yet")
        if doc["unreadable"]:
            out.append(f"{len(doc['unreadable'])} message(s) not shown, tampered with or sent by a faulty client:")
            out.extend(f"  message {u['seq']} from {u['sender'][:8]}: {u['explanation']}" for u in doc["unreadable"])
        return out

    Output(args.json).result(doc, lines)
