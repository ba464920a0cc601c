"""The plugin manager: a typed facade over pluggy that calls each implementation on its own.

pluggy stops a whole hook call at the first exception, so rxfed never calls ``pm.hook.x()``:
every implementation runs alone, under a timeout, and its failures are counted against its
plugin. Synchronous code runs on a small pool of worker threads with a per-plugin cap, so a
hung plugin neither blocks the event loop nor takes every thread. A plugin that fails
``max_failures`` times in a row is disabled and reported by :meth:`RxfedPlugins.status`.
See spec/plugin_hooks.md ("Isolation") and spec/plugin-trust.md (what this does not buy).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import queue
import re
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from rxfed import hookspecs
from rxfed.errors import RxfedError

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.consent.signals import Signal, SignalKind
    from rxfed.protocol.credentials import Clinician
    from rxfed.plugin_offers import BackendVerdict, ClinicianVerifier, NodeContext, StorageBackend

ENTRY_POINT_GROUP = "rxfed"  # rxfed.plugin_index.GROUP
log = logging.getLogger("rxfed.plugins")

#: Seconds one implementation may take before its call counts as failed.
DEFAULT_TIMEOUT = 5.0
#: Failures in a row after which a plugin is disabled (a success resets the count).
DEFAULT_MAX_FAILURES = 5
#: Worker threads for synchronous plugin code, shared by every plugin.
DEFAULT_WORKERS = 4
#: Synchronous calls one plugin may have holding or waiting for a worker thread.
DEFAULT_MAX_IN_FLIGHT = 2


class PluginError(RxfedError):
    status = 500
    code = "plugin_error"


#: A plugin's name: its entry-point name, its manifest name, and NAME in ``plugin:NODE_ID/NAME``.
NAME = r"[a-z][a-z0-9_.-]{0,39}"


def _names(value) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class PluginManifest:
    """What a plugin declares about itself (see :func:`rxfed.hookspecs.rxfed_plugin_manifest`).

    ``name`` must equal the plugin's entry-point name; ``reads``: signal kinds it may
    receive; ``purposes``: purposes it serves (a grant must name one); ``sends``: what it may
    send to other nodes (documentation for the operator, shown by ``rxfed plugins list``).
    """

    name: str
    version: str
    reads: tuple[str, ...] = attrs.field(default=(), converter=_names)
    purposes: tuple[str, ...] = attrs.field(default=(), converter=_names)
    sends: tuple[str, ...] = attrs.field(default=(), converter=_names)
    description: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "reads": list(self.reads),
                "purposes": list(self.purposes), "sends": list(self.sends), "description": self.description}

    def accepts(self, kind: str, purpose: str) -> bool:
        return kind in self.reads and purpose in self.purposes

    def problem(self, registered_as: str) -> str | None:
        """Why this manifest cannot be honoured for the plugin registered as ``registered_as``."""
        if self.name != registered_as:
            return f"manifest name {self.name!r} differs from the plugin's entry-point name {registered_as!r}"
        if re.fullmatch(NAME, self.name) is None:
            return f"manifest name {self.name!r} must match {NAME}"
        if not all(isinstance(v, str) for v in (self.version, *self.reads, *self.purposes, *self.sends)):
            return "manifest version, reads, purposes and sends must be strings"
        if not self.reads:
            return None
        from rxfed.consent.signals import KIND_NAME  # the signal vocabulary: only for plugins that read signals

        bad = [kind for kind in self.reads if KIND_NAME.fullmatch(kind) is None]
        if bad:
            return f"manifest reads {bad[0]!r}, which is not a signal kind name"
        return None


@attrs.frozen
class PresendWarning:
    """A warning a client hook raises about a message before it is sent.

    ``code``: what was found (a category such as ``medication_change``, or ``unchecked`` when
    the plugin could not check); ``resources``: lines to show with it (a crisis line);
    ``confirm``: the author confirms before the message is sent (False: shown, never asked).
    """

    code: str
    message: str
    resources: tuple[str, ...] = attrs.field(default=(), converter=_names)
    confirm: bool = True

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message, "resources": list(self.resources),
                "confirm": self.confirm}


@attrs.frozen
class PluginStatus:
    """How one plugin is doing, as :meth:`RxfedPlugins.status` reports it.

    ``failures`` counts failures in a row (``max_failures`` of them disable the plugin; a
    success resets it), ``total_failures`` all of them; ``refused`` counts calls not made
    because the plugin or the worker pool was busy. ``last_error`` is an exception type and a
    short message; for hooks that receive signals, records or text the message is withheld
    (it could quote them) and the place the exception was raised is given instead.
    """

    name: str
    enabled: bool
    disabled_reason: str | None
    failures: int
    total_failures: int
    calls: int
    refused: int
    last_error: str | None

    def to_json(self) -> dict:
        return attrs.asdict(self)


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value or an awaitable; core awaits through this one helper."""
    if inspect.isawaitable(value):
        return await value
    return value


# -- isolation machinery -------------------------------------------------------------------


class PluginTimeout(TimeoutError):
    """A plugin did not answer within the timeout (the message is rxfed's own)."""


class PluginBusy(Exception):
    """A call not made: the plugin already has its cap of calls in flight, the worker pool
    had no thread free in time, or the manager is closed. ``charge``: count it against the
    plugin (it holds a thread past its timeout, so it is hung, not merely busy)."""

    def __init__(self, message: str, *, charge: bool):
        super().__init__(message)
        self.charge = charge


class _Call(concurrent.futures.Future):
    """One synchronous plugin call; ``began`` is set when a worker thread picks it up."""

    began: float | None = None
    overdue: bool = False


class _Workers:
    """A few daemon threads running synchronous plugin code.

    Not a ``ThreadPoolExecutor``: the interpreter joins those threads at exit, so one plugin
    stuck forever would keep the node from shutting down. Threads start as work arrives (a
    call that finds no idle thread starts one, up to ``size``), so a command that makes one
    plugin call starts one thread, not ``size``.
    """

    def __init__(self, size: int):
        self._jobs: queue.SimpleQueue[tuple[_Call, Callable[..., Any], list] | None] = queue.SimpleQueue()
        self._size = size
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # one token per call a started thread has finished
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], args: list) -> _Call:
        call = _Call()
        with self._lock:
            if self._closed:
                raise PluginBusy("the plugin manager is closed", charge=False)
            self._jobs.put((call, fn, args))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"rxfed-plugin-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return call

    def shutdown(self) -> None:
        """Cancel queued calls and let idle threads end; never waits for a running call."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        with self._lock:
            started = len(self._threads)
        for _ in range(started):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._run(*job)
            del job  # an idle thread keeps no reference to the signals it last handled
            self._idle.release()

    @staticmethod
    def _run(call: _Call, fn: Callable[..., Any], args: list) -> None:
        call.began = time.monotonic()
        if not call.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # a plugin's sys.exit must not end the thread
            call.set_exception(exc)
        else:
            call.set_result(result)


def _wake_on_done(call: _Call, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """An asyncio future that completes (with None) when ``call`` does; the outcome is read
    from ``call`` itself, so no exception is ever left unretrieved in the loop."""
    waiter = loop.create_future()

    def settle() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def wake(_: concurrent.futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    call.add_done_callback(wake)
    return waiter


def _discard_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException, *, quote: bool) -> str:
    """Type and short message, or (``quote=False``) type and where it was raised: a plugin's
    message may quote the signals, records or text it was handed."""
    name = type(exc).__name__
    if quote or isinstance(exc, (PluginTimeout, PluginBusy)):
        message = " ".join(str(exc).split())
        return f"{name}: {message[:200]}" if message else name
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"{name} (message withheld)"
    frame = frames[-1]
    return f"{name} (message withheld) at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"


@attrs.define
class _Health:
    calls: int = 0
    failures: int = 0
    total_failures: int = 0
    refused: int = 0
    last_error: str | None = None
    disabled_reason: str | None = None
    in_flight: int = 0
    overdue: int = 0


# -- the facade ----------------------------------------------------------------------------


class RxfedPlugins:
    """Loads plugins (entry points unless told not to), blocks disabled ones by name, and
    gives each hook one typed method that calls every implementation on its own.

    ``timeout``: seconds per implementation call; ``max_failures``: failures in a row that
    disable a plugin; ``workers``: threads for synchronous plugin code; ``max_in_flight``:
    synchronous calls one plugin may have on those threads at once (more fail at once).
    ``hooks``: load only the installed plugins that implement one of these hooks (the
    ``rxfed`` command's pre-send check needs no other; see :mod:`rxfed.plugin_index`), found
    in ``plugin_index`` if the caller has just loaded it.
    Call :meth:`close` when done (it never waits for a hung plugin).
    """

    def __init__(self, *, entry_points: bool = True, disabled: Iterable[str] = (),
                 hooks: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT, max_failures: int = DEFAULT_MAX_FAILURES,
                 workers: int = DEFAULT_WORKERS, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, plugin_index=None):
        if timeout <= 0 or max_failures < 1 or workers < 1 or max_in_flight < 1:
            raise ValueError("timeout, max_failures, workers and max_in_flight must be positive")
        self.timeout = float(timeout)
        self.max_failures = max_failures
        self.max_in_flight = min(max_in_flight, workers)
        self._worker_count = workers
        self._workers: _Workers | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}
        # Declarations are read once per plugin (name -> value; None: none or unusable).
        self._manifests: dict[str, PluginManifest | None] = {}
        self._kinds: dict[str, list[SignalKind]] = {}
        self._snomed: dict[str, dict[str, str]] = {}
        self.pm = pluggy.PluginManager("rxfed")
        self.pm.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        for name in self.disabled:
            self.pm.set_blocked(name)
        if entry_points:
            self._load_entry_points(hooks, plugin_index)
        self.pm.check_pending()
        self.manifests()

    def _load_entry_points(self, hooks: Iterable[str] | None, index=None) -> None:
        """Import and register the installed plugins (those ``hooks`` need, if given), as
        pluggy's ``load_setuptools_entrypoints`` does, through the environment's plugin index
        (``index``: one the caller loaded just now, not read again)."""
        import sys

        from rxfed.plugin_index import PluginIndex, load_object

        if index is None:
            index = PluginIndex.load(ENTRY_POINT_GROUP)
        for name, value in list(index.wanted(hooks, blocked=self.disabled)):
            if self.pm.get_plugin(name) is not None:
                continue
            before = set(sys.modules)
            plugin = load_object(value)
            self.pm.register(plugin, name)
            loaded = [sys.modules[m] for m in set(sys.modules) - before]
            callers = self.pm.get_hookcallers(plugin) or []
            functions = [impl.function for caller in callers for impl in caller.get_hookimpls()
                         if impl.plugin is plugin]
            index.learnt(name, [caller.name for caller in callers], loaded, functions)
            if hooks is not None and not set(hooks).intersection(caller.name for caller in callers):
                self.pm.unregister(plugin, name)  # imported only to learn its hooks
        index.save()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register ``plugin`` (under ``name``, which its manifest must repeat) unless blocked."""
        if name is not None and self.pm.is_blocked(name):
            return
        self.pm.register(plugin, name)
        self.pm.check_pending()
        self.manifests()

    def names(self) -> list[str]:
        """Registered plugins (blocked ones left out), enabled or not."""
        return sorted(name for name, plugin in self.pm.list_name_plugin() if name and plugin is not None)

    def close(self) -> None:
        """Stop the worker threads; calls still running in a hung plugin are left behind."""
        self._closed = True
        if self._workers is not None:
            self._workers.shutdown()

    # -- health ----------------------------------------------------------------------------

    def enabled(self, name: str) -> bool:
        return self.pm.get_plugin(name) is not None and self._health_of(name).disabled_reason is None

    def status(self) -> list[PluginStatus]:
        """Every registered plugin, and every plugin disabled by configuration, by name."""
        self.manifests()
        rows = []
        for name in self.names():
            h = self._health_of(name)
            rows.append(PluginStatus(name, h.disabled_reason is None, h.disabled_reason, h.failures,
                                     h.total_failures, h.calls, h.refused, h.last_error))
        rows += [PluginStatus(name, False, "disabled in configuration", 0, 0, 0, 0, None)
                 for name in sorted(self.disabled)]
        return sorted(rows, key=lambda row: row.name)

    def _health_of(self, name: str) -> _Health:
        with self._lock:
            return self._health.setdefault(name, _Health())

    def _disable(self, name: str, reason: str) -> None:
        h = self._health_of(name)
        with self._lock:
            if h.disabled_reason is not None:
                return
            h.disabled_reason = reason
        log.error("plugin %r disabled: %s", name, reason)

    def _begin(self, name: str) -> bool:
        h = self._health_of(name)
        with self._lock:
            if h.disabled_reason is not None:
                return False
            h.calls += 1
            return True

    def _succeeded(self, name: str) -> None:
        h = self._health_of(name)
        with self._lock:
            h.failures = 0

    def _failed(self, name: str, hook: str, error: str) -> None:
        h = self._health_of(name)
        with self._lock:
            h.failures += 1
            h.total_failures += 1
            h.last_error = error
            failures = h.failures
        log.warning("plugin %r: %s failed (%d in a row): %s", name, hook, failures, error)
        if failures >= self.max_failures:
            self._disable(name, f"failed {failures} times in a row (last: {error})")

    def _refused(self, name: str, hook: str, refusal: PluginBusy) -> None:
        if refusal.charge:
            self._failed(name, hook, _describe(refusal, quote=True))
            return
        h = self._health_of(name)
        with self._lock:
            h.refused += 1
        log.warning("plugin %r: %s not called: %s", name, hook, refusal)

    # -- calling one implementation --------------------------------------------------------

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        """Implementations of ``hook`` from enabled plugins, in pluggy's call order. Hook
        wrappers are left out: each implementation runs alone, so there is nothing to wrap."""
        return [impl for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls())
                if not (impl.wrapper or impl.hookwrapper) and self._health_of(impl.plugin_name).disabled_reason is None]

    def _impl(self, hook: str, name: str) -> pluggy.HookImpl | None:
        return next((impl for impl in self._impls(hook) if impl.plugin_name == name), None)

    def _submit(self, name: str, fn: Callable[..., Any], args: list) -> _Call:
        if self._closed:
            raise PluginBusy("the plugin manager is closed", charge=False)
        h = self._health_of(name)
        with self._lock:
            if h.in_flight >= self.max_in_flight:
                raise PluginBusy(f"{h.in_flight} calls already in flight", charge=h.overdue > 0)
            h.in_flight += 1
            if self._workers is None:
                self._workers = _Workers(self._worker_count)
                # A manager dropped without close() (a throwaway one) still lets its threads go.
                weakref.finalize(self, self._workers.shutdown)
        try:
            call = self._workers.submit(fn, args)
        except BaseException:
            with self._lock:
                h.in_flight -= 1
            raise

        def release(_: concurrent.futures.Future) -> None:
            with self._lock:
                h.in_flight -= 1
                h.overdue -= int(call.overdue)

        call.add_done_callback(release)
        return call

    def _next_deadline(self, name: str, call: _Call) -> float:
        """Called when a wait ran out: the new deadline, or raise. A call still queued gets
        cancelled (not the plugin's fault); one running past ``timeout`` is a timeout."""
        if call.cancel():
            raise PluginBusy(f"no worker thread came free within {self.timeout:g} s", charge=False)
        deadline = (call.began or time.monotonic()) + self.timeout
        if not call.done() and time.monotonic() >= deadline:
            h = self._health_of(name)
            with self._lock:
                if not call.done():
                    call.overdue = True
                    h.overdue += 1
            raise PluginTimeout(f"no answer within {self.timeout:g} s")
        return deadline

    def _waits(self, name: str, call: _Call) -> Iterator[float]:
        """How long to wait for ``call`` next, until it is done; raises when it is refused or
        late. The sync and async waits below share this one schedule."""
        deadline = time.monotonic() + self.timeout
        while not call.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                deadline = self._next_deadline(name, call)
                continue
            yield remaining

    def _wait(self, name: str, call: _Call) -> Any:
        for remaining in self._waits(name, call):
            concurrent.futures.wait([call], timeout=remaining)
        return call.result()

    async def _wait_async(self, name: str, call: _Call) -> Any:
        waiter = _wake_on_done(call, asyncio.get_running_loop())
        for remaining in self._waits(name, call):
            await asyncio.wait({waiter}, timeout=remaining)
        return call.result()

    async def _in_time(self, awaitable: Any) -> Any:
        """Await a plugin's awaitable for at most ``timeout``. Unlike ``asyncio.wait_for``,
        never waits for a cancelled plugin to finish (it may swallow the cancellation)."""
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_discard_outcome)
            raise PluginTimeout(f"no answer within {self.timeout:g} s")
        return task.result()

    def _call(self, impl: pluggy.HookImpl, check: Callable[[Any], Any], **kwargs: Any) -> tuple[bool, Any]:
        """Call one implementation from synchronous code: ``(True, check(result))``, or
        ``(False, None)`` when it failed or ``check`` rejected (raised on) its result."""
        name, hook = impl.plugin_name, _hook_name(impl)
        if not self._begin(name):
            return False, None
        try:
            result = self._wait(name, self._submit(name, impl.function, [kwargs[a] for a in impl.argnames]))
        except PluginBusy as refusal:
            self._refused(name, hook, refusal)
            return False, None
        except (Exception, SystemExit) as exc:
            self._failed(name, hook, _describe(exc, quote=not kwargs))
            return False, None
        try:
            if inspect.isawaitable(result):
                getattr(result, "close", lambda: None)()
                raise TypeError("returned an awaitable; this hook must be synchronous")
            result = check(result)
        except (TypeError, ValueError) as exc:  # rxfed's own checks: their messages quote nothing
            self._failed(name, hook, _describe(exc, quote=True))
            return False, None
        self._succeeded(name)
        return True, result

    async def _call_async(self, impl: pluggy.HookImpl, **kwargs: Any) -> bool:
        """Call one node-hook implementation: coroutine functions on the event loop, plain
        functions on a worker thread; True when it returned in time without raising."""
        return (await self._answer_async(impl, **kwargs))[0]

    async def _answer_async(self, impl: pluggy.HookImpl, **kwargs: Any) -> tuple[bool, Any]:
        """As :meth:`_call_async`, with the implementation's answer: ``(True, answer)``, or
        ``(False, None)`` when it failed."""
        name, hook = impl.plugin_name, _hook_name(impl)
        if not self._begin(name):
            return False, None
        args = [kwargs[a] for a in impl.argnames]
        try:
            if inspect.iscoroutinefunction(impl.function):
                result = impl.function(*args)
            else:
                result = await self._wait_async(name, self._submit(name, impl.function, args))
            if inspect.isawaitable(result):
                result = await self._in_time(result)
        except PluginBusy as refusal:
            self._refused(name, hook, refusal)
            return False, None
        except (Exception, SystemExit) as exc:
            self._failed(name, hook, _describe(exc, quote=False))
            return False, None
        self._succeeded(name)
        return True, result

    def _results(self, hook: str, check: Callable[[Any], Any], **kwargs: Any) -> list[tuple[str, Any]]:
        """``(plugin, checked result)`` from every implementation that answered well; one
        whose result ``check`` rejects (raises) counts as failed."""
        found = []
        for impl in self._impls(hook):
            ok, result = self._call(impl, check, **kwargs)
            if ok:
                found.append((impl.plugin_name, result))
        return found

    # -- metadata and infrastructure -------------------------------------------------------

    def manifests(self) -> dict[str, PluginManifest]:
        """The manifest of every enabled plugin that declares a usable one, by plugin name.

        Read once per plugin. A plugin whose manifest hook fails gets no manifest (and so no
        signals); one whose manifest is wrong (not a :class:`PluginManifest`, a name other
        than its entry-point name, ...) is disabled as misconfigured.
        """
        for impl in self._impls("rxfed_plugin_manifest"):
            name = impl.plugin_name
            if name in self._manifests:
                continue
            ok, manifest = self._call(impl, _same)
            self._manifests[name] = None
            if not ok or manifest is None:
                continue
            problem = (manifest.problem(name) if isinstance(manifest, PluginManifest)
                       else f"manifest is a {type(manifest).__name__}, not a PluginManifest")
            if problem:
                self._disable(name, f"misconfigured: {problem}")
            else:
                self._manifests[name] = manifest
        return {name: manifest for name, manifest in sorted(self._manifests.items())
                if manifest is not None and self.enabled(name)}

    def _offered(self, hook: str, cls: type, what: str) -> dict[str, Any]:
        """Everything the enabled plugins offer through ``hook`` (lists of ``cls``), by name."""
        found: dict[str, Any] = {}
        for _, offered in self._results(hook, _list_of(cls)):
            for item in offered:
                if item.name in found:
                    raise PluginError(f"two plugins offer a {what} named {item.name!r}")
                found[item.name] = item
        return found

    @staticmethod
    def _chosen(offered: dict[str, Any], name: str, what: str) -> Any:
        if name not in offered:
            known = ", ".join(sorted(offered)) or "none"
            raise PluginError(f"{what} {name!r} not found (installed: {known}); is the plugin that provides it installed?")
        return offered[name]

    def storage_backends(self) -> dict[str, StorageBackend]:
        from rxfed.plugin_offers import StorageBackend

        return self._offered("rxfed_storage_backends", StorageBackend, "storage backend")

    def storage_backend(self, name: str) -> StorageBackend:
        return self._chosen(self.storage_backends(), name, "storage backend")

    def clinician_verifiers(self) -> dict[str, ClinicianVerifier]:
        from rxfed.plugin_offers import ClinicianVerifier

        return self._offered("rxfed_clinician_verifiers", ClinicianVerifier, "clinician verifier")

    def clinician_verifier(self, name: str) -> ClinicianVerifier:
        return self._chosen(self.clinician_verifiers(), name, "clinician verifier")

    def vet_clinician(self, clinician: Clinician, configured: dict[str, dict[str, Any]]) -> list[BackendVerdict]:
        """Ask each configured backend (name -> its options) about ``clinician``. A backend
        that is not installed, or cannot use its options, is a PluginError (the operator's
        configuration is wrong); one whose check raises or answers something other than a
        BackendVerdict counts as refusing, with that as its reason."""
        from rxfed.plugin_offers import BackendVerdict

        offered = self.clinician_verifiers()
        checks = []
        for name, options in configured.items():
            verifier = self._chosen(offered, name, "clinician verifier")
            try:
                checks.append((name, verifier.open(dict(options))))
            except (ValueError, OSError) as exc:
                raise PluginError(f"clinician verifier {name!r} cannot start: {exc}") from None
        verdicts = []
        for name, check in checks:
            try:
                verdict = check(clinician)
                if not isinstance(verdict, BackendVerdict):
                    raise TypeError(f"answered a {type(verdict).__name__}, not a BackendVerdict")
            except Exception as exc:  # a backend's bug refuses the clinician, it does not vouch
                verdict = BackendVerdict(name, False, f"the backend failed: {_describe(exc, quote=True)}")
            verdicts.append(attrs.evolve(verdict, backend=name))
        return verdicts

    # -- vocabulary ------------------------------------------------------------------------

    def signal_kinds_by_plugin(self) -> dict[str, list[SignalKind]]:
        """The signal kinds each enabled plugin defines (read once per plugin)."""
        from rxfed.consent.signals import SignalKind

        missing = [impl for impl in self._impls("rxfed_signal_kinds") if impl.plugin_name not in self._kinds]
        for impl in missing:
            ok, kinds = self._call(impl, _list_of(SignalKind))
            self._kinds[impl.plugin_name] = kinds if ok else []
        return {name: kinds for name, kinds in sorted(self._kinds.items()) if self.enabled(name)}

    def signal_kinds(self) -> dict[str, SignalKind]:
        """Every signal kind the enabled plugins define, by name."""
        found: dict[str, tuple[str, SignalKind]] = {}
        for plugin, kinds in self.signal_kinds_by_plugin().items():
            for kind in kinds:
                other = found.setdefault(kind.name, (plugin, kind))
                if other[1] != kind:
                    raise PluginError(
                        f"plugins {other[0]!r} and {plugin!r} define signal kind {kind.name!r} differently")
        return {name: kind for name, (_, kind) in sorted(found.items())}

    def snomed_icd10_map(self) -> dict[str, str]:
        missing = [impl for impl in self._impls("rxfed_snomed_icd10_map") if impl.plugin_name not in self._snomed]
        for impl in missing:
            ok, table = self._call(impl, _str_map)
            self._snomed[impl.plugin_name] = table if ok else {}
        merged: dict[str, str] = {}
        for name, table in sorted(self._snomed.items()):
            if not self.enabled(name):
                continue
            for concept, category in table.items():
                if merged.get(concept, category) != category:
                    raise PluginError(f"two plugins map SNOMED CT {concept} to different ICD-10 categories")
                merged[concept] = category
        return merged

    # -- client hooks ----------------------------------------------------------------------

    def derive_signals(self, kind: str, records, today) -> list[dict]:
        """Signal bodies of ``kind`` derived on the device, validated against the kind. A
        plugin that fails, or returns a body that does not fit, contributes nothing."""
        from rxfed.consent.signals import SignalError

        kinds = self.signal_kinds()
        if kind not in kinds:
            raise SignalError(f"unknown signal kind {kind!r}", code="unknown_kind")

        def check(result: Any) -> list[dict]:
            if result is None:
                return []
            try:
                return [kinds[kind].validate(body) for body in _list_of(object)(result)]
            except SignalError as exc:
                raise ValueError(exc.message) from None

        extra = self.snomed_icd10_map()
        return [body for _, bodies in self._results("rxfed_derive_signals", check, kind=kind, records=records,
                                                    today=today, snomed_map=extra) for body in bodies]

    def presend_check(self, text: str, country: str | None = None) -> list[PresendWarning]:
        return [w for _, warnings in self._results("rxfed_presend_check", _list_of(PresendWarning), text=text,
                                                   country=country)
                for w in warnings]

    # -- node hooks ------------------------------------------------------------------------

    def recipients(self, kind: str, purpose: str, only: str | None = None) -> list[str]:
        """Names of the enabled plugins the node may hand a ``kind`` signal under a
        ``purpose`` grant (``only``: the grant names one plugin): their manifest reads the
        kind and serves the purpose, and they implement ``rxfed_signals_received``."""
        receivers = {impl.plugin_name for impl in self._impls("rxfed_signals_received")}
        return sorted(name for name, manifest in self.manifests().items()
                      if name in receivers and manifest.accepts(kind, purpose) and (only is None or name == only))

    def offered(self) -> list[PluginManifest]:
        """The manifests of the enabled plugins that receive signals: what a node publishes
        (``/.well-known/rxfed``) so that a patient's client can check a grant before signing it."""
        receivers = {impl.plugin_name for impl in self._impls("rxfed_signals_received")}
        return [manifest for name, manifest in self.manifests().items() if name in receivers]

    def holders(self, kind: str, purpose: str, only: str | None = None) -> list[str]:
        """Plugins that may hold ``kind`` signals given for ``purpose``: those that may
        receive them now and those disabled since, whose manifest accepted them. A revocation
        goes to each (a disabled one cannot confirm, and is reported)."""
        self.manifests()
        return sorted(name for name, manifest in self._manifests.items()
                      if manifest is not None and manifest.accepts(kind, purpose) and (only is None or name == only))

    async def deliver_signals(self, name: str, signals: list[Signal]) -> bool:
        """Hand ``signals`` to plugin ``name`` alone; True when it took them in time without
        raising. Never raises. Signals its manifest does not accept are refused whole."""
        if not signals:
            return True
        impl = self._impl("rxfed_signals_received", name)
        manifest = self.manifests().get(name)
        if impl is None or manifest is None:
            log.warning("plugin %r cannot receive signals (disabled, no manifest or no rxfed_signals_received)", name)
            return False
        if not all(manifest.accepts(s.kind, s.purpose) for s in signals):
            log.error("refused to hand plugin %r signals its manifest does not accept", name)
            return False
        # Each plugin gets its own read-only bodies, so it cannot change what the next sees.
        handed = [attrs.evolve(s, body=types.MappingProxyType(
            {k: list(v) if isinstance(v, list) else v for k, v in s.body.items()})) for s in signals]
        return await self._call_async(impl, signals=handed)

    async def matching_categories(self, name: str, signals: list[Signal]) -> list[list[str]] | None:
        """What plugin ``name`` says of each of ``signals`` (``rxfed_matching_categories``):
        a category list per signal, or None when it failed, answered something else, or its
        manifest does not accept the signals. Never raises."""
        from rxfed.protocol.matching import valid_category

        impl = self._impl("rxfed_matching_categories", name)
        manifest = self.manifests().get(name)
        if impl is None or manifest is None or not all(manifest.accepts(s.kind, s.purpose) for s in signals):
            return None
        if not signals:
            return []
        handed = [attrs.evolve(s, body=types.MappingProxyType(dict(s.body))) for s in signals]
        ok, result = await self._answer_async(impl, signals=handed)
        if not ok:
            return None
        if (not isinstance(result, list) or len(result) != len(signals)
                or not all(isinstance(row, list | tuple) and all(valid_category(c) for c in row) for row in result)):
            self._failed(name, _hook_name(impl),
                         "TypeError: returned something other than a list of category lists, one per signal")
            return None
        return [sorted(set(row)) for row in result]

    def matchers(self) -> list[str]:
        """Enabled plugins that name matching categories: their manifest serves ``matching``."""
        from rxfed.protocol.matching import PURPOSE

        impls = {impl.plugin_name for impl in self._impls("rxfed_matching_categories")}
        return sorted(name for name, manifest in self.manifests().items()
                      if name in impls and PURPOSE in manifest.purposes)
    async def node_started(self, node: NodeContext) -> list[str]:
        """Tell every plugin the node is up; the names of those that failed. Never raises."""
        failed = []
        for impl in self._impls("rxfed_node_started"):
            if not await self._call_async(impl, node=node):
                failed.append(impl.plugin_name)
        return failed

    async def consent_revoked(self, name: str, grant: str, subject: str) -> bool:
        """Tell plugin ``name`` to delete what it holds under ``grant`` for ``subject``; True
        when it returned in time without raising (or has nothing to delete). Never raises."""
        if self.pm.get_plugin(name) is None:
            return False
        if not self.enabled(name):
            log.warning("plugin %r is disabled; cannot confirm it deleted a revoked grant's signals", name)
            return False
        impl = self._impl("rxfed_consent_revoked", name)
        if impl is None:
            return True
        return await self._call_async(impl, grant=grant, subject=subject)


def _hook_name(impl: pluggy.HookImpl) -> str:
    return impl.opts.get("specname") or impl.function.__name__


def _same(value: Any) -> Any:
    return value


def _list_of(cls: type) -> Callable[[Any], list]:
    def check(value: Any) -> list:
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
            raise TypeError(f"returned a {type(value).__name__}, not a list of {cls.__name__}")
        items = list(value)
        for item in items:
            if not isinstance(item, cls):
                raise TypeError(f"returned a {type(item).__name__} among its {cls.__name__} list")
        return items

    return check


def _str_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"returned a {type(value).__name__}, not a dict of str to str")
    return dict(value)


#: Classes only a node uses, defined in rxfed.plugin_offers and imported on first use, so a
#: patient's command does not build them; ``rxfed.plugins.StorageBackend`` and the like work.
_NODE_ONLY = frozenset({"StorageBackend", "BackendVerdict", "ClinicianVerifier", "NodeContext"})


def __getattr__(name: str) -> Any:
    if name in _NODE_ONLY:
        from rxfed import plugin_offers

        value = getattr(plugin_offers, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _NODE_ONLY)
