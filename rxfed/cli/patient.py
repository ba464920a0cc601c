"""``rxfed patient``: a patient's keys, records, devices and account, from any machine."""

from __future__ import annotations

import argparse
import datetime as dt

import attrs
import json
import sys
from pathlib import Path

from rxfed.cli.profile import (
    ask_passphrase,
    check_new_passphrase,
    open_client,
    profile_option,
    profile_path,
    with_client,
    write_private,
)
from rxfed.cli import (
    COMPLETE_FILE,
    HELP,
    Output,
    UsageError,
    add_actions,
    input_file,
    json_flag,
    kdf_choice,
    node_url,
    note,
    run_async,
    secret_input,
)


def _group(psub, name: str, help: str, dest: str):
    """A command with actions (``devices list``, ``record edit``): it takes ``--profile``
    before its action too."""
    group = psub.add_parser(name, help=help)
    profile_option(group)
    return group.add_subparsers(dest=dest, metavar="ACTION", required=True)


def _node(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, metavar="URL", type=node_url,
                   help="the node's URL, with its scheme (https://..., or http:// on this machine)")


def _kdf(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kdf", choices=("interactive", "moderate", "sensitive", "min"),
                   help="Argon2id cost protecting the key file (default moderate; min is for tests)")


def _add_register(psub) -> None:
    reg = psub.add_parser("register", help=ACTIONS["register"])
    _node(reg)
    profile_option(reg)
    reg.add_argument("--invite", metavar="CODE", help="invitation code, on nodes that require one")
    _kdf(reg)
    json_flag(reg)
    reg.set_defaults(func=cmd_register)


def _add_recover(psub) -> None:
    rec = psub.add_parser("recover", help=ACTIONS["recover"])
    _node(rec)
    profile_option(rec)
    _kdf(rec)
    keep = rec.add_mutually_exclusive_group()
    keep.add_argument("--keep", action="append", default=[], metavar="DEVICE_ID",
                      help="keep this other device active (repeat); every device not kept is revoked")
    keep.add_argument("--keep-all", action="store_true",
                      help="keep every other device whose certificate verifies (trusts the node's device list; "
                           "to add a device while others stay, prefer `rxfed patient link`)")
    json_flag(rec)
    rec.set_defaults(func=cmd_recover)


def _add_link(psub) -> None:
    lsub = _group(psub, "link", ACTIONS["link"], "link_action")
    lr = lsub.add_parser("request", help="make this device's keys and print a link code for an active device")
    _node(lr)
    profile_option(lr)
    _kdf(lr)
    json_flag(lr)
    lr.set_defaults(func=cmd_link_request)
    lf = lsub.add_parser("finish", help="once an active device added this one, adopt the account")
    profile_option(lf)
    lf.add_argument("--confirm", metavar="CODE",
                    help="the confirmation code `devices add` printed (asked for on a terminal)")
    json_flag(lf)
    lf.set_defaults(func=cmd_link_finish)


def _add_devices(psub) -> None:
    dsub = _group(psub, "devices", ACTIONS["devices"], "devices_action")
    dl = dsub.add_parser("list", help="list devices")
    profile_option(dl)
    json_flag(dl)
    dl.set_defaults(func=cmd_devices_list)
    da = dsub.add_parser("add", help="enrol a new device from its link code (`rxfed patient link request`)")
    da.add_argument("link", metavar="LINK_CODE")
    profile_option(da)
    json_flag(da)
    da.set_defaults(func=cmd_devices_add)
    dr = dsub.add_parser("revoke", help="revoke a device (needs the recovery code, from RXFED_RECOVERY_CODE or a prompt)")
    dr.add_argument("device", metavar="DEVICE_ID", nargs="+")
    profile_option(dr)
    json_flag(dr)
    dr.set_defaults(func=cmd_devices_revoke)


def _add_passphrase(psub) -> None:
    pw = psub.add_parser("passphrase", help=ACTIONS["passphrase"])
    profile_option(pw)
    _kdf(pw)
    json_flag(pw)
    pw.set_defaults(func=cmd_passphrase)


def _add_recovery_code(psub) -> None:
    rcsub = _group(psub, "recovery-code", ACTIONS["recovery-code"], "rc_action")
    rot = rcsub.add_parser("rotate", help="issue a new recovery code (give the current one in RXFED_RECOVERY_CODE "
                                          "or at the prompt); the old one stops working")
    profile_option(rot)
    json_flag(rot)
    rot.set_defaults(func=cmd_recovery_rotate)


def _add_condition(psub) -> None:
    csub = _group(psub, "condition", ACTIONS["condition"], "cond_action")
    ca = csub.add_parser("add", help="add a diagnosis (ICD-10 or SNOMED CT code)")
    profile_option(ca)
    ca.add_argument("code", metavar="CODE")
    ca.add_argument("--system", choices=("icd10", "snomed"), default="icd10")
    ca.add_argument("--label", metavar="TEXT")
    ca.add_argument("--onset", metavar="DATE")
    json_flag(ca)
    ca.set_defaults(func=cmd_condition_add)


def _add_journal(psub) -> None:
    jsub = _group(psub, "journal", ACTIONS["journal"], "journal_action")
    ja = jsub.add_parser("add", help="add a journal entry")
    profile_option(ja)
    ja.add_argument("--symptom", action="append", default=[], metavar="NAME=0..10")
    ja.add_argument("--feeling", metavar="0..10")
    ja.add_argument("--note", metavar="TEXT")
    ja.add_argument("--phq9", metavar="ANSWERS", help="nine PHQ-9 answers 0-3, e.g. 1,0,2,1,0,0,1,0,0")
    ja.add_argument("--gad7", metavar="ANSWERS", help="seven GAD-7 answers 0-3")
    ja.add_argument("--date", metavar="DATE", help="default today")
    ja.add_argument("--country", metavar="CC", help="two-letter country code for crisis resources")
    json_flag(ja)
    ja.set_defaults(func=cmd_journal_add)


def _add_treatment(psub) -> None:
    tsub = _group(psub, "treatment", ACTIONS["treatment"], "treatment_action")
    ta = tsub.add_parser("add", help="add a treatment")
    profile_option(ta)
    ta.add_argument("name", metavar="NAME")
    ta.add_argument("--dose")
    ta.add_argument("--started", metavar="DATE")
    ta.add_argument("--stopped", metavar="DATE")
    ta.add_argument("--efficacy", metavar="0..10")
    ta.add_argument("--side-effect", action="append", default=[], metavar="NAME")
    ta.add_argument("--adherence", metavar="0..10")
    json_flag(ta)
    ta.set_defaults(func=cmd_treatment_add)


def _add_record(psub) -> None:
    rsub = _group(psub, "record", ACTIONS["record"], "record_action")
    ed = rsub.add_parser("edit", help="change fields of a condition, journal entry or treatment (stored as the "
                                      "record's next version; an empty value clears a field)")
    ed.add_argument("record", metavar="RECORD_ID", help="the record's id (printed when it was added; `show --json`), "
                                                        "or a unique prefix of it of at least 8 characters")
    profile_option(ed)
    cond_fields = ed.add_argument_group("a condition's fields")
    cond_fields.add_argument("--code", metavar="CODE")
    cond_fields.add_argument("--system", choices=("icd10", "snomed"))
    cond_fields.add_argument("--label", metavar="TEXT")
    cond_fields.add_argument("--onset", metavar="DATE")
    journal_fields = ed.add_argument_group("a journal entry's fields")
    journal_fields.add_argument("--symptom", action="append", default=[], metavar="NAME=0..10",
                                help="set a symptom's score; NAME= removes it")
    journal_fields.add_argument("--feeling", metavar="0..10")
    journal_fields.add_argument("--note", metavar="TEXT")
    journal_fields.add_argument("--phq9", metavar="ANSWERS")
    journal_fields.add_argument("--gad7", metavar="ANSWERS")
    journal_fields.add_argument("--date", metavar="DATE")
    treatment_fields = ed.add_argument_group("a treatment's fields")
    treatment_fields.add_argument("--name", metavar="NAME")
    treatment_fields.add_argument("--dose")
    treatment_fields.add_argument("--started", metavar="DATE")
    treatment_fields.add_argument("--stopped", metavar="DATE")
    treatment_fields.add_argument("--efficacy", metavar="0..10")
    treatment_fields.add_argument("--side-effect", action="append", default=[], metavar="NAME",
                                  help="the side effects, replacing those stored (one empty value: none)")
    treatment_fields.add_argument("--adherence", metavar="0..10")
    json_flag(ed)
    ed.set_defaults(func=cmd_record_edit)
    rd = rsub.add_parser("delete", help="delete a record for good (the signed manifest no longer lists it)")
    rd.add_argument("record", metavar="RECORD_ID", help="the record's id, or a unique prefix of at least 8 characters")
    profile_option(rd)
    json_flag(rd)
    rd.set_defaults(func=cmd_record_delete)


def _add_show(psub) -> None:
    show = psub.add_parser("show", help=ACTIONS["show"])
    profile_option(show)
    show.add_argument("--kind", choices=("profile", "condition", "journal", "treatment", "observation", "community"))
    json_flag(show)
    show.set_defaults(func=cmd_show)


def _add_sync(psub) -> None:
    sync = psub.add_parser("sync", help=ACTIONS["sync"])
    profile_option(sync)
    sync.add_argument("--accept-restore", metavar="RESTORE_ID",
                      help="accept the node's restore RESTORE_ID (shown by `sync`): upload again what this device "
                           "holds and go on from the restored vault")
    json_flag(sync)
    sync.set_defaults(func=cmd_sync)


def _add_export(psub) -> None:
    exp = psub.add_parser("export", help=ACTIONS["export"])
    profile_option(exp)
    exp.add_argument("--fhir", required=True, metavar="OUT.json",
                     help="the file to write (readable by you only), or - for standard output")
    json_flag(exp)
    exp.set_defaults(func=cmd_export)


def _add_import(psub) -> None:
    imp = psub.add_parser("import", help=ACTIONS["import"])
    profile_option(imp)
    imp.add_argument("--fhir", required=True, metavar="IN.json", type=input_file,
                     help="the Bundle to read, or - for standard input").complete = COMPLETE_FILE
    json_flag(imp)
    imp.set_defaults(func=cmd_import)


def _add_delete_account(psub) -> None:
    dele = psub.add_parser("delete-account", help=ACTIONS["delete-account"])
    profile_option(dele)
    dele.add_argument("--yes", action="store_true", help="do not ask for confirmation (required without a terminal)")
    json_flag(dele)
    dele.set_defaults(func=cmd_delete_account)


def _add_unlock(psub) -> None:
    ul = psub.add_parser("unlock", help=ACTIONS["unlock"])
    profile_option(ul)
    ul.add_argument("--for", dest="duration", default="15m", metavar="DURATION",
                    help="how long: 90s, 15m, 2h (default 15m, at most 24h)")
    json_flag(ul)
    ul.set_defaults(func=cmd_unlock)


def _add_lock(psub) -> None:
    lk = psub.add_parser("lock", help=ACTIONS["lock"])
    profile_option(lk)
    json_flag(lk)
    lk.set_defaults(func=cmd_lock)


def _add_matches(psub) -> None:
    from rxfed.cli import matches

    matches.add_parsers(psub, profile_option)


def _add_consent(psub) -> None:
    from rxfed.cli import consent

    consent.add_parsers(psub, profile_option)


#: ``rxfed patient`` actions and their one-line help, in the order ``--help`` lists them.
ACTIONS = {
    "register": "create keys and register with a node",
    "recover": "restore access on this device with the recovery code",
    "link": "add this machine as a device of an existing patient, from an active device",
    "devices": "list, add or revoke devices",
    "passphrase": "change the key-file passphrase (new one from RXFED_NEW_PASSPHRASE or a prompt)",
    "recovery-code": "manage the recovery code",
    "condition": "diagnoses",
    "journal": "symptom and mood journal",
    "treatment": "treatments tried",
    "record": "edit or delete a record (a typo, a duplicate)",
    "show": "decrypt and show every record, newest first",
    "sync": "check the vault against what this device saw; after a node restore, see what was lost and accept it",
    "export": "write a FHIR R4 Bundle of every record",
    "import": "encrypt and store a hospital's FHIR export (again: adds only what is new)",
    "delete-account": "erase every record and key of this patient on the node",
    "unlock": "keep the key file open for a while (an agent, as ssh-agent does), so commands need no passphrase",
    "lock": "end the unlock agent now: commands ask for the passphrase again",
    "consent": "grant, list, revoke and export consent",
    "audit": "every use of your signals, from a hash chain checked on this device",
    "signals": "preview the signals your records give (nothing is sent)",
    "share": "send current signals under your live grants",
    "matches": "patients on other nodes who share your diagnosis categories",
}

#: Who builds each action's parser (one builder may add several actions).
_BUILDERS = {
    "register": _add_register, "recover": _add_recover, "link": _add_link, "devices": _add_devices,
    "passphrase": _add_passphrase, "recovery-code": _add_recovery_code, "condition": _add_condition,
    "journal": _add_journal, "treatment": _add_treatment, "record": _add_record, "show": _add_show, "sync": _add_sync,
    "export": _add_export, "import": _add_import, "delete-account": _add_delete_account, "unlock": _add_unlock,
    "lock": _add_lock, ("consent", "audit", "signals", "share"): _add_consent, "matches": _add_matches,
}


def add_parser(sub, words: list[str] | None = None) -> None:
    """``rxfed patient``. With ``words`` (the command line after ``patient``) only the action
    named there is built in full; the others are listed by name and help."""
    p = sub.add_parser("patient", help=HELP["patient"])
    profile_option(p)
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_actions(psub, ACTIONS, _BUILDERS, words, options_with_values=("--profile",))


# -- helpers -------------------------------------------------------------------------------


def _created(out: Output, record, what: str) -> None:
    out.result({"id": record.id, "kind": record.kind, "version": record.version, "data": record.data},
               [f"{what} stored encrypted", record.id])


# -- commands ------------------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> None:
    from rxfed.client import PatientClient

    kdf = kdf_choice(args)
    passphrase = ask_passphrase(new=True)

    async def go():
        client, code = await PatientClient.register(args.node, profile_path(args), passphrase, invite=args.invite,
                                                    kdf=kdf)
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
    passphrase = ask_passphrase(new=True)

    async def go():
        client = await PatientClient.recover(args.node, profile_path(args), code, passphrase, kdf=kdf,
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
    passphrase = ask_passphrase(new=True)
    code = run_async(PatientClient.request_link(args.node, profile_path(args), passphrase, kdf=kdf))
    Output(args.json).result({"link_code": code, "node": args.node}, [
        "on an active device of yours, run:", f"  rxfed patient devices add {code} --profile ...",
        f"then here: rxfed patient link finish --profile {profile_path(args)} --confirm CODE", code])


def cmd_link_finish(args: argparse.Namespace) -> None:
    client = open_client(args, passphrase=True)
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
    device, confirm = with_client(args, lambda c: c.add_device(args.link))
    Output(args.json).result({"device": device, "confirmation": confirm}, [
        f"device {device} enrolled; on it, run `rxfed patient link finish --confirm {confirm}`", confirm])


def cmd_devices_list(args: argparse.Namespace) -> None:
    devices = with_client(args, lambda c: c.devices())
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
    client = open_client(args)
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
    from rxfed.client import agent

    client = open_client(args, passphrase=True)
    new = secret_input("RXFED_NEW_PASSPHRASE", "New passphrase: ", confirm=True)
    check_new_passphrase(new)
    client.change_passphrase(new, args.kdf)
    locked = agent.lock(client.profile.path)
    Output(args.json).result({"changed": True, "locked": locked},
                             ["passphrase changed"] + (["the unlock agent was ended; unlock again with the new "
                                                        "passphrase"] if locked else []))


def cmd_recovery_rotate(args: argparse.Namespace) -> None:
    client = open_client(args)
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
    record = with_client(args, lambda c: c.add_record("condition", data))
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
    record = with_client(args, lambda c: c.add_record("journal", data))
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
    record = with_client(args, lambda c: c.add_record("treatment", data))
    _created(Output(args.json), record, "treatment")


def cmd_show(args: argparse.Namespace) -> None:
    from rxfed.client.records import clinical_date, summary

    found = with_client(args, lambda c: c.records(args.kind))
    # Community memberships hold the member's private keys: never printed, listed on request.
    found = [r if r.kind != "community" else attrs.evolve(r, data={"address": r.data["address"], "name": r.data.get("name")})
             for r in found if args.kind == "community" or r.kind != "community"]
    # Newest first by the day a record is about, then those without one (records() gives
    # newest written first, and the sort keeps that order among equals).
    found.sort(key=lambda r: (clinical_date(r) is not None, clinical_date(r) or ""), reverse=True)

    def lines():
        if not found:
            return ["no records yet"]
        # the id's first 8 characters: enough for `rxfed patient record edit|delete`
        return [f"{clinical_date(r) or 'no date':<10}  {r.kind:<11} {summary(r)}  [{r.id[:8]}]" for r in found]

    Output(args.json).result({"records": [{**r.to_json(), "date": clinical_date(r)} for r in found]}, lines)


def cmd_sync(args: argparse.Namespace) -> int | None:
    """In step, or the report of a node restore this device has not accepted (exit 1), or,
    with ``--accept-restore``, what accepting it uploaded again."""
    if args.accept_restore:
        done = with_client(args, lambda c: c.accept_restore(args.accept_restore))
        Output(args.json).result({"in_step": True, **done}, [
            f"restore {done['restore']} accepted: {len(done['reuploaded'])} record(s) uploaded again, "
            f"{len(done['deleted'])} deleted again"
            + (f", {len(done['not_recoverable'])} this device could not restore" if done["not_recoverable"] else "")])
        return None

    async def check(client):
        report = await client.restore_report()
        return report, client.profile.state().counter

    report, counter = with_client(args, check)
    if report is None:
        Output(args.json).result({"in_step": True, "counter": counter},
                                 [f"in step with the node: vault version {counter}"])
        return None
    Output(args.json).result({"in_step": False, "restore": report.to_json()}, report.lines())
    return 1  # refused until the patient accepts


def cmd_export(args: argparse.Namespace) -> None:
    from rxfed.client.fhir import export_bundle

    to_stdout = args.fhir == "-"
    if to_stdout and args.json:
        raise UsageError("--fhir - writes the Bundle to standard output, where --json would write too: use one")

    async def go(client):
        return client.patient, await client.records()

    patient, found = with_client(args, go)
    bundle = export_bundle([(r.kind, r.data, r.id) for r in found], patient)
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    count = len(bundle.get("entry", []))
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        note(f"wrote {count} FHIR resources")
        return
    write_private(Path(args.fhir), text)
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
    stored, held = with_client(args, lambda c: c.import_records(list(result.records)))
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
    from rxfed.client import agent

    result = with_client(args, lambda c: c.erase_account())
    agent.lock(profile_path(args))
    Output(args.json).result(
        {"erased": True, "patient": result["patient"], "left": result["left"], "not_left": result["not_left"]},
        [*(f"left community {a}" for a in result["left"]),
         *(f"could not leave community {n['address']}: {n['reason']}" for n in result["not_left"]),
         "account erased on the node; the local key file was removed", result["patient"]])


def _find_record(records, given: str):
    """The record ``given`` names: its id, or a unique prefix of it (8 characters or more)."""
    from rxfed.errors import NotFound

    text = given.strip().lower()
    if len(text) < 8:
        raise UsageError(f"{given!r}: give the record id, or at least its first 8 characters")
    found = [r for r in records if r.id.startswith(text)]
    if not found:
        raise NotFound(f"no record {given}", code="unknown_record")
    if len(found) > 1:
        raise UsageError(f"{given!r} starts {len(found)} record ids: give more of it")
    return found[0]


#: The options ``record edit`` takes for each kind of record.
EDITABLE = {
    "condition": ("code", "system", "label", "onset"),
    "journal": ("symptom", "feeling", "note", "phq9", "gad7", "date"),
    "treatment": ("name", "dose", "started", "stopped", "efficacy", "side_effect", "adherence"),
}


def _given(args: argparse.Namespace) -> dict:
    every = {name for names in EDITABLE.values() for name in names}
    return {name: getattr(args, name) for name in every if getattr(args, name) not in (None, [])}


def _edited(kind: str, old: dict, given: dict) -> dict:
    """The record's data with the ``given`` fields changed, checked as a new record of its
    kind is (an empty value clears a field)."""
    from rxfed.client import questionnaires, records

    allowed = EDITABLE.get(kind)
    if allowed is None:
        raise UsageError(f"a {kind} record cannot be edited field by field; delete it instead")
    wrong = sorted(set(given) - set(allowed))
    if wrong:
        raise UsageError(f"--{wrong[0].replace('_', '-')} is not a field of a {kind} record; a {kind} takes "
                         + ", ".join("--" + n.replace("_", "-") for n in allowed))
    if not given:
        raise UsageError("nothing to change: give one of " + ", ".join("--" + n.replace("_", "-") for n in allowed))

    def value(name):
        if name not in given:
            return old.get(name)
        return given[name] if given[name] != "" else None

    if kind == "condition":
        built = records.condition(value("code") or old["code"], value("system") or old["system"], value("label"),
                                  value("onset"))
        return {**old, **{k: built[k] for k in ("system", "code", "label", "onset")}}
    if kind == "journal":
        symptoms = dict(old.get("symptoms") or {})
        for name, score in _symptoms(given.get("symptom", [])).items():
            if score == "":
                symptoms.pop(name.strip().lower(), None)
            else:
                symptoms[name] = score
        kept = [q for q in old.get("questionnaires") or [] if q.get("instrument") not in given]
        scores = [questionnaires.score(name, questionnaires.parse_answers(given[name])).to_dict()
                  for name in ("phq9", "gad7") if given.get(name)]
        built = records.journal(symptoms=symptoms, feeling=value("feeling"), note=value("note"),
                                questionnaires=kept + scores, date=value("date") or old.get("date"))
        return {**old, **built}
    effects = old.get("side_effects") or []
    if "side_effect" in given:
        effects = [e for e in given["side_effect"] if e.strip()]
    built = records.treatment(value("name") or old["name"], dose=value("dose"), started=value("started"),
                              stopped=value("stopped"), efficacy=value("efficacy"), side_effects=effects,
                              adherence=value("adherence"))
    fields = ("name", "dose", "started", "stopped", "efficacy", "side_effects", "adherence")
    return {**old, **{k: built[k] for k in fields}}


def _resolve(client, given: str):
    async def find():
        return _find_record(await client.records(), given)

    return find()


def cmd_record_edit(args: argparse.Namespace) -> None:
    given = _given(args)

    async def go(client):
        record = await _resolve(client, args.record)
        return await client.edit_record(record.id, lambda current: _edited(current.kind, current.data, given))

    record = with_client(args, go)
    Output(args.json).result({"id": record.id, "kind": record.kind, "version": record.version, "data": record.data},
                             [f"{record.kind} updated (version {record.version})", record.id])


def cmd_record_delete(args: argparse.Namespace) -> None:
    from rxfed.client.records import summary

    async def go(client):
        record = await _resolve(client, args.record)
        return await client.delete_record(record.id)

    record = with_client(args, go)
    Output(args.json).result({"id": record.id, "kind": record.kind, "deleted": True},
                             [f"deleted {record.kind}: {summary(record)}", record.id])


def cmd_unlock(args: argparse.Namespace) -> None:
    from rxfed.client import Profile, agent

    seconds = agent.parse_duration(args.duration)
    path = profile_path(args)
    profile = Profile(path)
    identity = profile.unlock(ask_passphrase())
    started = agent.start(path, identity.to_bytes(), seconds)
    until = dt.datetime.fromtimestamp(started["expires"]).strftime("%H:%M:%S")
    Output(args.json).result(
        {"profile": str(path), "expires": started["expires"], "socket": started["socket"], "pid": started["pid"]},
        [f"unlocked {path} until {until}: commands need no passphrase until then (`rxfed patient lock` ends it "
         "sooner)", str(started["expires"])])


def cmd_lock(args: argparse.Namespace) -> None:
    from rxfed.client import agent

    path = profile_path(args)
    locked = agent.lock(path)
    Output(args.json).result({"profile": str(path), "locked": locked},
                             [f"locked {path}: the agent ended" if locked else f"no unlock agent held {path}"])
