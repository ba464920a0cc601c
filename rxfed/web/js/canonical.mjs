// Canonical JSON (spec/canonical-json.md: the integer-only subset of RFC 8785) and the
// strict parser rxfed uses for everything it reads from a node, as rxfed/protocol/canonical.py.

import { fromUtf8, utf8 } from "./encoding.mjs";

export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

export class CanonicalError extends Error {
  constructor(message) {
    super(message);
    this.code = "bad_json";
  }
}

function encode(value, out) {
  if (value === null) out.push("null");
  else if (value === true) out.push("true");
  else if (value === false) out.push("false");
  else if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new CanonicalError("numbers must be integers in the safe range");
    out.push(String(value));
  } else if (typeof value === "string") {
    if (!value.isWellFormed()) throw new CanonicalError("strings must be valid Unicode (no lone surrogates)");
    out.push(JSON.stringify(value)); // ECMAScript escaping is the canonical escaping
  } else if (Array.isArray(value)) {
    out.push("[");
    value.forEach((item, i) => {
      if (i) out.push(",");
      encode(item, out);
    });
    out.push("]");
  } else if (typeof value === "object" && (Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null)) {
    out.push("{");
    // Default sort compares UTF-16 code units, as RFC 8785 orders keys.
    Object.keys(value).sort().forEach((key, i) => {
      if (i) out.push(",");
      encode(key, out);
      out.push(":");
      encode(value[key], out);
    });
    out.push("}");
  } else {
    throw new CanonicalError(`${typeof value} has no canonical JSON form`);
  }
}

/** The canonical UTF-8 bytes of `value`. */
export function canonical(value) {
  return utf8(canonicalText(value));
}

export function canonicalText(value) {
  const out = [];
  encode(value, out);
  return out.join("");
}

function defineKey(obj, key, value) {
  // Never a prototype change through "__proto__".
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Parse JSON strictly: duplicate keys, floats, exponents, NaN, unsafe integers, lone
 * surrogates, raw control characters and non-UTF-8 are refused with CanonicalError. */
export function loads(data) {
  let text;
  try {
    text = typeof data === "string" ? data : fromUtf8(data);
  } catch {
    throw new CanonicalError("not UTF-8");
  }
  let at = 0;
  const fail = (why = "malformed JSON") => {
    throw new CanonicalError(why);
  };
  const ws = () => {
    while (at < text.length && " \t\n\r".includes(text[at])) at++;
  };
  const literal = (word, value) => {
    if (text.startsWith(word, at)) {
      at += word.length;
      return value;
    }
    return fail();
  };
  const string = () => {
    at++; // opening quote
    let out = "";
    for (;;) {
      if (at >= text.length) fail();
      const ch = text[at];
      if (ch === '"') {
        at++;
        break;
      }
      if (ch < " ") fail("control character in a string");
      if (ch === "\\") {
        const e = text[at + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" }[e];
        if (simple !== undefined) {
          out += simple;
          at += 2;
        } else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(at + 2, at + 6))) {
          out += String.fromCharCode(parseInt(text.slice(at + 2, at + 6), 16));
          at += 6;
        } else fail();
      } else {
        out += ch;
        at++;
      }
    }
    if (!out.isWellFormed()) fail("strings must be valid Unicode (no lone surrogates)");
    return out;
  };
  const number = () => {
    const m = /^-?(0|[1-9][0-9]*)/.exec(text.slice(at, at + 40));
    if (!m) fail();
    at += m[0].length;
    if (at < text.length && ".eE".includes(text[at])) fail("numbers must be integers");
    const value = Number(m[0]);
    if (!Number.isSafeInteger(value)) fail("integer out of the safe range");
    return value === 0 ? 0 : value;
  };
  const value = (depth) => {
    if (depth > 512) fail("nested too deeply");
    ws();
    const ch = text[at];
    if (ch === "{") {
      at++;
      const obj = {};
      const seen = new Set();
      ws();
      if (text[at] === "}") {
        at++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[at] !== '"') fail();
        const key = string();
        if (seen.has(key)) fail(`duplicate key ${JSON.stringify(key)}`);
        seen.add(key);
        ws();
        if (text[at] !== ":") fail();
        at++;
        defineKey(obj, key, value(depth + 1));
        ws();
        if (text[at] === ",") at++;
        else if (text[at] === "}") {
          at++;
          return obj;
        } else fail();
      }
    }
    if (ch === "[") {
      at++;
      const arr = [];
      ws();
      if (text[at] === "]") {
        at++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[at] === ",") at++;
        else if (text[at] === "]") {
          at++;
          return arr;
        } else fail();
      }
    }
    if (ch === '"') return string();
    if (ch === "t") return literal("true", true);
    if (ch === "f") return literal("false", false);
    if (ch === "n") return literal("null", null);
    if (ch === "-" || (ch >= "0" && ch <= "9")) return number();
    return fail();
  };
  const result = value(0);
  ws();
  if (at !== text.length) fail();
  return result;
}
