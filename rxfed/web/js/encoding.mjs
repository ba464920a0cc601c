// Bytes and text: UTF-8, unpadded base64url (the one binary-to-text encoding rxfed uses on
// the wire, strict as rxfed/crypto/encoding.py), hex, concatenation.

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder("utf-8", { fatal: true });
const B64URL = /^[A-Za-z0-9_-]*$/;

export const utf8 = (text) => ENCODER.encode(text);
export const fromUtf8 = (bytes) => DECODER.decode(bytes);

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function u32be(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, false);
  return out;
}

export function readU32be(bytes, at = 0) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(at, false);
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error("not lower-case hex");
  return Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));
}

export function b64std(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function b64e(bytes) {
  return b64std(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Decode unpadded base64url; throws on anything else, on non-canonical trailing bits (two
 * texts must never decode to the same bytes) and on a wrong length. */
export function b64d(text, length = null) {
  if (typeof text !== "string" || !B64URL.test(text) || text.length % 4 === 1) throw new Error("not unpadded base64url");
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  const out = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (b64e(out) !== text) throw new Error("non-canonical base64url");
  if (length !== null && out.length !== length) throw new Error(`expected ${length} bytes, got ${out.length}`);
  return out;
}

const B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** RFC 4648 base32 without padding. */
export function b32e(bytes) {
  let bits = 0, value = 0, out = "";
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

export function b32d(text) {
  let bits = 0, value = 0;
  const out = [];
  for (const ch of text) {
    const v = B32.indexOf(ch);
    if (v < 0) throw new Error("not base32");
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Uint8Array.from(out);
}
