"""The unlock agent (``rxfed patient unlock``): commands skip the Argon2id derivation while
it runs, and it gives the keys it holds to no other user, no other profile and no one after
its deadline, and never writes them to disk."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rxfed.client import agent
from rxfed.client.profile import Profile
from test_cli import ENV, node_url, rxfed  # noqa: F401  (node_url is a fixture)

PASSPHRASE = ENV["RXFED_PASSPHRASE"]


@pytest.fixture
def runtime(monkeypatch):
    """A private runtime directory for this test's agents, never the user's real one (short:
    a unix socket's path has room for about 100 bytes)."""
    import shutil
    import tempfile

    run = Path(tempfile.mkdtemp(prefix="rxfed-test-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    yield run
    shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def env(runtime):
    """The CLI's environment with the test's runtime directory and no passphrase."""
    return {**{k: v for k, v in ENV.items() if k != "RXFED_PASSPHRASE"}, "XDG_RUNTIME_DIR": str(runtime)}


class UnlockedProfile(type(Path())):
    pid: int
    socket: Path


def register(node_url, path: Path, env: dict) -> Path:
    out = rxfed("patient", "register", "--node", node_url, "--profile", str(path),
                env={**env, "RXFED_PASSPHRASE": PASSPHRASE})
    assert out.returncode == 0, out.stderr
    return path


@pytest.fixture
def unlocked(node_url, tmp_path, env):
    """A registered profile, unlocked for five minutes; locked again afterwards."""
    path = UnlockedProfile(register(node_url, tmp_path / "profile", env))
    out = rxfed("patient", "unlock", "--profile", str(path), "--for", "5m", "--json",
                env={**env, "RXFED_PASSPHRASE": PASSPHRASE})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    path.pid, path.socket = doc["pid"], Path(doc["socket"])
    yield path
    rxfed("patient", "lock", "--profile", str(path), env=env)


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_unlocked_commands_need_no_passphrase_and_lock_ends_it(unlocked, env, runtime):
    p = str(unlocked)
    doc = json.loads(rxfed("patient", "condition", "add", "--profile", p, "G40", "--json", env=env).stdout)
    assert doc["data"]["code"] == "G40"
    shown = rxfed("patient", "show", "--profile", p, "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["records"][0]["id"] == doc["id"]
    # The socket: 0600, in a 0700 directory of ours; the directory holds nothing else.
    sock = unlocked.socket
    assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.lstat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and sock.parent.stat().st_uid == os.getuid()
    assert sorted(os.listdir(sock.parent)) == [sock.name]
    out = rxfed("patient", "lock", "--profile", p, "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["locked"] is True
    assert gone(unlocked.pid) and not sock.exists()
    locked = rxfed("patient", "show", "--profile", p, env=env)
    assert locked.returncode == 2 and "RXFED_PASSPHRASE" in locked.stderr
    assert json.loads(rxfed("patient", "lock", "--profile", p, "--json", env=env).stdout)["locked"] is False


def test_the_agent_writes_no_key_to_disk(unlocked, env, tmp_path):
    identity = Profile(unlocked).unlock(PASSPHRASE)
    secrets = [identity.device.seed, identity.box.secret]
    import base64

    needles = [form for s in secrets for form in (s, base64.b64encode(s), base64.urlsafe_b64encode(s).rstrip(b"="))]
    assert rxfed("patient", "journal", "add", "--profile", str(unlocked), "--feeling", "5", env=env).returncode == 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(n in data for n in needles), path


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_the_agent_is_not_given_the_passphrase(unlocked):
    """`unlock` read RXFED_PASSPHRASE from its environment; the agent's has none of it."""
    environ = Path(f"/proc/{unlocked.pid}/environ").read_bytes()
    assert b"RXFED_PASSPHRASE" not in environ and PASSPHRASE.encode() not in environ


def test_another_profile_gets_nothing_from_the_agent(unlocked, node_url, tmp_path, env):
    other = register(node_url, tmp_path / "other", env)
    assert rxfed("patient", "condition", "add", "--profile", str(unlocked), "E11", env=env).returncode == 0
    # The other profile has no agent: its commands ask for its own passphrase.
    out = rxfed("patient", "show", "--profile", str(other), env=env)
    assert out.returncode == 2 and "RXFED_PASSPHRASE" in out.stderr and "E11" not in out.stdout
    assert agent.identity_bytes(other) is None
    # Asking the unlocked profile's agent for another profile, or another key file, is refused.
    sock = agent.socket_path(unlocked)
    for request in ({"op": "identity", "profile": agent.real_profile(other), "keyfile": agent.keyfile_digest(other)},
                    {"op": "identity", "profile": agent.real_profile(unlocked),
                     "keyfile": agent.keyfile_digest(other)}):
        answer = agent._ask(sock, request)
        assert answer == {"ok": False, "error": answer["error"]} and "identity" not in answer
    assert agent.identity_bytes(unlocked) is not None  # it still serves its own profile
    # A symlink to the profile is the same profile.
    link = tmp_path / "link"
    link.symlink_to(unlocked)
    assert agent.identity_bytes(link) == agent.identity_bytes(unlocked)


def test_a_key_file_replaced_under_the_agent_ends_it(unlocked, node_url, tmp_path, env):
    other = register(node_url, tmp_path / "other", env)
    (unlocked / "keys.json").write_bytes((other / "keys.json").read_bytes())
    assert agent.identity_bytes(unlocked) is None  # the key file is not the one unlocked
    assert agent._ask(agent.socket_path(unlocked), {"op": "identity", "profile": agent.real_profile(unlocked),
                                                      "keyfile": agent.keyfile_digest(other)}) is None
    assert gone(unlocked.pid)


@pytest.mark.skipif(not hasattr(os, "setuid") or os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_gets_no_answer_even_through_open_permissions(unlocked, runtime):
    """SO_PEERCRED: with the directories and socket opened to everyone by mistake, a process
    of another user still gets not a byte."""
    sock = unlocked.socket
    for opened in (runtime, sock.parent):
        os.chmod(opened, 0o755)
    os.chmod(sock, 0o777)
    request = {"op": "identity", "profile": agent.real_profile(unlocked), "keyfile": agent.keyfile_digest(unlocked)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: user nobody
        try:
            import socket

            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(sock))
                s.sendall(json.dumps(request).encode() + b"\n")
                answer = s.recv(65536)
            os.write(write, b"connected:" + answer)
        except BaseException as exc:
            os.write(write, f"error:{exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    result = os.read(read, 65536)
    os.close(read)
    for opened in (runtime, sock.parent):
        os.chmod(opened, 0o700)
    os.chmod(sock, 0o600)
    # It reached the agent (no PermissionError), which closed the connection without a word.
    assert result in (b"connected:", b"error:BrokenPipeError(32, 'Broken pipe')",
                      b"error:ConnectionResetError(104, 'Connection reset by peer')"), result
    assert agent.identity_bytes(unlocked) is not None  # and went on serving its user


def test_an_unsafe_runtime_directory_is_refused(node_url, tmp_path, env, runtime):
    path = register(node_url, tmp_path / "profile", env)
    unsafe = runtime / "rxfed"
    unsafe.mkdir(mode=0o755)
    os.chmod(unsafe, 0o755)
    out = rxfed("patient", "unlock", "--profile", str(path), env={**env, "RXFED_PASSPHRASE": PASSPHRASE})
    assert out.returncode == 1 and "0700" in out.stderr
    assert os.listdir(unsafe) == []
    unsafe.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    unsafe.symlink_to(elsewhere)
    out = rxfed("patient", "unlock", "--profile", str(path), env={**env, "RXFED_PASSPHRASE": PASSPHRASE})
    assert out.returncode == 1 and os.listdir(elsewhere) == []


def serving(profile: Path, seconds: float) -> tuple[agent.Agent, threading.Thread]:
    """An agent for ``profile`` (a key file of its own) serving on a thread of this process."""
    profile.mkdir()
    (profile / "keys.json").write_bytes(b"{}")
    path = agent._private_dir() / agent.socket_path(profile).name
    served = agent.Agent(path, agent.real_profile(profile), agent.keyfile_digest(profile), b"secret",
                         time.time() + seconds, tick=0.05)
    served.bind()
    thread = threading.Thread(target=served.serve)
    thread.start()
    return served, thread


def test_the_agent_ends_at_its_deadline(tmp_path, runtime):
    profile = tmp_path / "p"
    served, thread = serving(profile, 0.3)
    path = served.path
    assert agent.identity_bytes(profile) == b"secret"
    thread.join(2)
    assert not thread.is_alive() and not path.exists()
    assert agent.identity_bytes(profile) is None
    assert served.identity == bytearray(len(b"secret"))  # wiped


def test_the_agent_ends_when_its_socket_is_taken_away(tmp_path, runtime):
    served, thread = serving(tmp_path / "p", 60)
    served.path.unlink()
    thread.join(2)
    assert not thread.is_alive()


@pytest.mark.parametrize("text", ["15", "0s", "25h", "1d", "m", "-5m", "1.5h"])
def test_unlock_durations_are_checked(text, tmp_path, env):
    out = rxfed("patient", "unlock", "--profile", str(tmp_path), "--for", text, env=env)
    assert out.returncode == 2 and "--for" in out.stderr


def test_an_unlocked_cli_command_imports_no_heavy_library(unlocked, env):
    """With the agent, a command's own time is mostly imports: it must not pull in aiohttp
    (its import alone costs more than the 150 ms budget), the FHIR models or pluggy; nor,
    once the plugin index knows the installed plugins, importlib.metadata or a plugin
    (`community post` loads only the plugins that check messages: the built-in moderation
    plugin, and with it pluggy). bench/cli_latency.py measures the time itself."""
    created = rxfed("community", "create", "Timing", "--profile", str(unlocked), "--json", env=env)
    assert created.returncode == 0, created.stderr
    address = json.loads(created.stdout)["address"]
    assert rxfed("community", "post", address, "warm the index", "--profile", str(unlocked), env=env).returncode == 0
    for args in (["patient", "show"], ["patient", "journal", "add", "--feeling", "4"], ["patient", "condition", "add",
                                                                                         "I10"],
                 ["community", "post", address, "hello"]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "rxfed", *args, "--profile", str(unlocked)],
                             capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        checks = {"pluggy", "rxfed.plugins", "rxfed_plugins", "rxfed_plugins.moderation"} if args[0] == "community" else set()
        heavy = {name for name in imported if (name.split(".")[0] in ("aiohttp", "fhir", "pydantic", "pluggy",
                                                                       "rxfed_plugins")
                                               or name in ("importlib.metadata", "rxfed.plugins"))
                 and name not in checks and name.split(".")[0] not in checks - {"rxfed_plugins"}}
        assert not heavy, (args, sorted(heavy)[:10])
