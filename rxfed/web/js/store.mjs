// This browser's profile in IndexedDB: the key file (sealed under the passphrase, never the
// keys in the clear) and the pins (what this browser has seen, not secret: counter, epoch,
// statement hash), as the CLI keeps keys.json and state.json.

const DB = "rxfed";
const STORE = "profile";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function run(mode, work) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export const get = (key) => run("readonly", (store) => store.get(key));
/** Write several keys in one transaction: all of them or none. */
export const putAll = (entries) => run("readwrite", (store) => {
  for (const [key, value] of Object.entries(entries)) store.put(value, key);
});
/** Read one key and write `change(value)` in its place, in one transaction (`change` must
 * not throw: it runs inside the transaction). */
export const update = (key, change) => run("readwrite", (store) => {
  const read = store.get(key);
  read.onsuccess = () => store.put(change(read.result), key);
});
export const clear = () => run("readwrite", (store) => store.clear());

export const EMPTY_PINS = Object.freeze({ counter: 0, epoch: 0, identity_hash: null, devices: {} });
