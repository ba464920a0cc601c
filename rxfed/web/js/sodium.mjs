// libsodium (vendored libsodium-wrappers-sumo, rxfed/web/vendor/libsodium.json) and the few
// recipes the page composes from it, named as in rxfed/crypto/. No primitive is implemented
// here: every one is libsodium's.

import sodium from "../vendor/libsodium-wrappers.mjs";
import { concat, utf8 } from "./encoding.mjs";

let loaded = null;

/** libsodium, once its WebAssembly is instantiated. */
export async function ready() {
  if (loaded === null) {
    await sodium.ready;
    loaded = sodium;
  }
  return loaded;
}

function s() {
  if (loaded === null) throw new Error("call ready() first");
  return loaded;
}

export class DecryptionFailed extends Error {
  constructor(message = "decryption failed") {
    super(message);
    this.code = "decryption_failed";
  }
}

export class BadSignature extends Error {
  constructor(message = "bad signature") {
    super(message);
    this.code = "bad_signature";
  }
}

export const randomBytes = (n) => s().randombytes_buf(n);
export const sha256 = (data) => s().crypto_hash_sha256(data);

/** BLAKE2b of `data` (libsodium crypto_generichash_blake2b_salt_personal), with an optional
 * key and a personalisation padded with zeros to 16 bytes, as PyNaCl's nacl.hash.blake2b.
 * The wrappers expose this function only for an empty message, so the page calls the same
 * libsodium function through the module's own exported binding. */
export function blake2b(data, { size = 32, key = null, person }) {
  const lib = s().libsodium;
  const personal = new Uint8Array(16);
  personal.set(typeof person === "string" ? utf8(person).subarray(0, 16) : person.subarray(0, 16));
  const total = size + data.length + (key ? key.length : 0) + 16;
  const base = lib._malloc(total);
  const out = base, input = base + size, keyAt = input + data.length, personAt = keyAt + (key ? key.length : 0);
  try {
    lib.HEAPU8.set(data, input);
    if (key) lib.HEAPU8.set(key, keyAt);
    lib.HEAPU8.set(personal, personAt);
    const rc = lib._crypto_generichash_blake2b_salt_personal(out, size, input, data.length, 0, key ? keyAt : 0,
      key ? key.length : 0, 0, personAt);
    if (rc !== 0) throw new Error("blake2b failed");
    return lib.HEAPU8.slice(out, out + size);
  } finally {
    lib.HEAPU8.fill(0, base, base + total);
    lib._free(base);
  }
}

/** A short identifier: BLAKE2b-128 of `data` with a personalisation, hex (rxfed.crypto.hash_id). */
export function hashId(data, person, size = 16) {
  return Array.from(blake2b(data, { size, person }), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An Ed25519 key pair from its 32-byte seed. */
export class SigningKeyPair {
  constructor(seed) {
    const pair = s().crypto_sign_seed_keypair(seed);
    this.seed = seed;
    this.public = pair.publicKey;
    this._secret = pair.privateKey;
  }
  static generate() {
    return new SigningKeyPair(randomBytes(32));
  }
  sign(message) {
    return s().crypto_sign_detached(message, this._secret);
  }
}

/** Return `message` if `signature` verifies under `publicKey`; else throw BadSignature. */
export function verifySignature(publicKey, message, signature) {
  let ok = false;
  try {
    ok = publicKey.length === 32 && signature.length === 64 && s().crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    ok = false;
  }
  if (!ok) throw new BadSignature();
  return message;
}

/** An X25519 key pair that receives sealed boxes. */
export class BoxKeyPair {
  constructor(secret) {
    this.secret = secret;
    this.public = s().crypto_scalarmult_base(secret);
  }
  static generate() {
    return new BoxKeyPair(randomBytes(32));
  }
  openSealed(sealed) {
    try {
      return s().crypto_box_seal_open(sealed, this.public, this.secret);
    } catch {
      throw new DecryptionFailed();
    }
  }
}

/** The X25519 public key birationally equivalent to an Ed25519 one (libsodium
 * crypto_sign_ed25519_pk_to_curve25519), as rxfed.crypto.node_box_key. */
export function toCurve25519(edPublic) {
  try {
    return s().crypto_sign_ed25519_pk_to_curve25519(edPublic);
  } catch {
    throw new DecryptionFailed("not a usable node key");
  }
}

/** HMAC-SHA256 (libsodium crypto_auth_hmacsha256) of `message` under a 32-byte key. */
export function hmacSha256(key, message) {
  if (key.length !== 32) throw new Error("an HMAC key here is 32 bytes");
  return s().crypto_auth_hmacsha256(message, key);
}

/** libsodium crypto_box_seal to an X25519 public key. */
export const sealTo = (publicKey, message) => s().crypto_box_seal(message, publicKey);

/** `message` sealed to a node's Ed25519 identity key: a libsodium sealed box to its X25519
 * birational equivalent (rxfed.crypto.seal_to_node), so the nodes that relay it read nothing. */
export const sealToNode = (nodePublicKey, message) => sealTo(toCurve25519(nodePublicKey), message);

/** `data` sealed to a box key with the signer's signature over `context || data` inside
 * (rxfed.crypto.seal_signed). */
export function sealSigned(signer, recipientBoxKey, context, data) {
  return sealTo(recipientBoxKey, concat(signer.sign(concat(context, data)), data));
}

export function openSigned(signerPublic, box, context, sealed) {
  const inner = box.openSealed(sealed);
  if (inner.length < 64) throw new DecryptionFailed();
  try {
    verifySignature(signerPublic, concat(context, inner.subarray(64)), inner.subarray(0, 64));
  } catch {
    throw new DecryptionFailed();
  }
  return inner.slice(64);
}

export const AEAD_KEY = 32;
export const AEAD_NONCE = 24;
export const AEAD_TAG = 16;

/** XChaCha20-Poly1305 (IETF) with the nonce in front: `nonce || ciphertext || tag`, as
 * PyNaCl's nacl.secret.Aead. `random` draws the nonce (the CSPRNG unless a vector fixes it). */
export function aeadSeal(key, ad, plaintext, random = randomBytes) {
  const nonce = random(AEAD_NONCE);
  return concat(nonce, s().crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key));
}

export function aeadOpen(key, ad, sealed) {
  if (sealed.length < AEAD_NONCE + AEAD_TAG) throw new DecryptionFailed();
  try {
    return s().crypto_aead_xchacha20poly1305_ietf_decrypt(null, sealed.subarray(AEAD_NONCE), ad,
      sealed.subarray(0, AEAD_NONCE), key);
  } catch {
    throw new DecryptionFailed();
  }
}

/** ISO/IEC 7816-4 padding (sodium_pad) to exactly `size` bytes (size > data.length). */
export function padTo(data, size) {
  // sodium_pad pads to a multiple of the block size; one block of `size` gives `size` bytes.
  return s().pad(data, size);
}

export function unpadAny(data) {
  try {
    return s().unpad(data, data.length);
  } catch {
    throw new DecryptionFailed();
  }
}

/** Argon2id (crypto_pwhash, ALG_ARGON2ID13) of a UTF-8 passphrase. */
export function argon2id(passphrase, salt, opslimit, memlimit, size = 32) {
  return s().crypto_pwhash(size, utf8(passphrase), salt, opslimit, memlimit, s().crypto_pwhash_ALG_ARGON2ID13);
}

export function pwhashCost(name) {
  const x = s();
  const table = {
    min: [x.crypto_pwhash_OPSLIMIT_MIN, x.crypto_pwhash_MEMLIMIT_MIN],
    interactive: [x.crypto_pwhash_OPSLIMIT_INTERACTIVE, x.crypto_pwhash_MEMLIMIT_INTERACTIVE],
    moderate: [x.crypto_pwhash_OPSLIMIT_MODERATE, x.crypto_pwhash_MEMLIMIT_MODERATE],
  };
  if (!(name in table)) throw new Error(`unknown KDF cost ${name}`);
  return { opslimit: table[name][0], memlimit: table[name][1] };
}
