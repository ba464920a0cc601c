"""The clinician verification backends: the ``npi`` and ``hospital-directory`` plugins, and
how the plugin manager chooses and runs them by configured name."""

from __future__ import annotations

import json

import pytest

from rxfed import BackendVerdict, ClinicianVerifier, hookimpl
from rxfed.crypto import SigningKeyPair
from rxfed.plugins import PluginError, RxfedPlugins
from rxfed.protocol.credentials import Clinician
from rxfed_plugins import clinician_directory, clinician_npi

ENDO = "207RE0101X"
NPI = "1234567893"
KEY = SigningKeyPair.generate().public

NPPES_HEADER = ('"NPI","Entity Type Code","Provider Last Name (Legal Name)","Provider First Name",'
                '"NPI Deactivation Date","NPI Reactivation Date","Healthcare Provider Taxonomy Code_1",'
                '"Healthcare Provider Taxonomy Code_2"')


def clinician(**changes) -> Clinician:
    fields = {"name": "Ada Lovelace", "npi": NPI, "staff_id": "E-1001", **changes}
    return Clinician.create(KEY, fields.pop("role", "physician"), fields.pop("specialty", ENDO),
                            "Endocrinology", **fields)


@pytest.fixture
def plugins():
    pm = RxfedPlugins(entry_points=False)
    pm.register(clinician_npi, "clinician-npi")
    pm.register(clinician_directory, "clinician-directory")
    yield pm
    pm.close()


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "nppes.csv"
    path.write_text("\n".join([
        NPPES_HEADER,
        f'"{NPI}","1","LOVELACE","ADA","","","{ENDO}","207R00000X"',
        '"1245319599","1","BABBAGE","CHARLES","05/01/2020","","207Q00000X",""',
        '"1999999992","2","","","","","261QM0801X",""',
        '"1000000004","1","HOPPER","GRACE","05/01/2020","06/01/2021","207Q00000X",""',
    ]) + "\n")
    return path


def verdicts(plugins, configured, who):
    return [(v.backend, v.accepted) for v in plugins.vet_clinician(who, configured)]


def test_both_backends_are_offered_by_name(plugins):
    assert set(plugins.clinician_verifiers()) == {"npi", "hospital-directory"}
    with pytest.raises(PluginError, match="'nppes-live' not found .*is the plugin that provides it installed"):
        plugins.clinician_verifier("nppes-live")


def test_npi_check_digit_alone(plugins):
    assert verdicts(plugins, {"npi": {}}, clinician()) == [("npi", True)]
    [verdict] = plugins.vet_clinician(clinician(npi=None), {"npi": {}})
    assert not verdict.accepted and verdict.reason == "no NPI was given"


def test_npi_registry_checks(plugins, registry):
    config = {"npi": {"registry": str(registry)}}
    assert verdicts(plugins, config, clinician()) == [("npi", True)]
    cases = {
        "is not in the registry nppes.csv": clinician(npi="2000000002"),
        "is deactivated": clinician(npi="1245319599", specialty="207Q00000X", name="Charles Babbage"),
        "belongs to an organisation": clinician(npi="1999999992"),
        "with taxonomy 207R00000X, 207RE0101X, not 207Q00000X": clinician(specialty="207Q00000X"),
        "last name": clinician(name="Ada Byron"),
    }
    for reason, who in cases.items():
        [verdict] = plugins.vet_clinician(who, config)
        assert not verdict.accepted and reason in verdict.reason, verdict
    # Reactivated after its deactivation: listed again.
    assert verdicts(plugins, config, clinician(npi="1000000004", specialty="207Q00000X", name="Grace Hopper")) == [
        ("npi", True)]


def test_npi_backend_refuses_bad_configuration(plugins, tmp_path):
    (tmp_path / "x.csv").write_text("name,number\nA,1\n")
    with pytest.raises(PluginError, match="needs an NPI column"):
        plugins.vet_clinician(clinician(), {"npi": {"registry": str(tmp_path / "x.csv")}})
    with pytest.raises(PluginError, match="cannot start"):
        plugins.vet_clinician(clinician(), {"npi": {"registry": str(tmp_path / "missing.csv")}})
    with pytest.raises(PluginError, match="unknown option 'url'"):
        plugins.vet_clinician(clinician(), {"npi": {"url": "https://npiregistry.cms.hhs.gov"}})


STAFF = [
    {"staff_id": "E-1001", "name": "Ada Lovelace", "npi": NPI, "role": "physician", "specialty": ENDO, "active": True},
    {"staff_id": "E-1002", "name": "Mary Seacole", "npi": "", "role": "nurse", "specialty": "163W00000X",
     "active": False},
]


@pytest.mark.parametrize("fmt", ["json", "json-object", "csv", "csv-columns"])
def test_directory_accepts_active_staff_with_matching_claims(plugins, tmp_path, fmt):
    options: dict = {}
    if fmt.startswith("json"):
        path = tmp_path / "staff.json"
        path.write_text(json.dumps(STAFF if fmt == "json" else {"staff": STAFF}))
    else:
        path = tmp_path / "staff.csv"
        names = {"staff_id": "Employee ID", "specialty": "Taxonomy"} if fmt == "csv-columns" else {}
        header = [names.get(f, f) for f in clinician_directory.FIELDS]
        rows = [",".join(header)] + [",".join(str(s[f]).lower() if f == "active" else str(s[f])
                                              for f in clinician_directory.FIELDS) for s in STAFF]
        path.write_text("\n".join(rows) + "\n")
        if names:
            options["columns"] = names
    config = {"hospital-directory": {"path": str(path), **options}}
    assert verdicts(plugins, config, clinician()) == [("hospital-directory", True)]
    assert verdicts(plugins, config, clinician(staff_id=None)) == [("hospital-directory", True)]  # by NPI
    cases = {
        "is not in the staff directory": clinician(staff_id="E-9999"),
        "is not active": clinician(staff_id="E-1002", role="nurse", specialty="163W00000X", npi=None),
        "the role 'physician', not 'pharmacist'": clinician(role="pharmacist"),
        "the specialty": clinician(specialty="207Q00000X"),
        "another NPI": clinician(npi="1245319599"),
        "another name": clinician(name="Ada Byron"),
        "neither a staff id nor an NPI": clinician(staff_id=None, npi=None),
    }
    for reason, who in cases.items():
        [verdict] = plugins.vet_clinician(who, config)
        assert not verdict.accepted and reason in verdict.reason, verdict


def test_directory_refuses_bad_configuration(plugins, tmp_path):
    with pytest.raises(PluginError, match="needs path"):
        plugins.vet_clinician(clinician(), {"hospital-directory": {}})
    (tmp_path / "staff.json").write_text('{"people": []}')
    with pytest.raises(PluginError, match="a list of objects"):
        plugins.vet_clinician(clinician(), {"hospital-directory": {"path": str(tmp_path / "staff.json")}})
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(PluginError, match="not JSON"):
        plugins.vet_clinician(clinician(), {"hospital-directory": {"path": str(tmp_path / "bad.json")}})
    (tmp_path / "odd.csv").write_text("staff_id,active\nE-1,maybe\n")
    with pytest.raises(PluginError, match="not yes/no"):
        plugins.vet_clinician(clinician(), {"hospital-directory": {"path": str(tmp_path / "odd.csv")}})


def test_every_configured_backend_answers(plugins, registry, tmp_path):
    (tmp_path / "staff.json").write_text(json.dumps(STAFF))
    config = {"npi": {"registry": str(registry)}, "hospital-directory": {"path": str(tmp_path / "staff.json")}}
    assert verdicts(plugins, config, clinician()) == [("npi", True), ("hospital-directory", True)]
    assert verdicts(plugins, config, clinician(name="Ada Byron")) == [("npi", False), ("hospital-directory", False)]


class Broken:
    """A third-party backend with a bug, and one that lies about its name."""

    @hookimpl
    def rxfed_clinician_verifiers(self):
        def raises(options):
            return lambda clinician: 1 / 0

        def impostor(options):
            return lambda clinician: BackendVerdict("npi", True, "trust me")

        return [ClinicianVerifier("broken", "raises", raises), ClinicianVerifier("liar", "names another", impostor),
                ClinicianVerifier("wrong-type", "answers True", lambda options: lambda clinician: True)]


def test_a_failing_backend_refuses_and_never_vouches(plugins):
    plugins.register(Broken(), "broken")
    got = plugins.vet_clinician(clinician(), {"broken": {}, "liar": {}, "wrong-type": {}})
    assert [(v.backend, v.accepted) for v in got] == [("broken", False), ("liar", True), ("wrong-type", False)]
    assert "ZeroDivisionError" in got[0].reason and "not a BackendVerdict" in got[2].reason


def test_two_plugins_offering_one_name_is_an_error(plugins):
    class Twin:
        @hookimpl
        def rxfed_clinician_verifiers(self):
            return [ClinicianVerifier("npi", "another npi", lambda options: None)]

    plugins.register(Twin(), "twin")
    with pytest.raises(PluginError, match="two plugins offer a clinician verifier named 'npi'"):
        plugins.clinician_verifiers()
