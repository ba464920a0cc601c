"""``rxfed node``: create, serve and administer a node."""

from __future__ import annotations

import argparse

from rxfed.cli import Output, UsageError, json_flag, note


def add_parser(sub) -> None:
    p = sub.add_parser("node", help="run and administer a node")
    nsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = nsub.add_parser("init", help="create a node in DATA_DIR")
    init.add_argument("data_dir", metavar="DATA_DIR")
    init.add_argument("--name", required=True, help="a label for people, e.g. 'St Example Hospital'")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    init.add_argument("--port", type=int, default=8470, help="port to listen on (default 8470)")
    init.add_argument("--public-url", help="URL patients and peers use (default http://HOST:PORT); its host:port is the node id")
    init.add_argument("--registration", choices=("open", "invite", "closed"), default="open")
    json_flag(init)
    init.set_defaults(func=cmd_init)

    run = nsub.add_parser("run", help="serve the node in DATA_DIR")
    run.add_argument("data_dir", metavar="DATA_DIR")
    run.add_argument("--host", help="override the configured listen address")
    run.add_argument("--port", type=int, help="override the configured port")
    run.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    run.add_argument("--tls-key", help="PEM private key for --tls-cert")
    run.set_defaults(func=cmd_run)

    invite = nsub.add_parser("invite", help="print single-use invitation codes")
    invite.add_argument("data_dir", metavar="DATA_DIR")
    invite.add_argument("--count", type=int, default=1, help="how many codes (default 1)")
    json_flag(invite)
    invite.set_defaults(func=cmd_invite)


def cmd_init(args: argparse.Namespace) -> None:
    from rxfed.node.admin import init_node

    config, fp = init_node(args.data_dir, name=args.name, host=args.host, port=args.port,
                           public_url=args.public_url, registration=args.registration)
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
    run_node(args.data_dir, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
             print_ready=note)


def cmd_invite(args: argparse.Namespace) -> None:
    from rxfed.node.admin import create_invites

    if not 1 <= args.count <= 1000:
        raise UsageError("--count must be from 1 to 1000")
    codes = create_invites(args.data_dir, args.count)
    Output(args.json).result({"codes": codes}, codes)
