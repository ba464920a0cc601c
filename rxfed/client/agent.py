"""The unlock agent: one profile's opened key file, held in memory for a while by a process
of the patient's own, so commands skip the Argon2id derivation (as ssh-agent and gpg-agent do).

``rxfed patient unlock --for 15m`` opens the key file once and hands its contents, through a
pipe, to a new agent process; the agent listens on a unix socket of mode 0600 in a
directory of mode 0700 that belongs to the user (``$XDG_RUNTIME_DIR/rxfed``, else
``$TMPDIR/rxfed-UID``, ``/tmp/rxfed-UID``), answers only peers of the same user id (``SO_PEERCRED`` where the
system has it), and only for the profile it holds: the request names the profile's real
path and the SHA-256 of its ``keys.json`` as it is on disk now, and both must be the ones
the agent was started for. It writes nothing but its socket, refuses to be traced or to
dump core, and exits at its deadline (wall clock, so a suspended laptop does not stretch
it), on ``rxfed patient lock``, when its socket is removed or replaced, and when the key
file it serves changed on disk. spec/cli.md ("The unlock agent") gives the argument.

The protocol is one JSON line each way per connection: ``{"op": "identity", "profile",
"keyfile"}`` answers ``{"ok": true, "identity": B64}``; ``{"op": "status"}`` answers the
profile and the deadline; ``{"op": "lock"}`` ends the agent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import time
from pathlib import Path

from rxfed.errors import BadRequest, RxfedError

#: Default and longest time an unlock lasts, in seconds.
DEFAULT_SECONDS = 15 * 60
MAX_SECONDS = 24 * 3600
#: How often the agent wakes to check its deadline and its socket.
TICK = 1.0
#: The longest a client may take to send its request (a stalled peer must not hold the agent).
REQUEST_TIMEOUT = 2.0
MAX_REQUEST = 16 * 1024
#: Environment variables the agent process is not given.
SECRET_VARIABLES = ("RXFED_PASSPHRASE", "RXFED_NEW_PASSPHRASE", "RXFED_RECOVERY_CODE")


class AgentError(RxfedError):
    """The unlock agent cannot be used safely (its directory is not private, ...)."""

    status = 403
    code = "agent_unsafe"


def runtime_dir() -> Path:
    """The directory the agents' sockets live in: private to this user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and _is_private(Path(base)):
        return Path(base) / "rxfed"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"rxfed-{os.getuid()}"


def _is_private(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def _private_dir() -> Path:
    """The runtime directory, made if missing; refused unless it is this user's, mode 0700."""
    path = runtime_dir()
    if len(os.fsencode(path)) > 60:
        raise AgentError(f"{path} is too long a path for a unix socket; set XDG_RUNTIME_DIR to a shorter private "
                         "directory", code="agent_path_too_long")
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    if not _is_private(path):
        raise AgentError(f"{path} is not a directory of this user with mode 0700 (a symlink, another user's, or "
                         "open to others): the unlock agent will not use it")
    return path


def _usable_socket(profile: str | os.PathLike) -> Path | None:
    """The agent socket of ``profile`` if it may be trusted: a socket of this user's, in a
    private directory (anything else is never connected to: it is not our agent)."""
    path = socket_path(profile)
    if not _is_private(path.parent):
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid() else None


def real_profile(profile: str | os.PathLike) -> str:
    return str(Path(profile).expanduser().resolve())


def socket_path(profile: str | os.PathLike) -> Path:
    """The agent socket of ``profile``: one per real profile path."""
    digest = hashlib.sha256(real_profile(profile).encode()).hexdigest()[:24]
    return runtime_dir() / f"agent-{digest}.sock"


def keyfile_digest(profile: str | os.PathLike) -> str | None:
    try:
        return hashlib.sha256((Path(profile).expanduser() / "keys.json").read_bytes()).hexdigest()
    except OSError:
        return None


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a unix socket, where the system says."""
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[1]
    return None  # elsewhere the 0700 directory and 0600 socket are the whole guard


# -- the client side ---------------------------------------------------------------------


def _ask(path: Path | None, request: dict, *, timeout: float = REQUEST_TIMEOUT) -> dict | None:
    """One request to the agent at ``path``; None when no agent answers there."""
    if path is None:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            uid = peer_uid(sock)
            if uid is not None and uid != os.getuid():
                return None
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def identity_bytes(profile: str | os.PathLike) -> bytes | None:
    """The opened key file of ``profile`` from its agent, or None when no agent holds it
    (none runs, it expired, or the key file on disk is not the one it was unlocked from)."""
    digest = keyfile_digest(profile)
    if digest is None:
        return None
    answer = _ask(_usable_socket(profile), {"op": "identity", "profile": real_profile(profile), "keyfile": digest})
    if not answer or not answer.get("ok"):
        return None
    try:
        return base64.b64decode(answer["identity"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None


def status(profile: str | os.PathLike) -> dict | None:
    """``{"profile", "expires"}`` of the agent holding ``profile``, or None."""
    answer = _ask(_usable_socket(profile), {"op": "status"})
    return answer if answer and answer.get("ok") else None


def lock(profile: str | os.PathLike) -> bool:
    """End the agent holding ``profile``; True when one was running."""
    path = _usable_socket(profile)
    answer = _ask(path, {"op": "lock"})
    if answer is None:
        if path is not None:  # no one answers: a socket left behind by an agent that was killed
            path.unlink(missing_ok=True)
        return False
    return bool(answer.get("ok"))


def parse_duration(text: str) -> int:
    """Seconds in ``90s``, ``15m``, ``2h`` (at most a day)."""
    text = (text or "").strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise BadRequest(f"--for takes a duration like 90s, 15m or 2h, not {text!r}", code="bad_duration")
    seconds = int(text[:-1]) * units[text[-1]]
    if not 1 <= seconds <= MAX_SECONDS:
        raise BadRequest("--for must be from 1s to 24h", code="bad_duration")
    return seconds


def start(profile: str | os.PathLike, identity: bytes, seconds: int) -> dict:
    """Start an agent holding ``identity`` (the opened key file of ``profile``) for
    ``seconds``, ending one that held the profile before. Returns its status."""
    parse_duration(f"{seconds}s")
    _private_dir()
    lock(profile)
    import select
    import subprocess

    request = {"profile": real_profile(profile), "keyfile": keyfile_digest(profile), "seconds": seconds,
               "identity": base64.b64encode(identity).decode()}
    # The agent gets the opened key file and nothing else secret: not the passphrase or a
    # recovery code the starting command's environment may hold.
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES} | {"PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rxfed.client.agent"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.close()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""
    except OSError:
        line = b""
    finally:
        proc.stdout.close()
    try:
        doc = json.loads(line)
    except ValueError:
        doc = {}
    if not doc.get("ok") and proc.poll() is None:
        proc.kill()
    if not doc.get("ok"):
        raise AgentError(f"the unlock agent did not start: {doc.get('error') or 'no answer'}", code="agent_failed")
    return {"profile": doc["profile"], "expires": doc["expires"], "socket": doc["socket"], "pid": doc["pid"]}


# -- the agent itself --------------------------------------------------------------------


def _harden() -> None:
    """No core dumps, and (Linux) no ptrace or /proc/PID/mem reads by other processes of the
    same user (PR_SET_DUMPABLE 0, as ssh-agent does)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
        except (OSError, AttributeError):
            pass


class Agent:
    """Serves one profile's opened key file on ``path`` until ``expires`` (unix time)."""

    def __init__(self, path: Path, profile: str, keyfile: str, identity: bytes, expires: float, *,
                 tick: float = TICK, clock=time.time):
        self.path, self.profile, self.keyfile = path, profile, keyfile
        self.identity = bytearray(identity)
        self.expires, self.tick, self.clock = expires, tick, clock
        self.sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self.refused = 0

    def bind(self) -> None:
        """Listen on a fresh socket of mode 0600, then move it into place (atomic)."""
        tmp = self.path.with_name(f".tmp-{os.getpid()}")
        old = os.umask(0o177)
        try:
            tmp.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        sock.listen(8)
        os.replace(tmp, self.path)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.sock = sock

    def _still_mine(self) -> bool:
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _key_file_unchanged(self) -> bool:
        return keyfile_digest(self.profile) == self.keyfile

    def serve(self) -> None:
        """Answer requests until the deadline, ``lock``, or the socket or key file changes."""
        try:
            while self.clock() < self.expires and self._still_mine():
                self.sock.settimeout(max(0.01, min(self.tick, self.expires - self.clock())))
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    if not self._answer(conn):
                        return
        finally:
            self.close()

    def _answer(self, conn: socket.socket) -> bool:
        """Answer one connection; False when the agent must end."""
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            self.refused += 1
            return True  # not a word to another user
        conn.settimeout(REQUEST_TIMEOUT)
        data = b""
        try:
            while not data.endswith(b"\n") and len(data) <= MAX_REQUEST:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            request = json.loads(data)
            op = request.get("op") if isinstance(request, dict) else None
        except (OSError, ValueError):
            return True
        if self.clock() >= self.expires:
            self._reply(conn, {"ok": False, "error": "expired"})
            return False
        if op == "lock":
            self._reply(conn, {"ok": True})
            return False
        if op == "status":
            self._reply(conn, {"ok": True, "profile": self.profile, "expires": int(self.expires)})
            return True
        if op == "identity":
            if request.get("profile") != self.profile:
                self._reply(conn, {"ok": False, "error": "this agent holds another profile"})
                return True
            if not self._key_file_unchanged():
                # The key file was changed, replaced or removed: what this agent holds is not
                # what the profile holds now, and it never will be again.
                self._reply(conn, {"ok": False, "error": "the key file changed since it was unlocked"})
                return False
            if request.get("keyfile") != self.keyfile:
                self._reply(conn, {"ok": False, "error": "another key file"})
                return True
            self._reply(conn, {"ok": True, "identity": base64.b64encode(bytes(self.identity)).decode()})
            return True
        self._reply(conn, {"ok": False, "error": "unknown request"})
        return True

    @staticmethod
    def _reply(conn: socket.socket, doc: dict) -> None:
        try:
            conn.sendall(json.dumps(doc).encode() + b"\n")
        except OSError:
            pass

    def close(self) -> None:
        for i in range(len(self.identity)):
            self.identity[i] = 0
        if self.sock is not None:
            if self._still_mine():
                try:
                    self.path.unlink()
                except OSError:
                    pass
            self.sock.close()
            self.sock = None


def _main() -> int:
    """The agent process: read the request from the pipe, bind, say where, serve."""
    _harden()
    line = sys.stdin.buffer.readline(1024 * 1024)
    sys.stdin.close()
    try:
        request = json.loads(line)
        identity = base64.b64decode(request["identity"])
        profile, keyfile, seconds = request["profile"], request["keyfile"], int(request["seconds"])
    except (KeyError, TypeError, ValueError):
        sys.stdout.write(json.dumps({"ok": False, "error": "bad start request"}) + "\n")
        return 2
    del line, request
    try:
        path = _private_dir() / socket_path(profile).name
        agent = Agent(path, profile, keyfile, identity, time.time() + seconds)
        agent.bind()
    except (RxfedError, OSError) as exc:
        sys.stdout.write(json.dumps({"ok": False, "error": getattr(exc, "message", None) or str(exc)}) + "\n")
        return 1
    del identity
    import signal

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    ready = {"ok": True, "profile": profile, "expires": int(agent.expires), "socket": str(path), "pid": os.getpid()}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    # Let go of the pipes (the starting command reads up to here and exits) and of the
    # directory we were started in.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir("/")
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
