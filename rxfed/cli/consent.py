"""``rxfed patient consent|audit|signals|share``: what leaves the device, for whom, and its use."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from rxfed.cli import EXIT_REFUSED, Output, json_flag


def add_parsers(psub, profile) -> None:
    con = psub.add_parser("consent", help="grant, list, revoke and export consent")
    csub = con.add_subparsers(dest="consent_action", metavar="ACTION", required=True)
    gr = csub.add_parser("grant", help="share one kind of signal, for one purpose, with a recipient")
    profile(gr)
    gr.add_argument("--kind", required=True, metavar="KIND", help="signal kind, e.g. diagnosis.category")
    gr.add_argument("--purpose", required=True, metavar="PURPOSE", help="e.g. research, matching, moderation")
    gr.add_argument("--to", required=True, metavar="RECIPIENT",
                    help="node:NODE_ID, federation, or plugin:NODE_ID/NAME")
    gr.add_argument("--until", metavar="DATE", help="end date (default 180 days; at most a year)")
    gr.add_argument("--nodes", metavar="NODE,...", type=lambda v: [n for n in v.split(",") if n],
                    help="the nodes you agree to (for --to federation): refused if your home node would reach "
                         "any other, or not all of them")
    gr.add_argument("--no-share", action="store_true", help="record the grant without sending signals yet")
    json_flag(gr)
    gr.set_defaults(func=cmd_grant)
    ls = csub.add_parser("list", help="every grant, its status, and who acknowledged a revocation")
    profile(ls)
    json_flag(ls)
    ls.set_defaults(func=cmd_list)
    rv = csub.add_parser("revoke", help="revoke a grant (at once at home, federated to recipients)")
    profile(rv)
    rv.add_argument("grant", metavar="GRANT_ID")
    json_flag(rv)
    rv.set_defaults(func=cmd_revoke)
    rc = csub.add_parser("recipients", help="the nodes and plugins a grant can reach: what each reads, for which "
                                             "purposes")
    profile(rc)
    json_flag(rc)
    rc.set_defaults(func=cmd_recipients)
    ex = csub.add_parser("export", help="write every grant as FHIR Consent resources")
    profile(ex)
    ex.add_argument("--fhir", required=True, metavar="OUT.json", help="a file only you can read, or - for standard "
                                                                     "output")
    json_flag(ex)
    ex.set_defaults(func=cmd_export)

    au = psub.add_parser("audit", help="every use of your signals, from a hash chain checked on this device")
    profile(au)
    json_flag(au)
    au.set_defaults(func=cmd_audit)

    sg = psub.add_parser("signals", help="preview the signals your records give (nothing is sent)")
    profile(sg)
    sg.add_argument("--kind", action="append", metavar="KIND", help="only this kind (repeatable)")
    json_flag(sg)
    sg.set_defaults(func=cmd_signals)

    sh = psub.add_parser("share", help="send current signals under your live grants")
    profile(sh)
    sh.add_argument("--grant", metavar="GRANT_ID", help="only this grant")
    json_flag(sh)
    sh.set_defaults(func=cmd_share)


def _consent(args, action):
    from rxfed.cli.profile import with_client
    from rxfed.client.consent import PatientConsent

    return with_client(args, lambda client: action(PatientConsent(client)))


def _when(unix: int | None) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d") if unix else "-"


def cmd_grant(args: argparse.Namespace) -> None:
    from rxfed.consent.grants import parse_until

    async def go(consent):
        until = parse_until(args.until, consent._now()) if args.until else None
        return await consent.grant(args.kind, args.purpose, args.to, until=until, nodes=args.nodes,
                                   share=not args.no_share)

    result = _consent(args, go)
    sent = [s for s in result["shared"] if s["sent"]]
    Output(args.json).result(result, [
        f"granted {result['kind']} for {result['purpose']} to {result['recipient']} until {_when(result['not_after'])}",
        f"nodes: {', '.join(result['nodes'])}",
        *([f"received by: {', '.join(receivers)}"] if (receivers := [
            f"{node}/{name}" for node, names in result["receivers"].items() for name in names or ()]) else []),
        *(f"not checked: {node} does not publish its plugins" for node, names in result["receivers"].items()
          if names is None),
        *(f"sent {s['signals']} signal(s) to {s['node']}" + (" (queued)" if s.get("queued") else "") for s in sent),
        *(f"not sent to {s['node']}: {s['reason']}" for s in result["shared"] if not s["sent"]),
        result["grant"],
    ])


def cmd_recipients(args: argparse.Namespace) -> None:
    found = _consent(args, lambda c: c.recipients())

    def lines():
        out = [f"signal kinds: {', '.join(found['kinds'])}"]
        for node in found["nodes"]:
            home = " (your home node)" if node["node_id"] == found["home"] else ""
            if node["plugins"] is None:
                out.append(f"{node['node_id']}{home}: does not publish its plugins")
                continue
            out.append(f"{node['node_id']}{home}:" + ("" if node["plugins"] else " no plugin receives signals"))
            out.extend(f"  plugin:{node['node_id']}/{p['name']}  reads {', '.join(p['reads']) or 'nothing'} "
                       f"for {', '.join(p['purposes']) or 'no purpose'}" for p in node["plugins"])
        return out

    Output(args.json).result(found, lines)


def cmd_list(args: argparse.Namespace) -> None:
    grants = _consent(args, lambda c: c.list())

    def lines():
        if not grants:
            return ["no consent grants"]
        out = []
        for g in grants:
            out.append(f"{g['grant']}  {g['status']:<8} {g['kind']} for {g['purpose']} to {g['recipient']} "
                       f"until {_when(g['not_after'])}")
            if g["status"] == "revoked":
                out.append(f"    acknowledged: {', '.join(g['acknowledged']) or 'none yet'}; "
                           f"waiting for: {', '.join(g['pending']) or 'nobody'}")
            if g["forged"]:
                out.append(f"    WARNING: your home node shows acknowledgements from {', '.join(g['forged'])} that "
                           "those nodes did not sign: they may still hold your signals")
            unverified = [t["node"] for t in g["tokens"] if not t["verified"]]
            if unverified:
                out.append(f"    WARNING: tokens for {', '.join(unverified)} were not made by this profile")
            unnamed = [t["node"] for t in g["tokens"] if t["verified"] and not t["named"]]
            if unnamed:
                out.append(f"    WARNING: tokens for {', '.join(unnamed)} are not named by the grant you signed")
        return out

    Output(args.json).result({"grants": grants}, lines)
    return EXIT_REFUSED if any(g["forged"] for g in grants) else None


def cmd_revoke(args: argparse.Namespace) -> None:
    result = _consent(args, lambda c: c.revoke(args.grant))
    Output(args.json).result(result, [
        "revoked on your home node; plugins there no longer receive these signals",
        *([f"waiting for acknowledgement from: {', '.join(result['pending'])} (see `consent list`)"]
          if result["pending"] else []),
        result["grant"],
    ])


def cmd_export(args: argparse.Namespace) -> None:
    """As ``patient export``: ``--fhir -`` writes to standard output, a file is written whole
    or not at all and only its owner can read it (grants say what the patient shares, and
    with whom: as private as the records)."""
    import sys

    from rxfed.cli import UsageError, note
    from rxfed.cli.profile import write_private

    to_stdout = args.fhir == "-"
    if to_stdout and args.json:
        raise UsageError("--fhir - writes the Bundle to standard output, where --json would write too: use one")
    bundle = _consent(args, lambda c: c.fhir_bundle())
    text = json.dumps(bundle, indent=2) + "\n"
    consents = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        note(f"wrote {consents} FHIR Consent resources")
        return
    write_private(Path(args.fhir).expanduser(), text)
    Output(args.json).result({"file": args.fhir, "consents": consents},
                             [f"wrote {consents} FHIR Consent resources", args.fhir])


def cmd_audit(args: argparse.Namespace) -> None:
    view = _consent(args, lambda c: c.audit())

    def lines():
        out = []
        for e in view.entries:
            detail = {"granted": lambda: f"{e['kind']} for {e['purpose']} to {e['recipient']}",
                      "shared": lambda: f"{e['count']} {e['kind']} signal(s) to {e['node']}",
                      "used": lambda: f"plugin {e['plugin']} on {e['node']} used {e['count']} {e['kind']} "
                                      f"signal(s) for {e['purpose']}",
                      "revoked": lambda: "revoked",
                      "released": lambda: f"your signals went into insights table {e['table']} for {e['period']} "
                                          f"(release {e['release']}, epsilon {e['epsilon']}, {e['nodes']} node(s))",
                      "acknowledged": lambda: f"{e['node']} deleted what it held and acknowledged"
                      + (f" (plugins {', '.join(e['unconfirmed'])} could not confirm their deletion)"
                         if e.get("unconfirmed") else "")
                      + {"verified": ", signed by that node",
                         "unchecked": " (its signature cannot be checked now: the node is unreachable)"}.get(
                          view.acknowledgements.get(e["seq"]),
                          ": NOT SIGNED by that node, which may still hold your signals")}
            what = detail.get(e["event"], lambda: e["event"])()
            stamp = dt.datetime.fromtimestamp(e["time"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            out.append(f"{e['seq']:>4}  {stamp}  {e['event']:<12} grant {e.get('grant', '-')[:8]}  {what}")
        out.append(f"audit chain verified: {view.head.seq} entries, head {view.to_json()['head']['hash']}")
        if view.forged:
            out.append(f"WARNING: entries {', '.join(map(str, view.forged))} claim acknowledgements the nodes "
                       "did not sign")
        return out

    Output(args.json).result(view.to_json(), lines)
    return EXIT_REFUSED if view.forged else None


def cmd_signals(args: argparse.Namespace) -> None:
    async def go(consent):
        kinds = args.kind or sorted(consent.plugins.signal_kinds())
        records = await consent.client.records()
        return {kind: await consent.derive(kind, records) for kind in kinds}

    derived = _consent(args, go)
    Output(args.json).result({"signals": [{"kind": k, "body": b} for k, bodies in derived.items() for b in bodies]},
                             [f"{k}  {json.dumps(b, sort_keys=True)}" for k, bodies in derived.items() for b in bodies]
                             or ["your records give no signals yet"])


def cmd_share(args: argparse.Namespace) -> None:
    sent = _consent(args, lambda c: c.share(args.grant))
    Output(args.json).result({"shared": sent}, [
        f"{s['grant'][:8]} -> {s['node']}: " + (f"{s['signals']} signal(s)" if s["sent"] else s["reason"])
        for s in sent] or ["no live grants"])
