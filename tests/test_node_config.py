"""A node's rxfed.toml: written as valid TOML, every setting checked at start-up and by
``rxfed node check`` (one line per problem, exit 1), bad command-line values exit 2."""

from __future__ import annotations

import os
import tomllib

import pytest

from rxfed.cli import main
from rxfed.node.admin import init_node
from rxfed.node.config import NodeConfig


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def node_dir(tmp_path):
    init_node(tmp_path / "n", name="config test", port=18471)
    return tmp_path / "n"


def edit(node_dir, old: str, new: str) -> None:
    path = node_dir / "rxfed.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_init_writes_toml_the_node_reads_back(tmp_path, capsys):
    name = 'Hôpital 🏥 Saint-Éloi "Nord" \\ \x7f'
    code, _, err = run(capsys, "node", "init", str(tmp_path / "h"), "--name", name, "--port", "18472")
    assert code == 0, err
    assert tomllib.loads((tmp_path / "h" / "rxfed.toml").read_text())["node"]["name"] == name
    assert NodeConfig.load(tmp_path / "h").name == name
    assert "# registration: open" in (tmp_path / "h" / "rxfed.toml").read_text()  # comments kept
    assert run(capsys, "node", "check", str(tmp_path / "h"))[:2] == (0, "configuration ok\n")


@pytest.mark.parametrize("old,new,expected", [
    ('registration = "open"', 'registation = "invite"', "[node] registation: unknown setting"),
    ("[limits]", "[limit]", "[limit]: unknown section"),
    ('file = "node.log"', 'fille = "x.log"', "[logging] fille: unknown setting"),
    ('cert = ""', 'certificate = "c.pem"', "[tls] certificate: unknown setting"),
    ("port = 18471", "port = 8480.9", "[node] port: must be a whole number"),
    ("port = 18471", "port = 80000", "[node] port: must be a whole number from 1 to 65535"),
    ("burst = 200", 'burst = "lots"', "[limits] burst: must be a whole number"),
    ("max_body_bytes = 1048576", "max_body_bytes = -5", "[limits] max_body_bytes: must be a whole number from"),
    ('disabled = []', 'disabled = "outcomes"', "[plugins] disabled: must be a list of names"),
    ('disabled = []', 'disabled = ["outcome"]', "no installed plugin is named 'outcome'; the installed plugins are"),
    ('backend = "sqlite"', 'backend = "sqlite"\nsynchronous = "FULLL"',
     "[storage] synchronous: must be one of 'FULL', 'EXTRA', 'NORMAL', not 'FULLL'"),
    ('registration = "open"', 'registration = "invitation"', "[node] registration: must be one of 'open', 'invite'"),
    ('mode = "open"', 'mode = "closed"', "[federation] mode: must be one of 'open', 'allowlist'"),
    ("signal_delay = 60", "signal_delay = true", "[federation] signal_delay: must be a whole number"),
    ("requests_per_second = 50.0", "requests_per_second = 0", "[limits] requests_per_second: must be a number above"),
    ("max_connections = 10000", "max_connections = 10", "[limits] max_connections: must be a whole number from 16"),
    ("keepalive_timeout = 20.0", 'keepalive_timeout = "long"', "[limits] keepalive_timeout: must be a number"),
    ("keepalive_timeout = 20.0", "keepalive_timeout = 0", "[limits] keepalive_timeout: must be a number above 0"),
    ('ca_bundle = ""', "ca_bundle = 1", "[federation] ca_bundle: must be a string"),
    ('access = ""', "access = true", "[logging] access: must be a string"),
    ('listen = ""', 'listen = "localhost"', "[metrics] listen: must be host:port"),
    ('listen = ""', 'listen = "127.0.0.1:99999"', "[metrics] listen: must be host:port"),
    ('listen = ""', 'listen = 9470', "[metrics] listen: must be a string"),
    ('listen = ""', 'listen = ":9470"\ntoken = "x"', "[metrics] token: unknown setting"),
    ('forwarded_header = "X-Forwarded-For"', 'forwarded_header = "X-Real-IP"',
     "[node] forwarded_header: must be one of X-Forwarded-For, Forwarded, not 'X-Real-IP'"),
])
def test_bad_setting_is_one_line_naming_it(node_dir, capsys, old, new, expected):
    edit(node_dir, old, new)
    for argv in (("node", "check", str(node_dir)), ("node", "run", str(node_dir)), ("node", "status", str(node_dir))):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "", err
        lines = err.splitlines()
        assert len(lines) == 1 and expected in lines[0] and "rxfed.toml" in lines[0], err
        assert "Traceback" not in err


def test_every_problem_is_listed(node_dir, capsys):
    edit(node_dir, 'registration = "open"', 'registation = "invite"')
    edit(node_dir, "burst = 200", 'burst = "lots"')
    code, _, err = run(capsys, "node", "check", str(node_dir))
    assert code == 1 and len(err.splitlines()) == 2


def test_missing_and_misshapen_sections(node_dir, capsys):
    edit(node_dir, 'name = "config test"\n', "")
    edit(node_dir, "[limits]\n", "[old_limits]\n")
    edit(node_dir, "# rxfed node configuration", "limits = 3  # a key before any section\n# rxfed node configuration")
    code, _, err = run(capsys, "node", "check", str(node_dir))
    assert code == 1 and "[node] name: missing; it is required" in err and "[limits]: must be a table" in err
    assert "[old_limits]: unknown section" in err and "Traceback" not in err


def test_port_out_of_range_on_the_command_line_is_bad_usage(node_dir, capsys):
    code, _, err = run(capsys, "node", "run", str(node_dir), "--port", "80000")
    assert code == 2 and "ports are from 1 to 65535" in err


def test_relative_tls_paths_are_inside_the_data_dir(node_dir, capsys, tmp_path, monkeypatch):
    from test_node_ops import _self_signed

    cert, key = _self_signed(node_dir)
    os.rename(cert, node_dir / "c.pem")
    os.rename(key, node_dir / "k.pem")
    edit(node_dir, 'cert = ""\nkey = ""', 'cert = "c.pem"\nkey = "k.pem"')
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "node", "check", str(node_dir))[:2] == (0, "configuration ok\n")
    edit(node_dir, 'cert = "c.pem"\nkey = "k.pem"', 'cert = "k.pem"\nkey = "c.pem"')
    code, _, err = run(capsys, "node", "check", str(node_dir))
    assert code == 1 and "swapped" in err and len(err.splitlines()) == 1
    edit(node_dir, 'cert = "k.pem"', 'cert = "missing.pem"')
    code, _, err = run(capsys, "node", "check", str(node_dir))
    assert code == 1 and f"{node_dir / 'missing.pem'} does not exist" in err


def test_database_newer_than_the_code_is_one_line(node_dir, capsys):
    import sqlite3

    with sqlite3.connect(node_dir / "rxfed.db") as conn:
        conn.execute("PRAGMA user_version=9999")
    code, _, err = run(capsys, "node", "status", str(node_dir))
    assert code == 1 and len(err.splitlines()) == 1 and "newer than this rxfed" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_data_dir_under_status_is_one_line(node_dir, capsys):
    os.chmod(node_dir, 0o500)
    try:
        code, _, err = run(capsys, "node", "status", str(node_dir))
    finally:
        os.chmod(node_dir, 0o700)
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
