"""``rxfed plugins``: what plugins are installed and enabled."""

from __future__ import annotations

import argparse

from rxfed.cli import Output, json_flag


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed plugins")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = psub.add_parser("list", help="list plugins loaded through the rxfed entry-point group")
    ls.add_argument("--disable", action="append", default=[], metavar="NAME", help="treat plugin NAME as disabled")
    json_flag(ls)
    ls.set_defaults(func=list_plugins)


def list_plugins(args: argparse.Namespace) -> None:
    from rxfed.plugins import RxfedPlugins

    plugins = RxfedPlugins(disabled=args.disable)
    rows = [{"name": name, "enabled": True} for name in plugins.names()]
    rows += [{"name": name, "enabled": False} for name in sorted(plugins.disabled)]
    backends = sorted(plugins.storage_backends())
    Output(args.json).result(
        {"plugins": rows, "storage_backends": backends},
        [f"{r['name']}\t{'enabled' if r['enabled'] else 'disabled'}" for r in rows]
        + [f"storage backends: {', '.join(backends) or 'none'}"],
    )
