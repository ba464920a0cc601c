"""A database URL's secrets never reach a message or a log line (rxfed.store.safe_dsn)."""

from __future__ import annotations

import pytest

from rxfed.store import safe_dsn


@pytest.mark.parametrize("dsn, shown", [
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    # asyncpg and libpq both take the password from the query string too
    ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***"),
    ("postgresql://u@h/db?sslmode=require&sslpassword=secret&Password=secret",
     "postgresql://u@h/db?sslmode=require&sslpassword=***&Password=***"),
    # the host as written: an IPv6 literal keeps its brackets, several hosts stay several
    ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
])
def test_safe_dsn_hides_every_password(dsn, shown):
    assert safe_dsn(dsn) == shown
    assert "secret" not in safe_dsn(dsn) and ":pw@" not in safe_dsn(dsn)


def test_migrate_db_refusing_a_url_does_not_echo_its_password(tmp_path):
    from rxfed.node.admin import init_node
    from rxfed.node.backup import migrate_db_node
    from rxfed.node.config import ConfigFileError

    init_node(tmp_path / "n", name="n", host="127.0.0.1", port=18497)
    with pytest.raises(ConfigFileError) as caught:
        migrate_db_node(tmp_path / "n", to="postgresq://rxfed:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


def test_the_settings_a_node_reports_hide_the_dsn_password(tmp_path):
    """``rxfed node status`` and the control socket's /status show ``NodeConfig.settings()``;
    rxfed.toml itself keeps the DSN as given, readable by the owner only."""
    import attrs

    from rxfed.node.admin import init_node
    from rxfed.node.config import CONFIG_FILE, NodeConfig

    config, _fp = init_node(tmp_path / "n", name="n", host="127.0.0.1", port=18498)
    pg = attrs.evolve(config, storage={"backend": "postgresql", "dsn": "postgresql://rxfed:hunter2@db/x"})
    assert "hunter2" not in repr(pg.settings())
    assert pg.settings()["storage"]["dsn"] == "postgresql://rxfed:***@db/x"
    pg.save()
    assert "hunter2" in (tmp_path / "n" / CONFIG_FILE).read_text()  # what the node connects with
    assert (tmp_path / "n" / CONFIG_FILE).stat().st_mode & 0o077 == 0
    assert NodeConfig.load(tmp_path / "n").storage["dsn"] == "postgresql://rxfed:hunter2@db/x"
