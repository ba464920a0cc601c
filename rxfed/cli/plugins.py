"""``rxfed plugins``: what plugins are installed, what they read and send, and which run."""

from __future__ import annotations

import argparse

from rxfed.cli import ALIASES, COMPLETE_DIRECTORY, HELP, Output, UsageError, json_flag


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("plugins", help=HELP["plugins"], aliases=ALIASES["plugins"])
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = psub.add_parser("list", help="list the plugins of the rxfed entry-point group, with their manifests")
    ls.add_argument("--disable", action="append", default=[], metavar="NAME", help="treat plugin NAME as disabled")
    ls.add_argument("--node-dir", metavar="DIR",
                    help="also treat the plugins a node's [plugins] disabled setting names as disabled")
    json_flag(ls)
    ls.set_defaults(func=list_plugins)
    new = psub.add_parser("new", help="start a plugin package from rxfed's template (it installs and passes its "
                                      "own tests as generated)")
    new.add_argument("name", metavar="NAME", help="the plugin's name: lower case letters, digits, _ and -, "
                                                  "starting with a letter (e.g. symptom-trends)")
    new.add_argument("--dir", metavar="DIR", default=".",
                     help="where to create the package folder rxfed-NAME (default: here)").complete = COMPLETE_DIRECTORY
    json_flag(new)
    new.set_defaults(func=new_plugin)


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


#: What ``plugins new`` accepts as a name: a plugin name (rxfed.plugins.NAME) that is also
#: a Python identifier once ``-`` becomes ``_``.
PLUGIN_NAME = r"[a-z][a-z0-9_-]{0,39}"


def render_template(name: str, dest) -> list[str]:
    """Write the plugin template for ``name`` into the new folder ``dest``; the files written."""
    import importlib.resources
    import re
    from pathlib import Path

    if not re.fullmatch(PLUGIN_NAME, name) or name.endswith(("-", "_")):
        raise UsageError(f"{name!r} is not a plugin name: lower case letters, digits, _ and -, starting with a letter")
    module = name.replace("-", "_")
    values = {"{{name}}": name, "{{module}}": module,
              "{{class}}": "".join(part.capitalize() for part in re.split(r"[-_]", name))}
    dest = Path(dest)
    if dest.exists():
        from rxfed.errors import Conflict

        raise Conflict(f"{dest} exists already; choose another --dir or name", code="exists")
    written = []

    def copy(folder, into: Path) -> None:
        for item in sorted(folder.iterdir(), key=lambda i: i.name):
            target = into / item.name.replace("MODULE", module).removesuffix(".tmpl")
            if item.is_dir():
                copy(item, target)
                continue
            text = item.read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace(key, value)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(str(target.relative_to(dest)))

    copy(importlib.resources.files("rxfed") / "templates" / "plugin", dest)
    return written


def new_plugin(args: argparse.Namespace) -> None:
    from pathlib import Path

    dest = Path(args.dir).expanduser() / f"rxfed-{args.name}"
    files = render_template(args.name, dest)
    Output(args.json).result({"name": args.name, "directory": str(dest), "files": files}, [
        f"plugin {args.name!r} created; to try it:", f"  cd {dest} && pip install -e '.[test]' && pytest", str(dest)])
