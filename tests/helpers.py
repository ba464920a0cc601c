"""Low-level request helpers for tests that send what a well-behaved client never would."""

from __future__ import annotations

import time

import aiohttp

from rxfed.node.federation import InboundEffects
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import EventResult


async def raw_request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + path, data=body or None, headers=headers or {}) as resp:
            text = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, (__import__("json").loads(text) if "json" in ctype and text else text)


def signed_headers(client, method: str, path: str, body: bytes, *, key=None, now=None, nonce=None,
                   destination=None) -> dict:
    return sign_request(key or client.identity.device, method=method, target=path,
                        destination=destination or client.identity.node_id, body=body,
                        now=int(time.time() if now is None else now), nonce=nonce)


async def signed(client, method: str, path: str, body=None, **kw):
    raw = body if isinstance(body, bytes) else (canonical(body) if body is not None else b"")
    headers = signed_headers(client, method, path, raw, **kw)
    if raw:
        headers["Content-Type"] = "application/json"
    return await raw_request(client.identity.node_url, method, path, raw, headers)


def record_notes(node) -> list[int]:
    """Install a handler for ``test.note`` events (content ``{"n": int}``) on a running
    node harness; returns the list it fills with the numbers received."""
    seen: list[int] = []

    async def handler(origin, events):
        seen.extend(e.content["n"] for e in events)
        return [EventResult(True) for _ in events], InboundEffects()

    node.state.federation.handlers["test.note"] = handler
    return seen
