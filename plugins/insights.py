"""Built-in node plugin: federated treatment insights under differential privacy.

It reads ``treatment.outcome`` and ``symptom.trend`` signals granted for the ``insights``
purpose and keeps them in the node's store, one record per period (calendar month),
pseudonym, kind and treatment or symptom, so a signal delivered twice is held once; a
revoked grant's records are deleted, so its patient is in no later release. Only a
patient's home node counts them, and only under a grant that names this plugin
(``plugin:NODE/insights``): signals from a patient of another node, or under a grant to the
whole node, are not kept, so no patient counts twice (spec/privacy.md section 6).

Releases (``rxfed node insights DATA_DIR release``) count these records with each
patient's influence bounded, charge the privacy-budget ledger, add exact discrete Laplace
noise and suppress small cells after the noise (rxfed.store.operations, release_insights).
The records and the ledger live in the store: several worker processes may serve a node.
"""

from __future__ import annotations

from rxfed import hookimpl
from rxfed.plugins import NodeContext, PluginManifest
from rxfed.protocol import insights as pin
from rxfed.protocol.canonical import canonical

NAME = "insights"


class Insights:
    """The plugin. One instance may serve several nodes of one process (the entry point's
    object is shared by every node an in-process federation starts): each signal goes to the
    store of the node that is its patient's home, the only node that counts it."""

    def __init__(self) -> None:
        #: node id -> the node's context (rxfed_node_started)
        self.nodes: dict[str, NodeContext] = {}

    @hookimpl
    def rxfed_plugin_manifest(self):
        return PluginManifest(name=NAME, version="1.0", reads=pin.KINDS, purposes=(pin.PURPOSE,), sends=(),
                              description="treatment insights tables: counts with exact discrete Laplace noise "
                                          "under a privacy budget, small cells suppressed")

    @hookimpl
    def rxfed_node_started(self, node):
        self.nodes[node.node_id] = node

    @hookimpl
    async def rxfed_signals_received(self, signals):
        if not self.nodes:
            raise RuntimeError("the insights plugin needs the node's store (rxfed_node_started was not called)")
        by_token: dict[tuple[str, str], list[tuple[str, str, str, bytes]]] = {}
        recipients: dict[str, str | None] = {}
        for s in signals:
            node = self.nodes.get(s.origin)
            if node is None:
                continue  # a patient is counted by their home node only
            if s.grant not in recipients:
                token = await node.store.received_token(s.grant)
                recipients[s.grant] = token.recipient if token is not None else None
            if recipients[s.grant] != f"plugin:{node.node_id}/{NAME}":
                # Only a grant naming this plugin: the patient's pseudonym differs between a
                # grant to the node and one to the plugin, so taking both would count one
                # patient twice.
                continue
            group = pin.record_of(s.kind, s.body)
            if group is None:
                continue
            body = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in s.body.items()}
            by_token.setdefault((s.origin, s.grant), []).append((s.subject, s.kind, group, canonical(body)))
        for (origin, token), records in by_token.items():
            node = self.nodes[origin]
            await node.store.put_insight_records(token, pin.period_of(node.now()), records)

    @hookimpl
    async def rxfed_consent_revoked(self, grant, subject):
        # the hook names no node: token ids are random and unique, so every node of this
        # process forgets what the token gave it (nothing, on all but one)
        for node in self.nodes.values():
            await node.store.drop_insight_records(grant)


#: The instance the ``rxfed`` entry point registers.
plugin = Insights()
