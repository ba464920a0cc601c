// Erasing the account from the page, as rxfed/client/account.py erase_account does: live
// consent grants revoked first (every node that received signals deletes them), every
// community left (a host that refuses the departure does not hold up the erasure: it is
// reported), then the tombstone, signed by this epoch's signing key, and the node erases
// every record, device and key of the patient. Last, this browser forgets the key file and
// its pins.

import { PageCommunities } from "./communities.mjs";
import { signStatement } from "./protocol.mjs";
import { PageConsent } from "./sharing.mjs";
import * as store from "./store.mjs";

export const TOMBSTONE = "rxfed.tombstone";

/** {erased, patient, revoked: [grant ids], left: [addresses], notLeft: [{address, reason}]}. */
export async function eraseAccount(patient) {
  if (patient.state === null) await patient.load();
  const consent = new PageConsent(patient);
  const revoked = [];
  for (const grant of await consent.list()) {
    if (grant.status === "live") {
      await consent.revoke(grant.grant);
      revoked.push(grant.grant);
    }
  }
  const communities = new PageCommunities(patient);
  const left = [], notLeft = [];
  for (const membership of await communities.memberships()) {
    const address = membership.address.text;
    try {
      await communities.leave(address);
      left.push(address);
    } catch (exc) {
      notLeft.push({ address, reason: exc.message || String(exc) });
    }
  }
  await patient.load();
  const { secrets } = patient.state;
  const tombstone = signStatement(secrets.signing, { type: TOMBSTONE, patient: patient.id.patient, epoch: secrets.epoch,
    deleted: patient.node.now() });
  const result = await patient.node.call("POST", "/v1/account/erase", { tombstone }, patient.id.device);
  await store.clear();
  return { ...result, revoked, left, notLeft };
}
