"""``rxfed demo``: three nodes on loopback, patients on different nodes, their encrypted
records, one end-to-end encrypted community they share, shown from both sides, a verified
clinician answering there (and refused once revoked), a report handled, and consent
granted, used by a plugin on another node, revoked and audited."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from rxfed.cli import HELP, Output, json_flag, note, run_async


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("demo", help=HELP["demo"])
    p.add_argument("--keep", metavar="DIR", help="keep the nodes' data and the profiles in DIR (default: a temporary directory, removed)")
    json_flag(p)
    p.set_defaults(func=cmd_demo)


PATIENTS = {
    "amara": {
        "node": "hospital-a",
        "condition": ("G40.909", "icd10", "epilepsy"),
        "journal": {"symptoms": {"fatigue": 6, "headache": 3}, "feeling": 5, "note": "an aura in the morning, no seizure"},
        "treatment": ("levetiracetam", {"dose": "500 mg twice daily", "efficacy": 7, "side_effects": ["irritability"],
                                        "adherence": 9}),
        "post": "Levetiracetam made me irritable the first month, then it settled. Anyone else?",
    },
    "bruno": {
        "node": "hospital-b",
        "condition": ("84757009", "snomed", "epilepsy"),
        "journal": {"symptoms": {"sleep": 4}, "feeling": 7, "note": "slept better since the dose change"},
        "treatment": ("lamotrigine", {"dose": "100 mg", "efficacy": 6, "side_effects": ["dizziness"], "adherence": 8}),
        "post": "Same here for two weeks. Sleep helped me more than anything.",
    },
}
NODES = ("hospital-a", "hospital-b", "community-c")


async def _wait(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:  # noqa: BLE001 - not there yet: federation is asynchronous
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("the federation did not settle in time")


async def _demo(work: Path) -> dict:
    from rxfed.client import PatientClient
    from rxfed.client.community import PatientCommunities
    from rxfed.node.config import FederationSettings
    from rxfed.node.local import LocalNode
    from rxfed.plugins import RxfedPlugins

    # Quick retries and no signal delay, so the demo settles in seconds; the installed plugins
    # on every node, the outcomes plugin only where the patients' grants send their signals
    # (its entry point is one object, which two nodes in one process would share).
    fast = FederationSettings(backoff_base=0.05, backoff_max=0.5, request_timeout=2.0, key_refetch=0, signal_delay=0)
    nodes = {}
    for name in NODES:
        plugins = RxfedPlugins(disabled=() if name == "community-c" else ("outcomes",))
        nodes[name] = await LocalNode(work / name, plugins, name=name, federation=fast).start()
    for node in nodes.values():
        await node.allow(*(n for n in nodes.values() if n is not node))
    summary = {"nodes": {name: {"url": n.url, "node_id": n.node_id, "data_dir": str(n.data_dir)}
                         for name, n in nodes.items()}, "patients": [], "community": {}}
    clients = {}
    try:
        for name, spec in PATIENTS.items():
            node = nodes[spec["node"]]
            client, code = await PatientClient.register(node.url, work / name, f"demo passphrase for {name}",
                                                        kdf="interactive")
            client.recovery_code = code  # kept for the device step below; a patient writes it down
            clients[name] = client
            code_, system, label = spec["condition"]
            await client.add_condition(code_, system, label)
            await client.add_journal(**spec["journal"])
            tname, tkw = spec["treatment"]
            await client.add_treatment(tname, **tkw)
            seen = await client.records()
            stored = await node.app_store().vault(client.patient, None)
            summary["patients"].append({
                "name": name, "node": spec["node"], "patient": client.patient, "profile": str(work / name),
                "patient_sees": [r.to_json() for r in seen],
                "node_stores": [{"id": r.id, "version": r.version, "bytes": len(r.blob),
                                 "blob_prefix_hex": r.blob[:24].hex()} for r in stored.records],
            })
        organiser, _ = await PatientClient.register(nodes["community-c"].url, work / "carla", "demo passphrase",
                                                    kdf="interactive")
        clients["carla"] = organiser
        host = PatientCommunities(organiser)
        address = await host.create("Living with epilepsy", condition="G40")
        for name in PATIENTS:
            await PatientCommunities(clients[name]).join(address)

        async def all_joined():
            state = (await host.read(address)).state
            return state is not None and len(state.joined()) == 3

        await _wait(all_joined)
        for name in PATIENTS:
            member = PatientCommunities(clients[name])

            async def caught_up(member=member):
                view = await member.read(address)
                return view.state is not None and len(view.state.joined()) == 3

            await _wait(caught_up)
        await host.post(address, "Welcome! This group is end to end encrypted; no node can read it.")
        for name, spec in PATIENTS.items():
            await _wait(lambda: _count(PatientCommunities(clients[name]), address, 1))
            await PatientCommunities(clients[name]).post(address, spec["post"])
        total = 1 + len(PATIENTS)
        for name in ("carla", *PATIENTS):
            await _wait(lambda name=name: _count(PatientCommunities(clients[name]), address, total))
        views = {name: (await PatientCommunities(clients[name]).read(address)).to_json() for name in ("carla", *PATIENTS)}
        community_id, host = address.split("@")
        hosted = await nodes["community-c"].app_store().community_events(community_id, host)
        summary["community"] = {
            "address": address, "host": "community-c",
            "members": {name: views[name]["me"] for name in views},
            "seen_by": {name: [{"sender": m["sender"][:8], "text": m["text"]} for m in v["messages"]]
                        for name, v in views.items()},
            "host_stores": [{"seq": e.seq, "type": _event_type(e.event), "bytes": len(e.event)} for e in hosted],
        }
        summary["clinician"] = await _clinician_answers(work, nodes, clients, address)
        summary["moderation"] = await _report_handled(clients, address)
        summary["consent"] = await _consent(nodes, clients)
        summary["insights"] = await _insights(nodes, clients)
        summary["devices"] = await _stolen_laptop(work, nodes, clients, address)
    finally:
        for client in clients.values():
            await client.close()
        for node in nodes.values():
            await node.stop()
            node.plugins.close()
    return summary


async def _consent(nodes: dict, clients: dict) -> dict:
    """Both patients let the ``outcomes`` plugin on community-c use their treatment outcomes
    for research; amara then revokes, and her audit log shows every step, verified."""
    from rxfed.client.consent import PatientConsent

    c = nodes["community-c"]
    outcomes = c.state.plugins.pm.get_plugin("outcomes")
    recipient = f"plugin:{c.node_id}/outcomes"
    consents = {name: PatientConsent(clients[name]) for name in PATIENTS}
    grants = {name: await consents[name].grant("treatment.outcome", "research", recipient) for name in PATIENTS}
    await _wait(lambda: _true(outcomes.held() == len(PATIENTS)))
    before = outcomes.summary()
    revoked = await consents["amara"].revoke(grants["amara"]["grant"])

    async def acknowledged():
        (grant,) = await consents["amara"].list()
        return grant["acknowledged"] == [c.node_id]

    await _wait(acknowledged)
    audits = {}
    for name in PATIENTS:
        view = await consents[name].audit()
        audits[name] = view.to_json()
    return {
        "recipient": recipient, "kind": "treatment.outcome", "purpose": "research",
        "grants": {name: {"grant": g["grant"], "signals": sum(s.get("signals", 0) for s in g["shared"])}
                   for name, g in grants.items()},
        "plugin_summary_before": before,
        "revoked": {"patient": "amara", "grant": revoked["grant"], "acknowledged": [c.node_id]},
        "plugin_summary_after": outcomes.summary(),
        "plugin_holds_after": outcomes.held(),
        "audit": audits,
    }


async def _insights(nodes: dict, clients: dict) -> dict:
    """Each patient lets their own node's ``insights`` plugin count their treatment outcome;
    the three nodes' operators schedule one round for epilepsy (G40), community-c runs it,
    and each node's noisy counts reach it only masked. amara reads the federation table."""
    from rxfed.client.consent import PatientConsent
    from rxfed.client.insights import insights
    from rxfed.node.insights import schedule_doc
    from rxfed.protocol.canonical import canonical

    for name, spec in PATIENTS.items():
        node = nodes[spec["node"]]
        await PatientConsent(clients[name]).grant("treatment.outcome", "insights", f"plugin:{node.node_id}/insights")
    aggregator = nodes["community-c"]
    doc = schedule_doc("G40", {"treatments": ["lamotrigine", "levetiracetam"], "side_effects": ["dizziness",
                                                                                                 "irritability"]},
                       epsilon="1/2", aggregator=aggregator.node_id, nodes=[n.node_id for n in nodes.values()])
    for node in nodes.values():
        await node.app_store().set_insights_schedule("G40", canonical(doc))
    round_id = await aggregator.state.insights.start_round("G40")

    async def everywhere():
        return all([bool(await n.app_store().insight_releases("G40")) for n in nodes.values()])

    await _wait(everywhere)
    return {"round": round_id, "aggregator": "community-c", "epsilon": doc["epsilon"],
            "amara_reads": await insights(clients["amara"], "G40")}


async def _true(value: bool) -> bool:
    return value


#: The demo's clinician: a profile on hospital-a, vouched for by hospital-a after its NPI
#: backend accepts the (valid, illustrative) NPI; a neurologist (NUCC 2084N0400X).
CLINICIAN = {"name": "dana", "full_name": "Dana Okafor", "node": "hospital-a", "npi": "1234567893",
             "role": "physician", "specialty": ("2084N0400X", "Neurology")}
QUESTION = "Question for a clinician: is the irritability on levetiracetam something to worry about?"
ANSWER = ("Irritability is a known side effect of levetiracetam and often eases after the first months. "
          "Mention it to your neurologist at your next visit.")


async def _clinician_answers(work: Path, nodes: dict, clients: dict, address: str) -> dict:
    """dana, a neurologist with her patient profile on hospital-a, makes her clinician key
    (``rxfed patient clinician key``); hospital-a's operator issues her a credential once
    its NPI backend accepts her (``rxfed node clinicians DATA_DIR issue``); she joins the
    community and answers amara's question with the badge profile (role, specialty,
    hospital: no name, no NPI). bruno's client, on hospital-b, checks the badge itself
    against hospital-a's keys and status list; hospital-a then revokes the credential and
    bruno's client shows the badge refused."""
    from rxfed.client import PatientClient
    from rxfed.client.clinician import clinician_key
    from rxfed.client.community import PatientCommunities
    from rxfed.node import clinician_admin
    from rxfed.protocol import community as pc
    from rxfed.protocol.credentials import did_key

    spec = CLINICIAN
    hospital = nodes[spec["node"]]
    client, _code = await PatientClient.register(hospital.url, work / spec["name"], "demo passphrase for dana",
                                                 kdf="interactive")
    clients[spec["name"]] = client
    key = await clinician_key(client, create=True)
    code, label = spec["specialty"]
    issued = await asyncio.to_thread(lambda: clinician_admin.issue(
        hospital.data_dir, key=did_key(key.public), role=spec["role"],
        specialty=code, specialty_name=label, name=spec["full_name"], npi=spec["npi"]))
    dana, amara, bruno = (PatientCommunities(clients[n]) for n in (spec["name"], "amara", "bruno"))
    await dana.join(address)

    seat = (await dana.membership(address)).member.public

    async def joined_everywhere():
        states = [(await member.read(address)).state for member in (dana, amara, bruno)]
        return all(s is not None and s.status(seat) is pc.MemberStatus.JOINED for s in states)

    await _wait(joined_everywhere)
    await amara.post(address, QUESTION)
    await _wait(lambda: _has(dana, address, QUESTION))
    badge = issued["credentials"]["badge"]
    await dana.post(address, ANSWER, badge=badge)

    async def shown():
        return (await _badge(bruno, address, ANSWER)) is not None

    await _wait(shown)
    verified = await _badge(bruno, address, ANSWER)
    revoked = await asyncio.to_thread(clinician_admin.revoke, hospital.data_dir, issued["id"],
                                      reason="demo: credential withdrawn")

    async def refused_now():
        return (await _badge(bruno, address, ANSWER))["reason"] == "credential_revoked"

    await _wait(refused_now)
    refused = await _badge(bruno, address, ANSWER)
    return {"clinician": spec["name"], "node": spec["node"], "did": issued["clinician"], "credential": issued["id"],
            "role": issued["role"], "specialty": issued["specialty"],
            "verdicts": issued["verdicts"], "profiles": sorted(issued["credentials"]),
            "badge_claims": sorted(badge["credentialSubject"]),
            "question": {"by": "amara", "text": QUESTION}, "answer": ANSWER,
            "reader": "bruno", "reader_node": PATIENTS["bruno"]["node"], "reader_sees": verified,
            "revoked": revoked["revoked"], "reader_sees_after_revoke": refused}


async def _badge(member, address: str, text: str) -> dict | None:
    """The verdict ``member``'s client reached on the badge of the post ``text`` (None: not
    read yet, or no badge)."""
    for m in (await member.read(address)).to_json()["messages"]:
        if m["text"] == text:
            return m["badge"]
    return None


def _event_type(raw: bytes) -> str:
    from rxfed.protocol.canonical import loads

    return loads(raw)["body"]["type"].rsplit(".", 1)[-1]


async def _report_handled(clients: dict, address: str) -> dict:
    """bruno offers his spare pills; amara reports the post to the moderators (the report
    names nobody); carla, the admin, finds it verified in her queue and hides it; every
    member's client then shows it hidden."""
    from rxfed.client.community import PatientCommunities

    carla, amara, bruno = (PatientCommunities(clients[n]) for n in ("carla", "amara", "bruno"))
    offer = "I have spare lamotrigine if anyone needs some, DM me"
    await bruno.post(address, offer)
    await _wait(lambda: _has(amara, address, offer))
    seq = next(m.seq for m in (await amara.read(address)).messages if m.text == offer)
    await amara.file_report(address, seq, "drug_sourcing")

    async def queued():
        return any(r["status"] == "verified" for r in await carla.reports(address))

    await _wait(queued)
    [report] = await carla.reports(address)
    await carla.act(address, "hide", seq=seq, reason="drug_sourcing")

    async def hidden_everywhere():
        views = [(await c.read(address)).to_json() for c in (carla, amara, bruno)]
        return all(seq in [h["seq"] for h in v["hidden"]] for v in views)

    await _wait(hidden_everywhere)
    return {"seq": seq, "text": offer, "category": report["category"], "status": report["status"],
            "reporter_named": (await amara.membership(address)).pseudonym in str(report),
            "hidden_for": ["carla", "amara", "bruno"]}


async def _has(member, address: str, text: str) -> bool:
    return any(m.text == text for m in (await member.read(address)).messages)


async def _count(member, address: str, n: int) -> bool:
    return len((await member.read(address)).messages) >= n


async def _stolen_laptop(work: Path, nodes: dict, clients: dict, address: str) -> dict:
    """bruno adds a laptop from his phone, loses it, and revokes it with his recovery code:
    a new identity epoch the laptop never sees, his community keys replaced."""
    from rxfed.client import PatientClient
    from rxfed.client.community import PatientCommunities

    bruno, node = clients["bruno"], nodes[PATIENTS["bruno"]["node"]]
    code = await PatientClient.request_link(node.url, work / "bruno-laptop", "demo passphrase for bruno's laptop",
                                            kdf="interactive")
    device, confirm = await bruno.add_device(code)
    laptop = PatientClient.open(work / "bruno-laptop", "demo passphrase for bruno's laptop")
    try:
        await laptop.finish_link(confirm)
        read_on_laptop = len(await laptop.records())
        before = await PatientCommunities(laptop).membership(address)
    finally:
        await laptop.close()
    revoked = await bruno.revoke_device(device, bruno.recovery_code)
    after = await PatientCommunities(bruno).membership(address)
    await PatientCommunities(clients["carla"]).post(address, "Posted after bruno revoked his laptop.")
    return {"laptop": device, "confirmation": confirm, "laptop_read_records": read_on_laptop, "revoked": revoked,
            "epoch": (await bruno.secrets()).epoch, "community_rekeyed": bruno.followups["communities"],
            "old_member_key": before.pseudonym[:8], "new_member_key": after.pseudonym[:8]}


def _lines(summary: dict) -> list[str]:
    from rxfed.client.records import Record, summary as describe

    out = ["three nodes on loopback: " + ", ".join(f"{k} ({v['node_id']})" for k, v in summary["nodes"].items()), ""]
    for p in summary["patients"]:
        out.append(f"patient {p['name']} on {p['node']} ({p['patient']})")
        stored = {r["id"]: r for r in p["node_stores"]}
        out.append(f"  {'what ' + p['node'] + ' stores':<58} | what the patient sees")
        for r in p["patient_sees"]:
            s = stored[r["id"]]
            left = f"{s['id'][:12]}.. v{s['version']} {s['bytes']:>5} B {s['blob_prefix_hex'][:24]}.."
            record = Record(r["id"], r["version"], r["kind"], r["created"], r["data"])
            out.append(f"  {left:<58} | {r['kind']}: {describe(record)}")
        out.append("")
    c = summary["community"]
    out.append(f"community 'Living with epilepsy' hosted on {c['host']}: {c['address']}")
    out.append("  what the host stores (signed events, messages as ciphertext):")
    out += [f"    #{e['seq']:<3} {e['type']:<11} {e['bytes']:>5} B" for e in c["host_stores"]]
    for name, messages in c["seen_by"].items():
        out.append(f"  what {name} reads (pseudonym {c['members'][name][:8]}):")
        out += [f"    {m['sender']}: {m['text']}" for m in messages]
    out.append("")
    v = summary["clinician"]
    seen, after = v["reader_sees"], v["reader_sees_after_revoke"]
    out.append(f"a verified clinician: {v['node']} checks {v['clinician']}'s NPI ("
               + "; ".join(f"{x['backend']}: {x['reason']}" for x in v["verdicts"]) + ")")
    out.append(f"  and issues her credential {v['credential']} for her clinician key {v['did'][:24]}..; "
               f"her posts show {', '.join(c for c in v['badge_claims'] if c != 'id')} and the hospital, "
               "no name, no NPI")
    out.append(f"  {v['question']['by']} asks: {v['question']['text']}")
    out.append(f"  {v['clinician']} answers: {v['answer']}")
    out.append(f"  {v['reader']}'s client on {v['reader_node']} checks the badge itself against the issuer: "
               f"[{seen['badge']}]")
    out.append(f"  {v['node']} revokes the credential; {v['reader']}'s client now shows "
               f"[clinician badge REFUSED: {after['explanation']}]")
    out.append("")
    r = summary["moderation"]
    out.append(f"a report handled: amara reports bruno's message {r['seq']} ({r['text']!r}) as {r['category']};")
    out.append(f"  carla, the admin, finds it {r['status']} in her queue (it names no reporter) and hides it;")
    out.append(f"  every member's client now shows 'message {r['seq']} hidden by a moderator: {r['category']}'")
    out.append("")
    k = summary["consent"]
    out.append(f"consent: amara and bruno grant {k['kind']} for {k['purpose']} to {k['recipient']}")
    for name, g in k["grants"].items():
        out.append(f"  {name}: grant {g['grant']}, {g['signals']} signal(s) sealed to community-c")
    out.append(f"  the outcomes plugin's tally (counts under 11 suppressed): {k['plugin_summary_before']}")
    out.append(f"  amara revokes; acknowledged by {', '.join(k['revoked']['acknowledged'])}; "
               f"the plugin now holds {k['plugin_holds_after']} patient's signals")
    for name, view in k["audit"].items():
        steps = ", ".join(f"{e['event']}" + (f" by {e['plugin']}@{e['node']}" if e["event"] == "used" else "")
                          for e in view["entries"])
        out.append(f"  {name}'s audit log (hash chain verified, {view['head']['seq']} entries): {steps}")
    i = summary["insights"]
    seen = i["amara_reads"]
    out.append("")
    out.append(f"insights: each node counts its own patients; {i['aggregator']} runs round {i['round'][:12]}.. "
               f"over {seen['nodes']} nodes, epsilon {seen['epsilon']}; no node sees another's counts")
    out.append("  what amara reads (`rxfed insights G40`; every figure noisy, under 11 shown as <11):")
    for t in seen["treatments"]:
        out.append(f"    {t['treatment']}: {t['reports']} reports, efficacy {t['efficacy']}")
    d = summary["devices"]
    out.append("")
    out.append(f"devices: bruno links a laptop from his phone (confirmation {d['confirmation']}); it reads his "
               f"{d['laptop_read_records']} records")
    out.append(f"  the laptop is stolen: bruno revokes it with his recovery code -> identity epoch {d['epoch']}, "
               f"which the laptop never sees; revoked: {', '.join(r[:12] for r in d['revoked'])}")
    out.append(f"  his community seat moved from member key {d['old_member_key']} to {d['new_member_key']}: "
               "later posts are sealed to the new key only")
    out.append("")
    out.append("Nodes hold only padded ciphertext and pseudonyms; keys never left the patients' profiles;")
    out.append("what left a device was a typed signal under a grant the patient signed and could revoke.")
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
