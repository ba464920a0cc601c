"""``rxfed node``: create, serve and administer a node."""

from __future__ import annotations

import argparse

from rxfed.cli import EXIT_REFUSED, HELP, Output, UsageError, json_flag, note, port_number, write_export


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("node", help=HELP["node"])
    nsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = nsub.add_parser("init", help="create a node in DATA_DIR")
    init.add_argument("data_dir", metavar="DATA_DIR")
    init.add_argument("--name", required=True, help="a label for people, e.g. 'St Example Hospital'")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    init.add_argument("--port", type=port_number, default=8470, help="port to listen on (default 8470)")
    init.add_argument("--public-url", help="URL patients and peers use (default http://HOST:PORT); its host:port is the node id")
    init.add_argument("--registration", choices=("open", "invite", "closed"), default="open")
    init.add_argument("--db", metavar="DSN", help="keep the node's data in PostgreSQL (postgresql://USER@HOST/DB, "
                      "a database of its own) instead of SQLite in DATA_DIR; needs rxfed[postgresql]")
    json_flag(init)
    init.set_defaults(func=cmd_init)

    run = nsub.add_parser("run", help="serve the node in DATA_DIR")
    run.add_argument("data_dir", metavar="DATA_DIR")
    run.add_argument("--host", help="override the configured listen address")
    run.add_argument("--port", type=port_number, help="override the configured port")
    run.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    run.add_argument("--tls-key", help="PEM private key for --tls-cert")
    run.add_argument("--workers", type=int, metavar="N", default=1,
                     help="serve with N worker processes sharing the port and the database (PostgreSQL store only)")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor of --workers N
    run.set_defaults(func=cmd_run)

    check = nsub.add_parser("check", help="check DATA_DIR's configuration, keys and TLS files without starting")
    check.add_argument("data_dir", metavar="DATA_DIR")
    check.set_defaults(func=cmd_check)

    peers = nsub.add_parser("peers", help="list peers, or allow, deny, block or reset one, or accept its new key; "
                                          "instance blocks: silence, suspend, unblock, import, export")
    peers.add_argument("data_dir", metavar="DATA_DIR")
    peers.add_argument("peer_action", metavar="ACTION",
                       choices=("list", "allow", "deny", "block", "reset", "accept-key", "silence", "suspend",
                                "unblock", "import", "export"),
                       help="list | allow PEER | deny PEER (refuse their traffic) | block PEER (also stop ours) | "
                            "reset PEER | accept-key PEER (forget its trusted keys: it changed keys without a "
                            "signed rotation) | silence DOMAIN (its members join no community here) | suspend "
                            "DOMAIN (no traffic either way) | unblock DOMAIN | import FILE (Mastodon's "
                            "domain-block CSV; - for stdin) | export [FILE] (the same CSV; stdout by default)")
    peers.add_argument("peer", metavar="PEER", nargs="?",
                       help="the peer's node id (host[:port]); for silence, suspend, unblock a domain (it covers "
                            "its subdomains); for import and export a file")
    peers.add_argument("--url", help="with allow: the peer's base URL (needed for http on loopback)")
    peers.add_argument("--fingerprint", help="with allow: pin the peer's key fingerprint (SHA256:...)")
    peers.add_argument("--reject-media", action="store_true", help="with silence, suspend: Mastodon's flag (kept)")
    peers.add_argument("--reject-reports", action="store_true",
                       help="with silence, suspend: refuse reports moderators forward from there")
    peers.add_argument("--obfuscate", action="store_true", help="with silence, suspend: Mastodon's flag (kept)")
    peers.add_argument("--comment", default="", help="with silence, suspend: the public comment")
    json_flag(peers)
    peers.set_defaults(func=cmd_peers)

    outbox = nsub.add_parser("outbox", help="list queued and dead events, or replay dead letters")
    outbox.add_argument("data_dir", metavar="DATA_DIR")
    outbox.add_argument("outbox_action", metavar="ACTION", choices=("list", "replay"))
    outbox.add_argument("--peer", help="with replay: only this destination")
    json_flag(outbox)
    outbox.set_defaults(func=cmd_outbox)

    status = nsub.add_parser("status", help="whether the node runs, its live settings, peers, queues, breakers, "
                                            "dead letters, key validity (exit 1 when it is not running)")
    status.add_argument("data_dir", metavar="DATA_DIR")
    json_flag(status)
    status.set_defaults(func=cmd_status)

    rotate = nsub.add_parser("rotate-key", help="add a new identity key; old keys stay valid for the overlap")
    rotate.add_argument("data_dir", metavar="DATA_DIR")
    rotate.add_argument("--overlap-days", type=float, default=7.0, help="how long old keys stay valid (default 7)")
    json_flag(rotate)
    rotate.set_defaults(func=cmd_rotate)

    backup = nsub.add_parser("backup", help="write a consistent backup of DATA_DIR to OUT while the node runs")
    backup.add_argument("data_dir", metavar="DATA_DIR")
    backup.add_argument("out", metavar="OUT", help="the backup file to create (never replaced)")
    backup.add_argument("--no-keys", action="store_true",
                        help="leave the node's identity keys out (keep node-keys.json apart yourself)")
    json_flag(backup)
    backup.set_defaults(func=cmd_backup)

    restore = nsub.add_parser("restore", help="restore a backup into DATA_DIR (node stopped) and sign a restore "
                                              "statement for patients' devices")
    restore.add_argument("backup", metavar="BACKUP")
    restore.add_argument("data_dir", metavar="DATA_DIR")
    restore.add_argument("--keys", metavar="FILE", help="the node's node-keys.json, for a backup taken with --no-keys")
    restore.add_argument("--replace", action="store_true",
                         help="DATA_DIR holds a database: move it aside into DATA_DIR/replaced-TIME-ID/")
    json_flag(restore)
    restore.set_defaults(func=cmd_restore)

    move = nsub.add_parser("migrate-db", help="move a stopped SQLite node's data into an empty PostgreSQL database")
    move.add_argument("data_dir", metavar="DATA_DIR")
    move.add_argument("--to", required=True, metavar="DSN", help="postgresql://USER@HOST/DB, an empty database")
    json_flag(move)
    move.set_defaults(func=cmd_migrate_db)
    migrate = nsub.add_parser("migrate", help="back up DATA_DIR, then upgrade its database to this rxfed's schema")
    migrate.add_argument("data_dir", metavar="DATA_DIR")
    migrate.add_argument("--backup", metavar="OUT", help="where the backup goes (default DATA_DIR/backups/...)")
    json_flag(migrate)
    migrate.set_defaults(func=cmd_migrate)

    invite = nsub.add_parser("invite", help="print single-use invitation codes")
    invite.add_argument("data_dir", metavar="DATA_DIR")
    invite.add_argument("--count", type=int, default=1, help="how many codes (default 1)")
    json_flag(invite)
    invite.set_defaults(func=cmd_invite)

    from rxfed.cli import node_admin

    node_admin.add_parsers(nsub)


def cmd_init(args: argparse.Namespace) -> None:
    from rxfed.node.admin import init_node

    storage = None
    if args.db is not None:
        if not args.db.startswith(("postgresql://", "postgres://")):
            raise UsageError("--db must be a postgresql:// URL (SQLite, the default, needs no --db)")
        storage = {"backend": "postgresql", "dsn": args.db}
    config, fp = init_node(args.data_dir, name=args.name, host=args.host, port=args.port,
                           public_url=args.public_url, registration=args.registration, storage=storage)
    Output(args.json).result(
        {"node_id": config.node_id, "fingerprint": fp, "public_url": config.public_url,
         "data_dir": str(config.data_dir), "registration": config.registration},
        [f"node {config.name!r} created in {config.data_dir}", f"public URL: {config.public_url}",
         f"key fingerprint: {fp}", config.node_id],
    )


def cmd_run(args: argparse.Namespace) -> None:
    from rxfed.node.admin import run_node

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.workers != 1:
        from rxfed.node.config import NodeConfig
        from rxfed.node.workers import refusal

        why = refusal(NodeConfig.load(args.data_dir), args.workers)
        if why:
            raise UsageError(why)
        if args.worker is not None:
            raise UsageError("--worker is set by the supervisor of --workers N")
    if args.worker is not None:
        from rxfed.node.config import NodeConfig
        from rxfed.node.workers import refusal

        if not 0 <= args.worker < 64:
            raise UsageError("--worker must be from 0 to 63")
        why = refusal(NodeConfig.load(args.data_dir), 2)  # a worker is one of several
        if why:
            raise UsageError(why.replace("--workers 2", "--worker"))
    return run_node(args.data_dir, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                    print_ready=None if args.worker is not None else note, workers=args.workers, worker=args.worker)


def cmd_check(args: argparse.Namespace) -> None:
    from rxfed.node.admin import check_node

    check_node(args.data_dir)
    Output(False).result({}, ["configuration ok"])


def cmd_invite(args: argparse.Namespace) -> None:
    from rxfed.node.admin import create_invites

    if not 1 <= args.count <= 1000:
        raise UsageError("--count must be from 1 to 1000")
    codes = create_invites(args.data_dir, args.count)
    Output(args.json).result({"codes": codes}, codes)


_POLICY = {"allow": "allowed", "deny": "denied", "block": "blocked", "reset": "known"}


def cmd_peers(args: argparse.Namespace) -> None:
    from rxfed.node import admin

    block_flags = args.reject_media or args.reject_reports or args.obfuscate or args.comment
    if block_flags and args.peer_action not in ("silence", "suspend"):
        raise UsageError("--reject-media, --reject-reports, --obfuscate and --comment go with silence and suspend")
    if args.peer_action != "allow" and (args.url or args.fingerprint):
        raise UsageError("--url and --fingerprint go with allow")
    if args.peer_action == "list":
        if args.peer:
            raise UsageError("'peers list' takes no PEER")
        rows, blocks = admin.peers_and_blocks(args.data_dir)

        def lines():
            out = [f"{r['node_id']}\t{r['policy']}\tbreaker {r['breaker']}\tfailures {r['failures']}"
                   + (f"\t{r['block'].upper()} (block of {', '.join(r['blocked_by'])})" if r["block"] else "")
                   + (f"\tlast error: {r['last_error']}" if r["last_error"] and r["failures"] else "") for r in rows]
            out = out or ["no peers yet"]
            out += [f"block: {b['domain']}\t{b['severity']}" + ("\treject reports" if b["reject_reports"] else "")
                    + (f"\t{b['public_comment']}" if b["public_comment"] else "") for b in blocks]
            return out

        Output(args.json).result({"peers": rows, "domain_blocks": blocks}, lines)
        return
    if args.peer_action == "export":
        from rxfed.node import administer

        write_export(administer.export_blocks(args.data_dir), args.peer)
        return
    if not args.peer:
        raise UsageError(f"'peers {args.peer_action}' needs a {'FILE' if args.peer_action == 'import' else 'PEER'}")
    if args.peer_action in ("silence", "suspend", "unblock", "import"):
        from rxfed.node import administer

        if args.peer_action == "import":
            doc = administer.import_blocks(args.data_dir, args.peer)
            Output(args.json).result(doc, [f"{doc['imported']} block(s) imported"])
        elif args.peer_action == "unblock":
            doc = administer.unblock_domain(args.data_dir, args.peer)
            Output(args.json).result(doc, [f"{args.peer} is no longer blocked"])
        else:
            doc = administer.block_domain(args.data_dir, args.peer, args.peer_action, reject_media=args.reject_media,
                                          reject_reports=args.reject_reports, comment=args.comment,
                                          obfuscate=args.obfuscate)
            done = "silenced" if args.peer_action == "silence" else "suspended"
            Output(args.json).result(doc, [f"{doc['domain']} (and its subdomains) {done}"])
        return
    if args.peer_action == "accept-key":
        pin = admin.accept_peer_key(args.data_dir, args.peer)
        after = f"must list the pinned key {pin}" if pin else "is trusted as on first contact"
        Output(args.json).result({"peer": args.peer, "pinned": pin}, [
            f"{args.peer}: trusted keys forgotten; the next key document it serves {after}"])
        return
    policy = _POLICY[args.peer_action]
    admin.peer_policy(args.data_dir, args.peer, policy, url=args.url, fingerprint=args.fingerprint)
    Output(args.json).result({"peer": args.peer, "policy": policy}, [f"{args.peer} is now {policy}"])


def cmd_outbox(args: argparse.Namespace) -> None:
    from rxfed.node import admin

    if args.outbox_action == "list":
        doc = admin.outbox_list(args.data_dir)
        Output(args.json).result(doc, lambda: [
            f"{d['destination']}\tqueued {d['pending']}\tin flight {d['in_flight']}\tdead {d['dead']}"
            for d in doc["destinations"]] or ["outbox empty"])
        return
    n = admin.outbox_replay(args.data_dir, args.peer)
    Output(args.json).result({"replayed": n}, [f"{n} dead letter(s) queued again"])


def cmd_status(args: argparse.Namespace) -> None:
    from rxfed.cli.node_admin import plugin_health
    from rxfed.node import admin

    doc = admin.node_status(args.data_dir)

    def lines():
        if doc["running"]:
            out = [f"running: pid {doc['pid']}, rxfed {doc['version']}, up {doc['uptime_seconds']} s, listening on "
                   f"{doc['settings']['node']['host']}:{doc['settings']['node']['port']}"
                   + (f", metrics on {', '.join(doc['metrics_listening'])}" if doc["metrics_listening"] else "")]
            if doc.get("workers"):
                ws = doc["workers"]
                out.append(f"workers: {sum(1 for w in ws if w['answering'])} of {len(ws)} answering (pids "
                           + ", ".join(str(w["pid"]) for w in ws) + f"), {sum(w['restarts'] for w in ws)} restarts")
            if doc["changed_in_file"]:
                out.append(f"rxfed.toml differs from what the node runs ({', '.join(doc['changed_in_file'])}): "
                           "edited since it started (restart to apply it, after 'rxfed node check'), or "
                           "overridden on its command line")
        else:
            out = ["NOT RUNNING (nothing answers on its control socket); what its store holds:"]
        out.append(f"node {doc['node_id']} ({doc['name']}), registration {doc['registration']}, "
                   f"federation {doc['federation_mode']}")
        for k in doc["keys"]:
            until = "no end date" if k["valid_until"] is None else f"valid {k['expires_in_days']} more days"
            out.append(f"key {k['fingerprint']}  {until}")
        for p in doc["peers"]:
            out.append(f"peer {p['node_id']}: {p['policy']}, breaker {p['breaker']}, failures {p['failures']}")
        out.append(f"queued events: {doc['queued_events']}, dead letters: {doc['dead_letters']}, "
                   f"communities hosted: {doc['communities_hosted']}")
        if doc["plugins"] is None:
            out.append("plugins: not reported yet (the node reports them while it runs)")
        out += [f"plugin {plugin_health(p)}" for p in doc["plugins"] or []]
        st = doc.get("store")
        if st is not None and st.get("backend") == "postgresql":
            out.append(f"store: PostgreSQL, {st['connections']} connections open ({st['idle']} idle, at most "
                       f"{st['max_connections']}), commits {st['commit_us'] / 1000:.2f} ms each (median, from "
                       f"taking a connection), {st['retries']} run again after a collision, {st['busy']} given up busy")
        else:
            out.append("store: not reported yet (the node reports it while it runs)" if st is None else
                       f"store: last batch on the {st['mode']}, commits {st['commit_us'] / 1000:.2f} ms each (median) "
                       f"({st['inline_batches']} batches on the event loop with their COMMIT behind it, "
                       f"{st['thread_batches']} on the writer thread, {st['switches']} moves between the two)")
        if doc["suspended_accounts"]:
            out.append(f"suspended accounts: {doc['suspended_accounts']}")
        return out

    Output(args.json).result(doc, lines)
    if not doc["running"]:
        note(f"rxfed: the node in {args.data_dir} is not running")
        return EXIT_REFUSED


def cmd_rotate(args: argparse.Namespace) -> None:
    from rxfed.node import admin

    if args.overlap_days < 0:
        raise UsageError("--overlap-days must not be negative")
    doc = admin.rotate_key(args.data_dir, args.overlap_days)
    Output(args.json).result(doc, [f"new key {doc['fingerprint']}; old keys stay valid {args.overlap_days:g} days",
                                   doc["key_id"]])


def cmd_backup(args: argparse.Namespace) -> None:
    from rxfed.node.backup import backup_node

    doc = backup_node(args.data_dir, args.out, keys=not args.no_keys)
    keys = "with the node's identity keys" if doc["keys"] else "without the identity keys (keep node-keys.json apart)"
    Output(args.json).result(doc, [f"backup of {doc['node_id']} written to {doc['backup']} ({doc['bytes']} bytes, "
                                   f"schema {doc['schema']}), {keys}"])


def cmd_restore(args: argparse.Namespace) -> None:
    from rxfed.node.backup import restore_node

    doc = restore_node(args.backup, args.data_dir, keys_file=args.keys, replace=args.replace)

    def lines():
        out = [f"restored {doc['node_id']} into {doc['data_dir']} from the backup taken "
               f"{_utc(doc['backup_taken'])}; restore {doc['restore_id']} signed",
               "patients' devices will show what was lost since the backup and ask before going on"]
        if doc["replaced"]:
            out.append(f"the database that was there is in {doc['replaced']}")
        if doc["needs_migration"]:
            out.append(f"the backup's schema is older than this rxfed: run 'rxfed node migrate {doc['data_dir']}' "
                       "before 'node run'")
        return out

    Output(args.json).result(doc, lines)


def cmd_migrate(args: argparse.Namespace) -> None:
    from rxfed.node.backup import migrate_node

    doc = migrate_node(args.data_dir, backup=args.backup)
    Output(args.json).result(doc, [f"database schema {doc['from']} upgraded to {doc['to']}; "
                                   + (f"backup first in {doc['backup']}" if doc["backup"] else
                                      "in one transaction (back the database up with its own tools)")]
                             if doc["migrated"] else
                                  [f"database schema {doc['to']} is this rxfed's: nothing to migrate"])


def cmd_migrate_db(args: argparse.Namespace) -> None:
    from rxfed.node.backup import migrate_db_node

    doc = migrate_db_node(args.data_dir, to=args.to)
    rows = sum(doc["rows"].values())
    Output(args.json).result(doc, [f"{rows} rows moved to {doc['to']} and checked: every read answers alike; "
                                   f"{doc['data_dir']} now uses PostgreSQL (the SQLite file {doc['sqlite']} is kept)"])


def _utc(t: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
