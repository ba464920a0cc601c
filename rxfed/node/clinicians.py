"""What a hospital node publishes for the clinician credentials it issues.

(``rxfed node clinicians DATA_DIR issue|list|revoke``, which issues and revokes them, is
:mod:`rxfed.node.clinician_admin`.) The node serves what verifiers need and nothing else: its ``did:web`` controller document
(``/.well-known/did.json``) and the signed Bitstring Status Lists its credentials name
(``/v1/clinicians/status/{list}``), the same document for every requester, signed afresh
when a revocation changed it or it is older than its ``ttl`` (spec/crypto.md section 12).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from rxfed.errors import BadRequest, NotFound
from rxfed.node.http import NODE
from rxfed.protocol import credentials as vc
from rxfed.protocol.data_integrity import Issuer, did_document
from rxfed.protocol.jcs import jcs
from rxfed.protocol.status_list import (LIST_TTL, LIST_VALIDITY, MIN_BITS, Bitstring, publication_headers,
                                        status_list_credential)

#: The status list new credentials go on (one list holds 131,072 of them).
LIST_ID = "1"

routes = web.RouteTableDef()


# -- what the node serves ---------------------------------------------------------------------


class PublishedLists:
    """The signed status lists this process serves, re-signed when the revoked set or the
    node's signing key changed or the copy is older than the ``ttl`` (so a copy is always
    valid for most of a day)."""

    def __init__(self) -> None:
        self._signed: dict[str, tuple[tuple, int, bytes]] = {}
        self._lock = asyncio.Lock()

    async def get(self, state, list_id: str) -> bytes | None:
        issued_here, revoked = await state.store.status_list(list_id)
        if not issued_here:
            return None
        now = state.now()
        # signed afresh when the revoked set or the node's key changed: a copy under a key
        # the node no longer publishes verifies for nobody (unknown_issuer_key)
        key = (tuple(revoked), state.signing_key().public)
        cached = self._signed.get(list_id)
        if cached is not None and cached[0] == key and now - cached[1] < LIST_TTL:
            return cached[2]
        async with self._lock:
            bits = Bitstring.empty(MIN_BITS)
            for index in revoked:
                bits = bits.with_bit(index)
            issuer = Issuer(state.config.node_id, state.config.name, state.signing_key())
            url = vc.status_list_url(state.config.public_url, list_id)
            document = status_list_credential(issuer, url, bits, valid_from=now, valid_until=now + LIST_VALIDITY)
            body = jcs(document)
            self._signed[list_id] = (key, now, body)
            return body


_LISTS = web.AppKey("clinician_status_lists", PublishedLists)


@routes.get("/.well-known/did.json")
async def did_json(request: web.Request) -> web.Response:
    """The node's ``did:web`` controller document: its keys, for verifiers that know nothing
    of rxfed (rxfed's own read ``/.well-known/rxfed``, which also says when each key ended)."""
    state = request.app[NODE]
    document = did_document(state.config.node_id, tuple(_node_keys(state)))
    return web.Response(body=jcs(document), content_type="application/did+json",
                        headers={"Cache-Control": f"public, max-age={LIST_TTL}"})


def _node_keys(state):
    from rxfed.protocol.federation import NodeKey

    return [NodeKey(k.key.public, k.valid_from, k.valid_until) for k in state.keys]


@routes.get("/v1/clinicians/status/{list_id}")
async def status_list(request: web.Request) -> web.Response:
    list_id = request.match_info["list_id"]
    if not re.fullmatch(r"[a-z0-9-]{1,32}", list_id):
        raise BadRequest("a status list id is 1 to 32 lower-case letters, digits or hyphens", code="bad_status_list")
    body = await request.app[_LISTS].get(request.app[NODE], list_id)
    if body is None:
        raise NotFound(f"this node publishes no status list {list_id!r}", code="unknown_status_list")
    return web.Response(body=body, headers=publication_headers())


def install(app: web.Application) -> None:
    app[_LISTS] = PublishedLists()
    app.add_routes(routes)
