// The key file (spec/crypto.md §4), byte for byte the format of the CLI's keys.json: the
// browser keeps this device's secrets in IndexedDB only inside it, sealed under a key that
// Argon2id derives from the passphrase (rxfed/crypto/keyfile.py).

import { b64d, b64e, utf8 } from "./encoding.mjs";
import { aeadOpen, aeadSeal, argon2id, randomBytes } from "./sodium.mjs";

export const FORMAT = "rxfed-keyfile-1";
export const MIN_PASSPHRASE = 15;

export class WrongPassphrase extends Error {
  constructor(message = "wrong passphrase or damaged key file") {
    super(message);
    this.code = "wrong_passphrase";
  }
}

function pyValue(value, indent, level) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  const keys = Object.keys(value).sort();
  if (indent === null) return "{" + keys.map((k) => `${JSON.stringify(k)}: ${pyValue(value[k], null, 0)}`).join(", ") + "}";
  const pad = " ".repeat(indent * (level + 1));
  return "{\n" + keys.map((k) => `${pad}${JSON.stringify(k)}: ${pyValue(value[k], indent, level + 1)}`).join(",\n")
    + "\n" + " ".repeat(indent * level) + "}";
}

/** The associated data: the header as Python's json.dumps(header, sort_keys=True) writes it
 * (its values are ASCII strings and integers). */
export const keyfileAd = (header) => utf8(pyValue(header, null, 0));

export const keyfileKey = (passphrase, salt, cost) => argon2id(passphrase, salt, cost.opslimit, cost.memlimit);

/** The key file's bytes. `salt` and `nonce` are random unless given (test vectors only). */
export function sealKeyfile(secrets, passphrase, cost, { salt = null, nonce = null } = {}) {
  if (!passphrase) throw new Error("the passphrase must not be empty");
  salt = salt ?? randomBytes(16);
  const header = { format: FORMAT, kdf: { alg: "argon2id13", opslimit: cost.opslimit, memlimit: cost.memlimit, salt: b64e(salt) } };
  const sealed = aeadSeal(keyfileKey(passphrase, salt, cost), keyfileAd(header), secrets, nonce ? () => nonce : randomBytes);
  return utf8(pyValue({ ...header, sealed: b64e(sealed) }, 1, 0) + "\n");
}

export function openKeyfile(data, passphrase) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder().decode(data));
    if (doc.format !== FORMAT || doc.kdf.alg !== "argon2id13") throw new Error("format");
    if (!Number.isSafeInteger(doc.kdf.opslimit) || !Number.isSafeInteger(doc.kdf.memlimit)) throw new Error("cost");
  } catch {
    throw new WrongPassphrase("not an rxfed key file, or it is damaged");
  }
  try {
    const key = keyfileKey(passphrase, b64d(doc.kdf.salt, 16), doc.kdf);
    return aeadOpen(key, keyfileAd({ format: doc.format, kdf: doc.kdf }), b64d(doc.sealed));
  } catch {
    throw new WrongPassphrase();
  }
}
