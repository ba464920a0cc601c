"""``rxfed insights``: what worked for people with a diagnosis, from the federation's noisy,
budgeted tables (nothing is spent by asking)."""

from __future__ import annotations

import argparse
import datetime as dt

from rxfed.cli import HELP, Output, json_flag


def add_parser(sub, words: list[str] | None = None) -> None:
    from rxfed.cli.profile import profile_option

    p = sub.add_parser("insights", help=HELP["insights"])
    profile_option(p)
    p.add_argument("category", metavar="CATEGORY", help="an ICD-10 three-character category, e.g. E11")
    p.add_argument("--treatment", metavar="NAME", help="only this treatment (a normalised name, e.g. metformin)")
    json_flag(p)
    p.set_defaults(func=cmd_insights)


#: The order bands are shown in (JSON objects have none: the node's answer is canonical JSON).
ORDER = ("low", "medium", "high", "ongoing", "stopped", "improving", "stable", "worsening")


def _bands(values: dict) -> str:
    ordered = sorted(values, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    return ", ".join(f"{k} {values[k]}" for k in ordered) or "-"


def lines(doc: dict) -> list[str]:
    when = dt.datetime.fromtimestamp(doc["computed"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    out = [f"{doc['category']}, {doc['period']}: computed {when}Z from {doc['nodes']} node(s), epsilon "
           f"{doc['epsilon']} spent (values under {doc['suppressed_below']} shown as <{doc['suppressed_below']})"]
    for p in doc["ledger"]["periods"]:
        out.append(f"your node's privacy budget for {p['period']}: {p['spent']} of {doc['ledger']['budget']} spent, "
                   f"{p['remaining']} left")
    if not doc["treatments"]:
        out.append("no such treatment in this table")
    for t in doc["treatments"]:
        improved = f"{t['share_improved']}% improved" if t["share_improved"] is not None else "share improved: -"
        out.append(f"{t['treatment']}: {t['reports']} reports, {improved}")
        out.append(f"  efficacy: {_bands(t['efficacy'])}")
        out.append(f"  adherence: {_bands(t['adherence'])}")
        out.append(f"  status: {_bands(t['status'])}")
        if t["side_effects"]:
            out.append("  side effects: " + ", ".join(f"{e['name']} {e['reports']}" for e in t["side_effects"]))
        for symptom in sorted(t["symptoms"]):
            out.append(f"  {symptom}: {_bands(t['symptoms'][symptom])}")
    return out


def cmd_insights(args: argparse.Namespace) -> None:
    from rxfed.cli.profile import with_client
    from rxfed.client.insights import insights

    doc = with_client(args, lambda client: insights(client, args.category, args.treatment))
    Output(args.json).result(doc, lambda: lines(doc))
