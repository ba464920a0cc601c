"""``rxfed demo``: a node on loopback, two patients, their encrypted records, side by side."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from rxfed.cli import Output, json_flag, note, run_async


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run a node on loopback with two demo patients and show what it stores")
    p.add_argument("--keep", metavar="DIR", help="keep the node's data and the profiles in DIR (default: a temporary directory, removed)")
    json_flag(p)
    p.set_defaults(func=cmd_demo)


PATIENTS = {
    "amara": {
        "condition": ("G40.909", "icd10", "epilepsy"),
        "journal": {"symptoms": {"fatigue": 6, "headache": 3}, "feeling": 5, "note": "an aura in the morning, no seizure"},
        "treatment": ("levetiracetam", {"dose": "500 mg twice daily", "efficacy": 7, "side_effects": ["irritability"],
                                        "adherence": 9}),
    },
    "bruno": {
        "condition": ("44054006", "snomed", "type 2 diabetes"),
        "journal": {"symptoms": {"thirst": 4}, "feeling": 7, "note": "walked 5 km, glucose steadier"},
        "treatment": ("metformin", {"dose": "850 mg", "efficacy": 6, "side_effects": ["nausea"], "adherence": 8}),
    },
}


async def _demo(work: Path) -> dict:
    from rxfed.client import PatientClient
    from rxfed.plugins import RxfedPlugins
    from rxfed.testing import NodeHarness

    node = NodeHarness(work / "node", name="demo-node", plugins=RxfedPlugins())
    await node.start()
    summary = {"node": {"url": node.url, "node_id": node.config.node_id, "data_dir": str(node.data_dir)}, "patients": []}
    try:
        for name, spec in PATIENTS.items():
            client, code = await PatientClient.register(node.url, work / name, f"demo passphrase for {name}",
                                                        kdf="interactive")
            async with client:
                code_, system, label = spec["condition"]
                await client.add_condition(code_, system, label)
                await client.add_journal(**spec["journal"])
                tname, tkw = spec["treatment"]
                await client.add_treatment(tname, **tkw)
                seen = await client.records()
                stored = await node.app_store().vault(client.patient, None)
            summary["patients"].append({
                "name": name,
                "patient": client.patient,
                "profile": str(work / name),
                "patient_sees": [r.to_json() for r in seen],
                "node_stores": [{"id": r.id, "version": r.version, "bytes": len(r.blob),
                                 "blob_prefix_hex": r.blob[:24].hex()} for r in stored.records],
            })
    finally:
        await node.stop()
    return summary


def _lines(summary: dict) -> list[str]:
    from rxfed.client.records import Record, summary as describe

    out = [f"node {summary['node']['node_id']} served from {summary['node']['data_dir']}", ""]
    for p in summary["patients"]:
        out.append(f"patient {p['name']} ({p['patient']})")
        stored = {r["id"]: r for r in p["node_stores"]}
        out.append(f"  {'what the node stores':<58} | what the patient sees")
        for r in p["patient_sees"]:
            s = stored[r["id"]]
            left = f"{s['id'][:12]}.. v{s['version']} {s['bytes']:>5} B {s['blob_prefix_hex'][:24]}.."
            record = Record(r["id"], r["version"], r["kind"], r["created"], r["data"])
            out.append(f"  {left:<58} | {r['kind']}: {describe(record)}")
        out.append("")
    out.append("The node holds only padded ciphertext under random ids; keys never left the patients' profiles.")
    return out


def cmd_demo(args: argparse.Namespace) -> None:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rxfed-demo-"))
    try:
        summary = run_async(_demo(work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep:
        note(f"node data and profiles kept in {work}")
    Output(args.json).result(summary, lambda: _lines(summary))
