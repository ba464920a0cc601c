"""``rxfed patient``: a patient's keys, records, devices and account, from any machine."""

from __future__ import annotations

import argparse
import datetime as dt

import attrs
import json
import os
import sys
import tempfile
from pathlib import Path

from rxfed.cli import Output, UsageError, json_flag, kdf_choice, note, run_async, secret_input


def _profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, metavar="DIR", help="the patient's local key directory")


def add_parser(sub) -> None:
    p = sub.add_parser("patient", help="a patient's keys, records and account")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    reg = psub.add_parser("register", help="create keys and register with a node")
    reg.add_argument("--node", required=True, metavar="URL")
    _profile(reg)
    reg.add_argument("--invite", metavar="CODE", help="invitation code, on nodes that require one")
    reg.add_argument("--kdf", choices=("interactive", "moderate", "sensitive", "min"),
                     help="Argon2id cost protecting the key file (default moderate; min is for tests)")
    json_flag(reg)
    reg.set_defaults(func=cmd_register)

    rec = psub.add_parser("recover", help="restore access on this device with the recovery code")
    rec.add_argument("--node", required=True, metavar="URL")
    _profile(rec)
    rec.add_argument("--kdf", choices=("interactive", "moderate", "sensitive", "min"))
    keep = rec.add_mutually_exclusive_group()
    keep.add_argument("--keep", action="append", default=[], metavar="DEVICE_ID",
                      help="keep this other device active (repeat); every device not kept is revoked")
    keep.add_argument("--keep-all", action="store_true",
                      help="keep every other device whose certificate verifies (trusts the node's device list; "
                           "to add a device while others stay, prefer `rxfed patient link`)")
    json_flag(rec)
    rec.set_defaults(func=cmd_recover)

    link = psub.add_parser("link", help="add this machine as a device of an existing patient, from an active device")
    lsub = link.add_subparsers(dest="link_action", metavar="ACTION", required=True)
    lr = lsub.add_parser("request", help="make this device's keys and print a link code for an active device")
    lr.add_argument("--node", required=True, metavar="URL")
    _profile(lr)
    lr.add_argument("--kdf", choices=("interactive", "moderate", "sensitive", "min"))
    json_flag(lr)
    lr.set_defaults(func=cmd_link_request)
    lf = lsub.add_parser("finish", help="once an active device added this one, adopt the account")
    _profile(lf)
    lf.add_argument("--confirm", metavar="CODE",
                    help="the confirmation code `devices add` printed (asked for on a terminal)")
    json_flag(lf)
    lf.set_defaults(func=cmd_link_finish)

    dev = psub.add_parser("devices", help="list, add or revoke devices")
    dsub = dev.add_subparsers(dest="devices_action", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", help="list devices")
    _profile(dl)
    json_flag(dl)
    dl.set_defaults(func=cmd_devices_list)
    da = dsub.add_parser("add", help="enrol a new device from its link code (`rxfed patient link request`)")
    da.add_argument("link", metavar="LINK_CODE")
    _profile(da)
    json_flag(da)
    da.set_defaults(func=cmd_devices_add)
    dr = dsub.add_parser("revoke", help="revoke a device (needs the recovery code, from RXFED_RECOVERY_CODE or a prompt)")
    dr.add_argument("device", metavar="DEVICE_ID", nargs="+")
    _profile(dr)
    json_flag(dr)
    dr.set_defaults(func=cmd_devices_revoke)

    pw = psub.add_parser("passphrase", help="change the key-file passphrase (new one from RXFED_NEW_PASSPHRASE or a prompt)")
    _profile(pw)
    pw.add_argument("--kdf", choices=("interactive", "moderate", "sensitive", "min"))
    json_flag(pw)
    pw.set_defaults(func=cmd_passphrase)

    rc = psub.add_parser("recovery-code", help="manage the recovery code")
    rcsub = rc.add_subparsers(dest="rc_action", metavar="ACTION", required=True)
    rot = rcsub.add_parser("rotate", help="issue a new recovery code (give the current one in RXFED_RECOVERY_CODE "
                                          "or at the prompt); the old one stops working")
    _profile(rot)
    json_flag(rot)
    rot.set_defaults(func=cmd_recovery_rotate)

    cond = psub.add_parser("condition", help="diagnoses")
    csub = cond.add_subparsers(dest="cond_action", metavar="ACTION", required=True)
    ca = csub.add_parser("add", help="add a diagnosis (ICD-10 or SNOMED CT code)")
    _profile(ca)
    ca.add_argument("code", metavar="CODE")
    ca.add_argument("--system", choices=("icd10", "snomed"), default="icd10")
    ca.add_argument("--label", metavar="TEXT")
    ca.add_argument("--onset", metavar="DATE")
    json_flag(ca)
    ca.set_defaults(func=cmd_condition_add)

    jour = psub.add_parser("journal", help="symptom and mood journal")
    jsub = jour.add_subparsers(dest="journal_action", metavar="ACTION", required=True)
    ja = jsub.add_parser("add", help="add a journal entry")
    _profile(ja)
    ja.add_argument("--symptom", action="append", default=[], metavar="NAME=0..10")
    ja.add_argument("--feeling", metavar="0..10")
    ja.add_argument("--note", metavar="TEXT")
    ja.add_argument("--phq9", metavar="ANSWERS", help="nine PHQ-9 answers 0-3, e.g. 1,0,2,1,0,0,1,0,0")
    ja.add_argument("--gad7", metavar="ANSWERS", help="seven GAD-7 answers 0-3")
    ja.add_argument("--date", metavar="DATE", help="default today")
    ja.add_argument("--country", metavar="CC", help="two-letter country code for crisis resources")
    json_flag(ja)
    ja.set_defaults(func=cmd_journal_add)

    tr = psub.add_parser("treatment", help="treatments tried")
    tsub = tr.add_subparsers(dest="treatment_action", metavar="ACTION", required=True)
    ta = tsub.add_parser("add", help="add a treatment")
    _profile(ta)
    ta.add_argument("name", metavar="NAME")
    ta.add_argument("--dose")
    ta.add_argument("--started", metavar="DATE")
    ta.add_argument("--stopped", metavar="DATE")
    ta.add_argument("--efficacy", metavar="0..10")
    ta.add_argument("--side-effect", action="append", default=[], metavar="NAME")
    ta.add_argument("--adherence", metavar="0..10")
    json_flag(ta)
    ta.set_defaults(func=cmd_treatment_add)

    show = psub.add_parser("show", help="decrypt and show every record, newest first")
    _profile(show)
    show.add_argument("--kind", choices=("profile", "condition", "journal", "treatment", "observation", "community"))
    json_flag(show)
    show.set_defaults(func=cmd_show)

    exp = psub.add_parser("export", help="write a FHIR R4 Bundle of every record")
    _profile(exp)
    exp.add_argument("--fhir", required=True, metavar="OUT.json",
                     help="the file to write (readable by you only), or - for standard output")
    json_flag(exp)
    exp.set_defaults(func=cmd_export)

    imp = psub.add_parser("import", help="encrypt and store a hospital's FHIR export (again: adds only what is new)")
    _profile(imp)
    imp.add_argument("--fhir", required=True, metavar="IN.json", help="the Bundle to read, or - for standard input")
    json_flag(imp)
    imp.set_defaults(func=cmd_import)

    dele = psub.add_parser("delete-account", help="erase every record and key of this patient on the node")
    _profile(dele)
    dele.add_argument("--yes", action="store_true", help="do not ask for confirmation (required without a terminal)")
    json_flag(dele)
    dele.set_defaults(func=cmd_delete_account)

    from rxfed.cli import consent

    consent.add_parsers(psub, _profile)


# -- helpers -------------------------------------------------------------------------------


def _passphrase(*, new: bool = False) -> str:
    return secret_input("RXFED_PASSPHRASE", "Key-file passphrase: ", confirm=new)


def _client(args: argparse.Namespace):
    from rxfed.client import PatientClient

    return PatientClient.open(Path(args.profile), _passphrase())


def _with_client(args: argparse.Namespace, action):
    client = _client(args)

    async def go():
        async with client:
            return await action(client)

    return run_async(go())


def _created(out: Output, record, what: str) -> None:
    out.result({"id": record.id, "kind": record.kind, "version": record.version, "data": record.data},
               [f"{what} stored encrypted", record.id])


# -- commands ------------------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> None:
    from rxfed.client import PatientClient

    kdf = kdf_choice(args)
    passphrase = _passphrase(new=True)

    async def go():
        client, code = await PatientClient.register(args.node, Path(args.profile), passphrase, invite=args.invite, kdf=kdf)
        async with client:
            return client.patient, client.device, code

    patient, device, code = run_async(go())
    Output(args.json).result(
        {"patient": patient, "device": device, "recovery_code": str(code), "node": args.node},
        [f"registered on {args.node}", f"device: {device}",
         "recovery code (shown once; write it down and keep it safe, it restores access if every device is lost):",
         f"  {code}", patient],
    )


def _recovery_code(prompt: str = "Recovery code: "):
    from rxfed.crypto.recovery import RecoveryCode

    try:
        return RecoveryCode.parse(secret_input("RXFED_RECOVERY_CODE", prompt))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_recover(args: argparse.Namespace) -> None:
    from rxfed.client import PatientClient

    kdf = kdf_choice(args)
    code = _recovery_code()
    passphrase = _passphrase(new=True)

    async def go():
        client = await PatientClient.recover(args.node, Path(args.profile), code, passphrase, kdf=kdf,
                                             keep="all" if args.keep_all else args.keep)
        async with client:
            return client.patient, client.device, client.followups

    patient, device, followups = run_async(go())
    _report_followups(followups)
    Output(args.json).result({"patient": patient, "device": device},
                             [f"access restored; this device is {device}", patient])


def cmd_link_request(args: argparse.Namespace) -> None:
    from rxfed.client import PatientClient

    kdf = kdf_choice(args)
    passphrase = _passphrase(new=True)
    code = run_async(PatientClient.request_link(args.node, Path(args.profile), passphrase, kdf=kdf))
    Output(args.json).result({"link_code": code, "node": args.node}, [
        "on an active device of yours, run:", f"  rxfed patient devices add {code} --profile ...",
        f"then here: rxfed patient link finish --profile {args.profile} --confirm CODE", code])


def cmd_link_finish(args: argparse.Namespace) -> None:
    client = _client(args)
    given = args.confirm
    if given is None:
        if not sys.stdin.isatty():
            raise UsageError("pass --confirm CODE: the confirmation code `rxfed patient devices add` printed")
        given = input("Confirmation code shown by the other device: ")

    async def go():
        async with client:
            confirm = await client.finish_link(given)
            return client.patient, client.device, confirm

    patient, device, confirm = run_async(go())
    Output(args.json).result({"patient": patient, "device": device, "confirmation": confirm},
                             [f"this device ({device}) is linked to patient {patient}", patient])


def cmd_devices_add(args: argparse.Namespace) -> None:
    device, confirm = _with_client(args, lambda c: c.add_device(args.link))
    Output(args.json).result({"device": device, "confirmation": confirm}, [
        f"device {device} enrolled; on it, run `rxfed patient link finish --confirm {confirm}`", confirm])


def cmd_devices_list(args: argparse.Namespace) -> None:
    devices = _with_client(args, lambda c: c.devices())
    rows = [{"device": d.device, "created": d.created, "revoked": d.revoked, "current": d.current,
             "verified": d.verified, "enrolled_by": d.enrolled_by, "known": d.known} for d in devices]

    def lines():
        out = []
        for d in devices:
            flags = [f for f, on in (("this device", d.current), ("revoked", d.revoked is not None),
                                     (f"enrolled by {d.enrolled_by}", d.enrolled_by is not None),
                                     (f"{d.known} from this device", d.known is not None),
                                     ("NOT SIGNED BY YOUR KEY", not d.verified)) if on]
            created = dt.datetime.fromtimestamp(d.created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            out.append(f"{d.device}  added {created}" + (f"  ({', '.join(flags)})" if flags else ""))
        return out

    Output(args.json).result({"devices": rows}, lines)


def _report_followups(followups: dict) -> None:
    """Say on stderr what a revocation or recovery could not replace yet."""
    for address, outcome in (followups.get("communities") or {}).items():
        if outcome != "rekeyed":
            note(f"community {address}: member keys not replaced yet ({outcome}); "
                 "run `rxfed community rekey` when its host answers")
    for grant in followups.get("grants") or []:
        if "error" in grant:
            note(f"consent grant {grant['grant']}: not renewed ({grant['error']}); revoke it and grant again")


def cmd_devices_revoke(args: argparse.Namespace) -> None:
    client = _client(args)
    code = _recovery_code()

    async def go():
        async with client:
            return await client.revoke_devices(args.device, code), client.followups

    revoked, followups = run_async(go())
    extra = sorted(set(revoked) - set(args.device))
    if extra:
        note(f"also revoked, as enrolled by a revoked device: {', '.join(extra)}")
    _report_followups(followups)
    Output(args.json).result({"revoked": revoked, **followups}, [
        "revoked (a new identity epoch: revoked devices can read nothing written from now on, and enrol, "
        "revoke or change nothing):", *revoked])


def cmd_passphrase(args: argparse.Namespace) -> None:
    client = _client(args)
    new = secret_input("RXFED_NEW_PASSPHRASE", "New passphrase: ", confirm=True)
    client.change_passphrase(new, args.kdf)
    Output(args.json).result({"changed": True}, ["passphrase changed"])


def cmd_recovery_rotate(args: argparse.Namespace) -> None:
    client = _client(args)
    current = _recovery_code("Current recovery code: ")

    async def go():
        async with client:
            return await client.rotate_recovery_code(current)

    code = run_async(go())
    Output(args.json).result({"recovery_code": str(code)},
                             ["new recovery code (the old one no longer works); keep it safe:", str(code)])


def cmd_condition_add(args: argparse.Namespace) -> None:
    from rxfed.client import records

    data = records.condition(args.code, args.system, args.label, args.onset)
    record = _with_client(args, lambda c: c.add_record("condition", data))
    _created(Output(args.json), record, "condition")


def _symptoms(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--symptom {item!r}: write it as NAME=0..10")
        out[name] = value
    return out


def cmd_journal_add(args: argparse.Namespace) -> None:
    from rxfed.client import questionnaires, records

    scores = [questionnaires.score(name, questionnaires.parse_answers(text))
              for name, text in (("phq9", args.phq9), ("gad7", args.gad7)) if text]
    data = records.journal(symptoms=_symptoms(args.symptom), feeling=args.feeling, note=args.note,
                           questionnaires=[s.to_dict() for s in scores], date=args.date)
    record = _with_client(args, lambda c: c.add_record("journal", data))
    for s in scores:
        note(f"{s.instrument.upper()} score {s.total}: {s.severity}")
        if s.crisis:
            note("")
            note(questionnaires.crisis_resources(args.country))
    note(questionnaires.ATTRIBUTION) if scores else None
    _created(Output(args.json), record, "journal entry")


def cmd_treatment_add(args: argparse.Namespace) -> None:
    from rxfed.client import records

    data = records.treatment(args.name, dose=args.dose, started=args.started, stopped=args.stopped,
                             efficacy=args.efficacy, side_effects=args.side_effect, adherence=args.adherence)
    record = _with_client(args, lambda c: c.add_record("treatment", data))
    _created(Output(args.json), record, "treatment")


def cmd_show(args: argparse.Namespace) -> None:
    from rxfed.client.records import clinical_date, summary

    found = _with_client(args, lambda c: c.records(args.kind))
    # Community memberships hold the member's private keys: never printed, listed on request.
    found = [r if r.kind != "community" else attrs.evolve(r, data={"address": r.data["address"], "name": r.data.get("name")})
             for r in found if args.kind == "community" or r.kind != "community"]
    # Newest first by the day a record is about, then those without one (records() gives
    # newest written first, and the sort keeps that order among equals).
    found.sort(key=lambda r: (clinical_date(r) is not None, clinical_date(r) or ""), reverse=True)

    def lines():
        if not found:
            return ["no records yet"]
        return [f"{clinical_date(r) or 'no date':<10}  {r.kind:<11} {summary(r)}" for r in found]

    Output(args.json).result({"records": [{**r.to_json(), "date": clinical_date(r)} for r in found]}, lines)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (plaintext health records, like the profile
    directory), whole or not at all: a new file beside it, renamed over the old one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def cmd_export(args: argparse.Namespace) -> None:
    from rxfed.client.fhir import export_bundle

    to_stdout = args.fhir == "-"
    if to_stdout and args.json:
        raise UsageError("--fhir - writes the Bundle to standard output, where --json would write too: use one")

    async def go(client):
        return client.patient, await client.records()

    patient, found = _with_client(args, go)
    bundle = export_bundle([(r.kind, r.data, r.id) for r in found], patient)
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    count = len(bundle.get("entry", []))
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        note(f"wrote {count} FHIR resources")
        return
    _write_private(Path(args.fhir), text)
    Output(args.json).result({"file": args.fhir, "resources": count}, [f"wrote {count} FHIR resources", args.fhir])


def _comparable(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("import_key", "source")}


def cmd_import(args: argparse.Namespace) -> None:
    from rxfed.client.fhir import import_bundle
    from rxfed.errors import BadRequest

    source = "standard input" if args.fhir == "-" else args.fhir
    raw = sys.stdin.buffer.read() if args.fhir == "-" else Path(args.fhir).read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{source} is not JSON: {exc}") from None
    result = import_bundle(doc)
    stored, held = _with_client(args, lambda c: c.import_records(list(result.records)))
    counts: dict[str, int] = {}
    for r in stored:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    incoming = {data["import_key"]: data for _, data in result.records}
    changed = sum(1 for r in held if _comparable(r.data) != _comparable(incoming.get(r.data.get("import_key"), r.data)))
    for tally in result.skipped_why:
        note(f"skipped {tally.count} {tally.resource_type}: {tally.reason}")
    for tally in result.notes:
        note(f"{tally.count} {tally.resource_type} {tally.reason}")
    if held:
        note(f"{len(held)} records of this file were imported before and are left as they are"
             + (f"; {changed} of them differ from the file now (rxfed keeps the copy you have)" if changed else ""))
    lines = [f"imported {len(stored)} records" + (": " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                                   if counts else "")]
    if held and not stored:
        lines = [f"nothing new: all {len(held)} records of this file were imported before"]
    if result.skipped:
        lines.append("skipped: " + ", ".join(f"{n} {k}" for k, n in sorted(result.skipped.items())))
    Output(args.json).result(
        {"imported": counts, "records": len(stored), "already_imported": len(held), "changed_since_import": changed,
         "skipped": dict(result.skipped), "skipped_why": [t.to_json() for t in result.skipped_why],
         "notes": [t.to_json() for t in result.notes]},
        lines,
    )


def cmd_delete_account(args: argparse.Namespace) -> None:
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("deleting an account cannot be undone: pass --yes to confirm without a terminal")
        if input("This erases every record on the node and this device's key file. Type 'delete' to go on: ") != "delete":
            raise UsageError("not confirmed; nothing was deleted")
    result = _with_client(args, lambda c: c.erase_account())
    Output(args.json).result({"erased": True, "patient": result["patient"]},
                             ["account erased on the node; the local key file was removed", result["patient"]])
