"""``rxfed plugins``: what plugins are installed, what they read and send, and which run."""

from __future__ import annotations

import argparse

from rxfed.cli import ALIASES, HELP, Output, json_flag


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("plugins", help=HELP["plugins"], aliases=ALIASES["plugins"])
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = psub.add_parser("list", help="list the plugins of the rxfed entry-point group, with their manifests")
    ls.add_argument("--disable", action="append", default=[], metavar="NAME", help="treat plugin NAME as disabled")
    ls.add_argument("--node-dir", metavar="DIR",
                    help="also treat the plugins a node's [plugins] disabled setting names as disabled")
    json_flag(ls)
    ls.set_defaults(func=list_plugins)


def list_plugins(args: argparse.Namespace) -> None:
    from rxfed.plugins import RxfedPlugins

    disabled = list(args.disable)
    if args.node_dir:
        from rxfed.node.config import NodeConfig

        disabled += NodeConfig.load(args.node_dir).disabled_plugins
    plugins = RxfedPlugins(disabled=disabled)
    try:
        manifests = plugins.manifests()
        # The status counters say nothing in a one-shot process: only the state is shown.
        rows = [{"name": row.name, "enabled": row.enabled, "disabled_reason": row.disabled_reason,
                 "last_error": row.last_error,
                 "manifest": m.to_json() if (m := manifests.get(row.name)) else None}
                for row in plugins.status()]
        kinds = [{"name": kind.name, "plugin": plugin, "description": kind.description}
                 for plugin, defined in plugins.signal_kinds_by_plugin().items() for kind in defined]
        kinds.sort(key=lambda k: (k["name"], k["plugin"]))
        backends = sorted(plugins.storage_backends())
    finally:
        plugins.close()

    def lines() -> list[str]:
        out = []
        for r in rows:
            state = "enabled" if r["enabled"] else "disabled"
            out.append("\t".join([r["name"], state, r["disabled_reason"] or ""]).rstrip())
            if r["last_error"]:
                out.append(f"  error: {r['last_error']}")
            if m := r["manifest"]:
                reads, purposes, sends = (", ".join(m[key]) for key in ("reads", "purposes", "sends"))
                out.append(f"  version {m['version']}; reads {reads or 'nothing'}; for {purposes or 'no purpose'}; "
                           f"sends {sends or 'nothing'}")
        defined = ", ".join(f"{k['name']} ({k['plugin']})" for k in kinds)
        out.append(f"signal kinds: {defined or 'none'}")
        out.append(f"storage backends: {', '.join(backends) or 'none'}")
        return out

    Output(args.json).result({"plugins": rows, "signal_kinds": kinds, "storage_backends": backends}, lines)

