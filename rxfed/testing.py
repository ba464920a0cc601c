"""Test helpers for rxfed and for plugin authors: real nodes on loopback, in-process.

``NodeHarness`` starts a node's aiohttp application on a free loopback port with exactly
the plugins you name (never whatever happens to be installed), and stops it cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from rxfed.node.config import FederationSettings, Limits
from rxfed.node.local import LocalNode, free_port  # noqa: F401 - free_port is part of this API
from rxfed.plugins import RxfedPlugins

#: Limits for tests: generous rate limits so tests are not throttled unless they mean to be.
TEST_LIMITS = Limits(requests_per_second=10_000, burst=10_000, anonymous_per_minute=60_000, anonymous_burst=10_000,
                     anonymous_global_per_minute=600_000, anonymous_global_burst=100_000)
#: Federation settings for tests: fast retries, no key-refetch delay.
TEST_FEDERATION = FederationSettings(backoff_base=0.05, backoff_max=0.5, breaker_threshold=1000, breaker_cooldown=1.0,
                             request_timeout=2.0, key_refetch=0, signal_delay=0, inbound_per_second=10_000,
                             inbound_burst=10_000, key_fetches_per_minute=60_000)


def builtin_plugins() -> RxfedPlugins:
    """A plugin manager holding only rxfed's built-in plugins, registered by hand."""
    import rxfed_plugins.matching
    import rxfed_plugins.outcomes
    import rxfed_plugins.postgresql_store
    import rxfed_plugins.signals
    import rxfed_plugins.sqlite_store

    plugins = RxfedPlugins(entry_points=False)
    plugins.register(rxfed_plugins.sqlite_store, "sqlite")
    plugins.register(rxfed_plugins.postgresql_store, "postgresql")
    plugins.register(rxfed_plugins.signals, "signals")
    plugins.register(rxfed_plugins.outcomes.Outcomes(), "outcomes")
    plugins.register(rxfed_plugins.matching, "matching")
    return plugins


@attrs.define
class NodeHarness(LocalNode):
    """One node serving on 127.0.0.1 (a :class:`rxfed.node.local.LocalNode`) with test
    defaults: generous rate limits, fast federation retries, and rxfed's built-in plugins
    only (never whatever else happens to be installed) unless ``plugins`` names others."""

    plugins: RxfedPlugins | None = None
    name: str = "test-node"
    limits: Limits = TEST_LIMITS
    federation: FederationSettings = TEST_FEDERATION

    async def start(self) -> NodeHarness:
        if self.plugins is None:
            self.plugins = builtin_plugins()
        if self.storage is None and _DATABASES is not None:  # a test chose PostgreSQL
            self.storage = {"backend": "postgresql", "dsn": await _DATABASES.create()}
        return await super().start()


# -- PostgreSQL for tests: a fresh database per test --------------------------------------

#: The environment variable naming the PostgreSQL server tests may use (a DSN whose user
#: may create databases, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``).
PG_DSN_ENV = "RXFED_TEST_PG_DSN"


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


class TestDatabases:
    """Fresh PostgreSQL databases on the server at ``dsn``, each a copy (``CREATE DATABASE
    ... TEMPLATE``) of one database migrated once per process, each dropped by :meth:`drop_all`.
    Tests using them are independent and may run in parallel."""

    __test__ = False  # not a test class
    _template: str | None = None

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.created: list[str] = []

    async def _admin(self):
        import asyncpg

        return await asyncpg.connect(self.dsn, timeout=10)

    async def _ensure_template(self) -> str:
        import atexit
        import os
        import secrets

        from rxfed.store.postgresql import PostgreSQLBackend

        if TestDatabases._template is None:
            name = f"rxfed_template_{os.getpid()}_{secrets.token_hex(4)}"
            conn = await self._admin()
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            backend = PostgreSQLBackend(_with_database(self.dsn, name), max_connections=1)
            await backend.open()
            await backend.close()
            TestDatabases._template = name
            atexit.register(_drop_template, self.dsn, name)
        return TestDatabases._template

    async def create(self) -> str:
        """The DSN of a new database at the newest schema."""
        return await self._new(template=await self._ensure_template())

    async def create_empty(self) -> str:
        """The DSN of a new, empty database (no schema)."""
        return await self._new()

    async def _new(self, template: str | None = None) -> str:
        import secrets

        name = f"rxfed_test_{secrets.token_hex(8)}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            await conn.close()
        self.created.append(name)
        return _with_database(self.dsn, name)

    async def drop_all(self) -> None:
        conn = await self._admin()
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self.created.clear()


def _drop_template(dsn: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def drop():
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except Exception:  # noqa: BLE001 - the server may be gone at exit
        pass


#: Set while a test runs its nodes on PostgreSQL (the ``rxfed_store_backend`` fixture).
_DATABASES: TestDatabases | None = None


def pg_test_dsn() -> str | None:
    """The PostgreSQL server tests may use, or None (``RXFED_TEST_PG_DSN`` not set, or
    asyncpg not installed)."""
    import importlib.util
    import os

    dsn = os.environ.get(PG_DSN_ENV)
    return dsn if dsn and importlib.util.find_spec("asyncpg") is not None else None


PG_SKIP_REASON = f"PostgreSQL tests need {PG_DSN_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres) and asyncpg"


async def start_federation(base: Path, *names: str, **kwargs) -> list[NodeHarness]:
    """Nodes on loopback that allow each other: the in-process federation for tests."""
    nodes = [await NodeHarness(base / name, name=name, **kwargs).start() for name in names]
    for node in nodes:
        await node.allow(*(n for n in nodes if n is not node))
    return nodes


# -- plugin managers and pytest fixtures for plugin authors ------------------------------

#: Plugins for one manager: objects (each named by its manifest) or a name -> object mapping.
PluginObjects = Iterable[object] | Mapping[str, object]


def plugin_name(plugin: object) -> str | None:
    """The name ``plugin`` declares in its manifest (the entry-point name it must have)."""
    hook = getattr(plugin, "rxfed_plugin_manifest", None)
    return getattr(hook() if callable(hook) else None, "name", None)


def make_plugins(plugins: PluginObjects = (), **options: Any) -> RxfedPlugins:
    """rxfed's built-in plugins plus ``plugins``, in a manager built with ``options``
    (``timeout``, ``max_failures``, ...). A plugin given without a name is registered under
    its manifest's name, so a node treats it as it would the installed plugin. The caller
    closes the manager."""
    manager = RxfedPlugins(entry_points=False, **options)
    builtins = builtin_plugins()
    try:
        for name, plugin in builtins.pm.list_name_plugin():
            if plugin is not None:
                manager.register(plugin, name)
    finally:
        builtins.close()
    named = plugins.items() if isinstance(plugins, Mapping) else [(plugin_name(p), p) for p in plugins]
    for name, plugin in named:
        manager.register(plugin, name)
    return manager


# The ``pytest11`` entry point loads this module into pytest. Without pytest (``rxfed demo``
# uses the harness) the fixtures are simply not defined.
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    try:  # the async fixtures work in pytest-asyncio's strict mode as well as in auto mode
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover
        _async_fixture = pytest.fixture

    @pytest.fixture
    def rxfed_plugins_factory():
        """``rxfed_plugins_factory(*plugins, named={"name": obj}, **options)``: a plugin
        manager with the built-ins and ``plugins`` (see :func:`make_plugins`)."""
        made: list[RxfedPlugins] = []

        def factory(*plugins: object, named: Mapping[str, object] | None = None, **options: Any) -> RxfedPlugins:
            made.append(make_plugins(plugins, **options))
            for name, plugin in (named or {}).items():
                made[-1].register(plugin, name)
            return made[-1]

        yield factory
        for manager in made:
            manager.close()

    @pytest.fixture
    def rxfed_pg_databases():
        """A :class:`TestDatabases` on the ``RXFED_TEST_PG_DSN`` server (skips without it);
        every database made through it is dropped after the test. (A plain fixture, so
        that async fixtures may ask for it with ``request.getfixturevalue``.)"""
        import asyncio
        import concurrent.futures

        dsn = pg_test_dsn()
        if dsn is None:
            pytest.skip(PG_SKIP_REASON)
        databases = TestDatabases(dsn)
        try:
            yield databases
        finally:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # off the test's event loop
                pool.submit(asyncio.run, databases.drop_all()).result()

    @pytest.fixture(params=["sqlite", "postgresql"])
    def rxfed_store_backend(request):
        """Run the test twice: its :class:`NodeHarness` nodes on SQLite, then each on a
        fresh PostgreSQL database (skipped without ``RXFED_TEST_PG_DSN``). Yields the name."""
        global _DATABASES
        if request.param == "sqlite":
            yield "sqlite"
            return
        if request.node.get_closest_marker("sqlite_only"):
            pytest.skip("looks into the SQLite database file itself")
        databases = request.getfixturevalue("rxfed_pg_databases")
        _DATABASES = databases
        try:
            yield "postgresql"
        finally:
            _DATABASES = None

    @pytest.fixture
    def rxfed_test_plugins() -> PluginObjects:
        """The plugins ``rxfed_node`` registers besides the built-ins: override it."""
        return ()

    @_async_fixture
    async def rxfed_node(tmp_path: Path, rxfed_test_plugins: PluginObjects):
        """One started :class:`NodeHarness` on 127.0.0.1 with the ``rxfed_test_plugins``."""
        plugins = make_plugins(rxfed_test_plugins)
        harness = NodeHarness(tmp_path / "rxfed-node", plugins=plugins)
        try:
            yield await harness.start()
        finally:
            await harness.stop()
            plugins.close()

    @_async_fixture
    async def rxfed_federation(tmp_path: Path):
        """``await rxfed_federation(*names, plugins=..., **harness_options)``: started nodes
        that allow each other, each with its own plugin manager. ``plugins`` is what every
        node registers besides the built-ins, or ``node_name -> plugins`` for fresh
        instances per node (one plugin object on several nodes shares its state)."""
        started: list[NodeHarness] = []
        managers: list[RxfedPlugins] = []

        async def start(*names: str, plugins: PluginObjects | Callable[[str], PluginObjects] = (),
                        **kwargs: Any) -> list[NodeHarness]:
            nodes = []
            for name in names:
                managers.append(make_plugins(plugins(name) if callable(plugins) else plugins))
                nodes.append(NodeHarness(tmp_path / "rxfed-federation" / name, name=name, plugins=managers[-1],
                                         **kwargs))
                started.append(nodes[-1])
                await nodes[-1].start()
            for node in nodes:
                await node.allow(*(n for n in nodes if n is not node))
            return nodes

        try:
            yield start
        finally:
            for node in reversed(started):
                await node.stop()
            for manager in managers:
                manager.close()
