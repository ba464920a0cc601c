"""A patient's consent, on the device: grants, signals derived and sealed here, revocation,
and the audit log checked against the heads this device has seen.

Signals are derived from the decrypted vault by client hooks (the built-in ``signals``
plugin and any installed one), validated against their kind, and sealed to the recipient
node's key, so the home node relays them without reading them unless it is the recipient.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import attrs

from rxfed.client.profile import write_private
from rxfed.client.sdk import IntegrityError, PatientCore
from rxfed.consent import audit as pa
from rxfed.consent import grants as consent_grants
from rxfed.crypto import b64e, pseudonym_key, random_bytes, seal_to_node
from rxfed.errors import BadRequest, NotFound, RxfedError
from rxfed.plugins import RxfedPlugins
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import NodeDocument

AUDIT_HEADS = "audit.json"
#: The grants and tokens this profile revoked: never shared under again, whatever the
#: home node lists.
REVOKED = "consent-revoked.json"
#: How long a grant runs when the patient names no end: 180 days.
DEFAULT_DURATION = 180 * 86400


#: What the client found for a recipient's acknowledgement of a revocation.
ACK_VERIFIED = "verified"  # signed by a key the node publishes, for this token and revocation
ACK_FORGED = "forged"  # present, but not signed by the node for this token and revocation
ACK_UNCHECKED = "unchecked"  # present, but the node's keys could not be fetched just now


@attrs.frozen
class AuditView:
    entries: tuple[dict, ...]
    head: pa.Head
    verified: bool = True
    #: For each ``acknowledged`` entry (by ``seq``): ``verified``, ``forged`` (the signed
    #: acknowledgement is missing or false: the home node logged what the recipient did not
    #: say) or ``unchecked`` (the recipient's keys could not be fetched).
    acknowledgements: dict = attrs.field(factory=dict)

    @property
    def forged(self) -> list[int]:
        return sorted(seq for seq, state in self.acknowledgements.items() if state == ACK_FORGED)

    def to_json(self) -> dict:
        return {"entries": list(self.entries), "head": self.head.to_json(), "verified": self.verified,
                "acknowledgements": {str(seq): state for seq, state in sorted(self.acknowledgements.items())}}


def node_url(node_id: str) -> str:
    """Where a node answers: its id is the authority of its public URL, HTTPS off loopback
    (spec/federation.md); a loopback node (a development federation) answers plain HTTP."""
    host = node_id.rsplit(":", 1)[0] if node_id.count(":") == 1 else node_id
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return f"{'http' if loopback else 'https'}://{node_id}"


class PatientConsent:
    """Consent operations for one patient client. ``plugins`` supplies signal derivation
    (client hooks); by default every installed plugin."""

    def __init__(self, client: PatientCore, plugins: RxfedPlugins | None | bool = None):
        self.client = client
        self._plugins = plugins
        #: Token statements as :meth:`list` last parsed them, by id.
        self._tokens: dict[str, consent_grants.Token] = {}

    @property
    def plugins(self) -> RxfedPlugins:
        if self._plugins is None:
            self._plugins = RxfedPlugins()
        elif self._plugins is False:  # revocation and listing need no plugins
            self._plugins = RxfedPlugins(entry_points=False)
        return self._plugins

    def _now(self) -> int:
        return int(self.client.clock())

    def _key(self, node: str, purpose: str, plugin: str | None, subject_key: bytes | None = None):
        """The pseudonymous key for (node, purpose, plugin): of the current identity epoch
        for a new token, or of the epoch whose key ``subject_key`` is (tokens made before a
        rotation keep theirs). Call ``await self.client.secrets()`` first."""
        label = consent_grants.pseudonym_label(node, purpose, plugin)
        current = pseudonym_key(self.client.pseudonym_secret(), label)
        if subject_key is None or current.public == subject_key:
            return current
        for secret in self.client.pseudonym_secrets():
            key = pseudonym_key(secret, label)
            if key.public == subject_key:
                return key
        return current

    async def nodes(self) -> dict:
        """The nodes a grant can reach through the home node, and the kinds it knows."""
        return await self.client._call("GET", "/v1/consent/nodes")

    # -- signals ---------------------------------------------------------------------------
    async def derive(self, kind: str, records=None) -> list[dict]:
        """The signals of ``kind`` this patient's records give, exactly as they would leave
        the device (derived and validated here; nothing is sent)."""
        if records is None:
            records = await self.client.records()
        today = dt.datetime.fromtimestamp(self._now(), dt.timezone.utc).date()
        return self.plugins.derive_signals(kind, records, today)

    async def _document(self, node: str) -> dict:
        """A node's ``/.well-known/rxfed`` document, from the node itself."""
        identity = self.client.identity
        url = identity.node_url if node == identity.node_id else node_url(node)
        return await self.client.discover(self.client._session_or_new(), url)

    async def offers(self, nodes: list[str]) -> dict[str, tuple[consent_grants.OfferedPlugin, ...] | None]:
        """What each node says it offers: the plugins there that receive signals, with the
        kinds they read and the purposes they serve (None: the node does not say). Asked of
        each node itself, never of the home node, which could claim anything for its peers."""
        import asyncio

        async def one(node: str):
            doc = await self._document(node)
            if doc.get("node_id") != node:
                raise IntegrityError(f"{node}'s document says it is {doc.get('node_id')!r}")
            return consent_grants.offered_plugins(doc, node)

        found = await asyncio.gather(*(one(n) for n in nodes))
        return dict(zip(nodes, found))

    async def recipients(self) -> dict:
        """What a grant can reach: the signal kinds the home node knows, and for each node it
        federates with, the plugins there that receive signals (as the node publishes them)."""
        reachable = await self.nodes()
        ids = [n["node_id"] for n in reachable["nodes"]]
        offers = await self.offers(ids)
        return {"home": reachable["home"], "kinds": sorted(k["name"] for k in reachable["kinds"]),
                "nodes": [{"node_id": node, "plugins": None if offers[node] is None
                           else [p.to_json() for p in offers[node]]} for node in ids]}

    async def _node_keys(self, node: str) -> NodeDocument:
        """A node's keys, from the node itself (``/.well-known/rxfed``), never from the home
        node: a home that could name a recipient's keys could read what it relays, and sign
        acknowledgements in the recipient's name."""
        url = self.client.identity.node_url if node == self.client.identity.node_id else node_url(node)
        doc = NodeDocument.from_json(await self._document(node))
        if doc.node_id != node:
            raise IntegrityError(f"{url} says it is {doc.node_id!r}, not {node}")
        if not doc.keys:
            raise IntegrityError(f"{node} publishes no key")
        return doc

    async def _seal_key(self, node: str) -> bytes:
        """The key to seal to: the node's newest key without an end date."""
        keys = (await self._node_keys(node)).keys
        return max(keys, key=lambda k: (k.valid_until is None, k.valid_from)).public_key

    async def share(self, grant_id: str | None = None) -> list[dict]:
        """Send the current signals under every live grant (or one): a delivery replaces
        what the grant's recipients hold from before. Only under tokens this profile made
        (the home node cannot redirect them), each sealed to its node's own key and signed
        by the token's pseudonymous key."""
        grants = [g for g in await self.list() if g["status"] == "live" and grant_id in (None, g["grant"])]
        if grant_id is not None and not grants:
            raise NotFound("no live grant with that id", code="unknown_grant")
        records = await self.client.records()
        revoked_here = self._revoked_here()["tokens"]
        out = []
        for grant in grants:
            target = consent_grants.Recipient.parse(grant["recipient"])
            if not grant["device_active"]:
                out.extend({"grant": grant["grant"], "node": t["node"], "sent": False,
                            "reason": "made by a device that is no longer active: grant again (not sent)"}
                           for t in grant["tokens"])
                continue
            for token in grant["tokens"]:
                parsed = self._tokens.get(token["token"])
                if parsed is not None and (token["token"] in revoked_here or self._key(
                        parsed.node, parsed.purpose, target.only_plugin()).public != parsed.subject_key):
                    # revoked by this profile, or made under an earlier identity epoch (whose
                    # pseudonym secret a revoked device may hold): renew, never share under it
                    out.append({"grant": grant["grant"], "node": token["node"], "sent": False,
                                "reason": "this token is revoked or of an earlier identity epoch (not sent)"})
                    continue
                if not token["verified"] or not token["named"]:
                    reason = ("this token was not made by this profile" if not token["verified"] else
                              "this token's node is not one the grant names (made before grants named their "
                              "nodes: grant again)" if parsed.nodes is None else
                              "this token's node is not one the grant names")
                    out.append({"grant": grant["grant"], "node": token["node"], "sent": False,
                                "reason": reason + " (not sent)"})
                    continue
                try:
                    seal_key = await self._seal_key(parsed.node)
                except RxfedError as exc:
                    out.append({"grant": grant["grant"], "node": token["node"], "sent": False,
                                "reason": f"cannot get the node's key: {exc.message}"})
                    continue
                key = self._key(parsed.node, parsed.purpose, target.only_plugin())
                bodies = await self.derive(parsed.kind, records)
                delivery = consent_grants.new_id()
                # Go on from the token's last sequence number, whichever device sent it (the
                # home node keeps it); a token shared before the node kept it continues above
                # any number it used then.
                last = token["seq"] if token["seq"] is not None else (
                    consent_grants.legacy_seq_floor(int(self.client.clock() * 1000)) if token["shared"] else 0)
                seq = consent_grants.next_seq(last, random_bytes(4))
                signed = consent_grants.sign_delivery(key, token=parsed.id, node=parsed.node, delivery=delivery, seq=seq,
                                          signals=[{"kind": parsed.kind, "body": b} for b in bodies])
                result = await self.client._call("POST", "/v1/consent/signals", {
                    "token": parsed.id, "delivery": delivery, "seq": seq, "count": len(bodies),
                    "sealed": b64e(seal_to_node(seal_key, canonical(signed)))})
                out.append({"grant": grant["grant"], "node": token["node"], "sent": True, "signals": len(bodies),
                            "queued": result.get("queued", False), "plugins": result.get("plugins", [])})
        return out

    # -- grants ----------------------------------------------------------------------------
    async def grant(self, kind: str, purpose: str, recipient: str, *, until: int | None = None,
                    nodes: list[str] | None = None, share: bool = True) -> dict:
        """Grant ``kind`` signals for ``purpose`` to ``recipient``; returns the grant id,
        its tokens' nodes and (with ``share``) what was sent at once.

        The grant names its nodes, and the patient signs them: for ``federation``, the nodes
        the home node federates with now. With ``nodes`` (the nodes the patient agrees to),
        the grant is refused unless those are exactly the nodes the home node offers, so a
        home node cannot slip in a peer of its own."""
        now = self._now()
        target = consent_grants.Recipient.parse(recipient, "--to")
        consent_grants.check_purpose(purpose)
        await self.client.secrets()
        if until is not None and until <= now:
            raise consent_grants.ConsentError("a grant ends in the future", code="bad_date")
        # whole days: every recipient sees this end, so it must not single the patient out
        not_after = consent_grants.end_of_day(until if until is not None else now + DEFAULT_DURATION)
        if not_after - now > consent_grants.MAX_DURATION:
            not_after -= consent_grants.DAY
        if not_after <= now or not_after - now > consent_grants.MAX_DURATION:
            raise consent_grants.ConsentError("a grant ends in the future and runs for at most a year", code="bad_date")
        reachable = await self.nodes()
        known_kinds = {k["name"] for k in reachable["kinds"]}
        if kind not in known_kinds:
            raise consent_grants.ConsentError(f"unknown signal kind {kind!r} (known: {', '.join(sorted(known_kinds))})",
                                  code="unknown_kind")
        federated = [n["node_id"] for n in reachable["nodes"]]
        reached = sorted(target.nodes(federated))
        for node in reached:
            if node not in federated:
                raise consent_grants.ConsentError(f"{node} is not a node your home node federates with", code="unknown_node")
        if nodes is not None and set(nodes) != set(reached):
            added, missing = sorted(set(reached) - set(nodes)), sorted(set(nodes) - set(reached))
            raise consent_grants.ConsentError(
                "the grant would reach other nodes than you named: "
                + "; ".join([*([f"also {', '.join(added)}"] if added else []),
                             *([f"not {', '.join(missing)} (not federated or unreachable now)"] if missing else [])]),
                code="nodes_differ")
        if len(reached) > consent_grants.MAX_NODES:
            raise consent_grants.ConsentError(f"a grant reaches at most {consent_grants.MAX_NODES} nodes; grant to nodes by name",
                                  code="bad_recipient")
        # Checked against what the recipients themselves publish before anything is signed:
        # a plugin that is not there, or a purpose nobody serves, would only send signals
        # where nothing uses them.
        receivers = consent_grants.grant_receivers(target, kind, purpose, await self.offers(reached))
        identity = self.client.identity
        tokens = [consent_grants.Token.create(self._key(node, purpose, target.only_plugin()), node=node, home=identity.node_id,
                                  kind=kind, purpose=purpose, recipient=target, nodes=reached, issued=now,
                                  not_after=not_after)
                  for node in reached]
        grant = consent_grants.Grant.create(identity.device, patient=self.client.patient, device=self.client.device, kind=kind,
                                purpose=purpose, recipient=target, issued=now, not_after=not_after, nodes=reached,
                                tokens=[t.id for t in tokens])
        result = await self.client._call("POST", "/v1/consent/grants",
                                         {"grant": grant.signed, "tokens": [t.signed for t in tokens]})
        out = {"grant": result["grant"], "kind": kind, "purpose": purpose, "recipient": str(target),
               "not_after": not_after, "nodes": reached, "receivers": receivers, "shared": []}
        if share:
            out["shared"] = await self.share(result["grant"])
        return out

    async def list(self) -> list[dict]:
        """Every grant with its status (live, expired, revoked), where each token went,
        whether it was shared, and which nodes acknowledged a revocation: only those whose
        acknowledgement is signed by a key the node itself publishes (``forged`` lists the
        nodes the home node says acknowledged, with no such signature)."""
        now = self._now()
        out = []
        documents: dict = {}
        await self.client.secrets()
        devices = await self.client.devices_by_certificate()
        revoked_here = self._revoked_here()
        for g in (await self.client._call("GET", "/v1/consent/grants"))["grants"]:
            signed_by = self._signed_by(g, devices)
            mine = {t["token"]: token for t in g["tokens"] if (token := self._mine(g, t)) is not None}
            if signed_by is None:
                mine = {}  # a grant no device of the patient's signed: nothing of it is ours
            # The nodes the patient signed: every token this profile made names them.
            named = {tok.nodes for tok in mine.values()}
            signed_nodes = named.pop() if len(named) == 1 else None
            tokens = []
            for t in g["tokens"]:
                token = mine.get(t["token"])
                ack = None
                if g["revoked"] and token is not None and t.get("ack") is not None:
                    ack = await self._check_ack(token, t.get("revocation"), t["ack"], documents)
                tokens.append({"token": t["token"], "node": t["node"], "shared": t["shared"], "seq": t.get("seq"),
                               "acknowledged": t["acknowledged"] if ack == ACK_VERIFIED else None, "ack": ack,
                               "verified": token is not None,
                               "named": token is not None and signed_nodes is not None
                               and token.node in signed_nodes})
            # the status from what the patient signed and did, not from the node's columns
            not_after = signed_by[1].not_after if signed_by else g["not_after"]
            revoked = g["revoked"] or (g["grant"] in revoked_here["grants"] and now)
            status = ("foreign" if signed_by is None else "revoked" if revoked else
                      "expired" if not_after <= now else "live")
            out.append({"grant": g["grant"], "kind": g["kind"], "purpose": g["purpose"], "recipient": g["recipient"],
                        "not_after": not_after, "created": g["created"], "revoked": g["revoked"],
                        "status": status, "tokens": tokens,
                        "device": signed_by[0] if signed_by else None,
                        "device_active": bool(signed_by and signed_by[2]),
                        "nodes": list(signed_nodes) if signed_nodes is not None else None,
                        "acknowledged": sorted(t["node"] for t in tokens if t["ack"] == ACK_VERIFIED),
                        "pending": sorted(t["node"] for t in tokens if g["revoked"] and t["ack"] != ACK_VERIFIED),
                        "forged": sorted(t["node"] for t in tokens if t["ack"] == ACK_FORGED)})
        return out

    def _signed_by(self, listed: dict, devices: dict) -> tuple[str, consent_grants.Grant, bool] | None:
        """(device, grant, whether that device is active) if the grant statement the node
        lists is signed by a device of this patient whose certificate verifies, and says what
        the listing says (tokens the node added are not the grant's: ``_mine`` refuses them);
        else None (the node, or someone, made it)."""
        try:
            body = listed["statement"]["body"]
            cert, active = devices[body["device"]]
            grant = consent_grants.Grant.from_json(listed["statement"], cert.sign_key)
        except (RxfedError, KeyError, TypeError):
            return None
        if (grant.id != listed["grant"] or grant.patient != self.client.patient or grant.kind != listed["kind"]
                or grant.purpose != listed["purpose"] or str(grant.recipient) != listed["recipient"]
                or not set(grant.tokens) <= {t["token"] for t in listed["tokens"]}):
            return None
        return grant.device, grant, active

    def _revoked_here(self) -> dict:
        try:
            doc = json.loads((self.client.profile.path / REVOKED).read_text())
            return {"grants": set(doc["grants"]), "tokens": set(doc["tokens"])}
        except FileNotFoundError:
            return {"grants": set(), "tokens": set()}
        except (ValueError, KeyError, TypeError):
            raise BadRequest(f"{self.client.profile.path / REVOKED} is damaged", code="bad_profile") from None

    def _remember_revoked(self, grant_id: str, tokens: list[str]) -> None:
        known = self._revoked_here()
        doc = {"grants": sorted(known["grants"] | {grant_id}), "tokens": sorted(known["tokens"] | set(tokens))}
        write_private(self.client.profile.path / REVOKED, json.dumps(doc).encode())

    def _mine(self, grant: dict, listed: dict) -> consent_grants.Token | None:
        """The token as listed by the home node, if this profile made it for this grant's
        scope and node (its pseudonym key is one this profile derives); else None."""
        try:
            token = consent_grants.Token.from_json(listed["statement"])
        except RxfedError:
            return None  # not a token at all
        self._tokens[token.id] = token
        target = consent_grants.Recipient.parse(grant["recipient"])
        if (token.id != listed["token"] or token.node != listed["node"] or token.kind != grant["kind"]
                or token.purpose != grant["purpose"] or token.recipient != target
                or self._key(token.node, token.purpose, target.only_plugin(), token.subject_key).public
                != token.subject_key):
            return None
        return token

    async def _check_ack(self, token: consent_grants.Token, revocation, ack, documents: dict) -> str:
        """Check a relayed acknowledgement: ``revocation`` must be this patient's (signed by
        the token's pseudonym key) and ``ack`` signed for it by a key the token's node
        publishes itself. ``documents`` caches node keys for one listing."""
        if token.node not in documents:
            try:
                documents[token.node] = [k.public_key for k in (await self._node_keys(token.node)).keys]
            except RxfedError:
                documents[token.node] = None
        keys = documents[token.node]
        if keys is None:
            return ACK_UNCHECKED
        try:
            consent_grants.check_token_revocation(revocation, token.id, token.subject_key)
            consent_grants.Acknowledgement.check(ack, token=token.id, node=token.node, revocation=revocation, node_keys=keys)
        except RxfedError:
            return ACK_FORGED
        return ACK_VERIFIED

    async def renew(self) -> list[dict]:
        """After an identity rotation: every live grant whose tokens were made under an
        earlier epoch's pseudonym secret (which a revoked device knew) is revoked and
        granted again, same kind, purpose, recipients and end, under the current epoch's.
        Returns what became of each: ``{grant, renewed: new grant id}`` or ``{grant, error}``."""
        out = []
        for grant in await self.list():
            if grant["status"] != "live":
                continue
            target = consent_grants.Recipient.parse(grant["recipient"])
            stale = [t for t in grant["tokens"] if t["verified"]
                     and self._key(t["node"], grant["purpose"], target.only_plugin()).public
                     != self._tokens[t["token"]].subject_key]
            if not stale and grant["device_active"]:
                continue
            try:
                if not grant["device_active"]:
                    # made by a device revoked since (perhaps the stolen one): not the
                    # patient's to renew; revoke it and let them grant again if they wish
                    await self.revoke(grant["grant"])
                    out.append({"grant": grant["grant"], "revoked": "made by a device that is no longer active"})
                    continue
                # grant first: if the new grant is refused, the old one still stands
                again = await self.grant(grant["kind"], grant["purpose"], grant["recipient"],
                                         until=grant["not_after"] - 1, nodes=grant["nodes"])
                await self.revoke(grant["grant"])
                out.append({"grant": grant["grant"], "renewed": again["grant"]})
            except RxfedError as exc:
                out.append({"grant": grant["grant"], "error": f"{exc.code}: {exc.message}"})
        return out

    async def revoke(self, grant_id: str) -> dict:
        """Revoke a grant: at once on the home node, then federated to every node that got
        a token; ``list()`` shows who has acknowledged."""
        found = [g for g in (await self.client._call("GET", "/v1/consent/grants"))["grants"] if g["grant"] == grant_id]
        if not found:
            raise NotFound("no such grant", code="unknown_grant")
        grant = found[0]
        now = self._now()
        await self.client.secrets()
        target = consent_grants.Recipient.parse(grant["recipient"])
        revocations = {}
        for t in grant["tokens"]:
            token = consent_grants.Token.from_json(t["statement"])
            key = self._key(token.node, token.purpose, target.only_plugin(), token.subject_key)
            # every recipient of the grant sees this time: a whole day, so it links nothing
            revocations[t["token"]] = consent_grants.revoke_token(key, t["token"], consent_grants.day(now))
        # remembered before it is sent: whatever the node lists later, nothing more is shared
        self._remember_revoked(grant_id, list(revocations))
        return await self.client._call("POST", "/v1/consent/revoke", {
            "grant": grant_id, "revocation": consent_grants.revoke_grant(self.client.identity.device, grant_id, now),
            "tokens": revocations})

    # -- audit -----------------------------------------------------------------------------
    def _heads(self) -> list[pa.Head]:
        try:
            doc = json.loads((self.client.profile.path / AUDIT_HEADS).read_text())
            return [pa.Head.from_json(h) for h in doc["heads"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError):
            raise BadRequest(f"{self.client.profile.path / AUDIT_HEADS} is damaged", code="bad_profile") from None

    def _remember(self, heads: list[pa.Head]) -> None:
        doc = {"heads": [h.to_json() for h in heads[-1000:]]}
        write_private(self.client.profile.path / AUDIT_HEADS, json.dumps(doc).encode())

    async def audit(self) -> AuditView:
        """The audit log, verified: it hashes to a head the home node signed, and agrees with
        every head this device saw before (else :class:`rxfed.consent.audit.AuditTampered`)."""
        doc = await self.client._call("GET", "/v1/consent/audit")
        node_keys = [k.public_key for k in (await self._node_keys(self.client.identity.node_id)).keys]
        seen = self._heads()
        head = pa.verify(self.client.patient, doc["entries"], doc["head"], node_keys, seen)
        if not seen or seen[-1] != head:
            self._remember([*seen, head])
        return AuditView(tuple(doc["entries"]), head, acknowledgements=await self._audit_acks(doc["entries"]))

    async def _audit_acks(self, entries: list[dict]) -> dict[int, str]:
        """Check the signed acknowledgement every ``acknowledged`` entry carries: the home
        node writes the log, so an entry alone proves nothing."""
        acked = [e for e in entries if e.get("event") == "acknowledged"]
        if not acked:
            return {}
        await self.client.secrets()
        grants = (await self.client._call("GET", "/v1/consent/grants"))["grants"]
        tokens = {t["token"]: (g, t) for g in grants for t in g["tokens"]}
        out, documents = {}, {}
        for entry in acked:
            ack = entry.get("ack")
            body = ack.get("body") if isinstance(ack, dict) else None
            found = tokens.get(body.get("token")) if isinstance(body, dict) and isinstance(body.get("token"), str) \
                else None
            token = self._mine(found[0], found[1]) if found else None
            if token is None or found[0]["grant"] != entry.get("grant") or token.node != entry.get("node") \
                    or not found[0]["revoked"]:
                out[entry["seq"]] = ACK_FORGED
                continue
            out[entry["seq"]] = await self._check_ack(token, found[1].get("revocation"), ack, documents)
        return out

    # -- FHIR ------------------------------------------------------------------------------
    async def fhir_bundle(self) -> dict:
        """Every grant as a FHIR R4B Consent resource, in a collection Bundle."""
        from rxfed.client.fhir import consent_bundle

        return consent_bundle(self.client.patient, await self.list())
