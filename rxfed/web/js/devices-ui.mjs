// The devices views: add a device from its link code, remove a lost one, recover the
// account in this browser with the recovery code, and change the recovery code (each after
// saying what typing the code trusts the page with). The DOM only, text nodes only; the work is in devices.mjs.

import { addDevice, recover, revokeDevices, rotateRecoveryCode } from "./devices.mjs";
import { RecoveryCode } from "./protocol.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
let patient = null;
let changed = () => {};
let recovered = async () => {};

const say = ui.statusLine("devices");

/** What the follow-ups of a new epoch did, in words. */
export function followupText({ grants, communities }, removed = true) {
  const renewed = grants.filter((g) => g.renewed).length, failed = grants.filter((g) => g.error);
  const parts = [];
  if (renewed) parts.push(`${renewed} consent grant${renewed > 1 ? "s" : ""} renewed under new keys`);
  const dropped = grants.filter((g) => g.revoked).length;
  if (dropped) parts.push(`${dropped} consent grant${dropped > 1 ? "s" : ""} made by a removed device revoked (grant again if you wish)`);
  if (failed.length) parts.push(`${failed.length} grant${failed.length > 1 ? "s" : ""} could not be renewed (${failed.map((g) => g.error).join("; ")})`);
  const outcomes = Object.entries(communities || {});
  const rekeyed = outcomes.filter(([, o]) => o === "rekeyed").length, stuck = outcomes.filter(([, o]) => o !== "rekeyed");
  if (rekeyed) {
    parts.push(`${rekeyed} communit${rekeyed > 1 ? "ies" : "y"} rekeyed` + (removed ? ", so a removed device reads nothing posted from now on" : ""));
  }
  if (stuck.length) {
    parts.push(`${stuck.length} communit${stuck.length > 1 ? "ies" : "y"} could not be rekeyed yet (${stuck.map(([a, o]) => `${a}: ${o}`).join("; ")}): `
      + "a removed device may read them until they are: retry with `rxfed community rekey`");
  }
  return parts.length ? ` ${parts.join("; ")}.` : "";
}

function fillRevocable() {
  const others = patient.devices().filter((d) => !d.current && d.revoked == null && d.verified);
  $("revoke-device").replaceChildren(...others.map((d) => {
    const o = document.createElement("option");
    o.value = d.device;
    o.textContent = `Device ${d.device.slice(0, 8)}, since ${new Date(d.created * 1000).toISOString().slice(0, 10)}`;
    return o;
  }));
  $("revoke-form").hidden = others.length === 0;
}

/** Once the vault is open: `onChanged` redraws the device list. */
export function attach(p, onChanged) {
  patient = p;
  changed = onChanged;
  fillRevocable();
}

export function detach() {
  patient = null;
  $("revoke-device").replaceChildren();
  $("add-done").hidden = true;
  $("add-confirm").textContent = "";
  hideNewCode();
  say("");
}

/** The new recovery code is shown once: dropped from the page when written down or locked. */
function hideNewCode() {
  $("rotate-new-code").textContent = "";
  $("rotate-done").hidden = true;
}

/** `opened(patient, message)` shows the journal of an account recovered here. */
export function onRecovered(opened) {
  recovered = opened;
}

$("add-device-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (patient === null) return;
  const form = ev.target;
  ui.guarded(form.querySelector("button[type=submit]"), say, "Adding the device…", async () => {
    const { device, confirmation } = await addDevice(patient, $("add-link").value);
    form.reset();
    $("add-confirm").textContent = confirmation;
    $("add-done").hidden = false;
    changed();
    fillRevocable();
    say(`Added device ${device.slice(0, 8)}.`);
  });
});

$("revoke-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (patient === null) return;
  const form = ev.target;
  ui.guarded(form.querySelector("button[type=submit]"), say, "Removing the device…", async () => {
    if (!$("revoke-understood").checked) throw new Error("Tick that you understand this page sees your recovery code, or use the CLI.");
    const code = RecoveryCode.parse($("revoke-code").value);
    const { revoked, followups } = await revokeDevices(patient, [$("revoke-device").value], code);
    form.reset();
    changed();
    fillRevocable();
    say(`Removed ${revoked.map((d) => d.slice(0, 8)).join(", ")}: it reads nothing written from now on.${followupText(followups)}`);
    document.body.dataset.devicesRevoked = String(revoked.length);
  });
});

$("rotate-code-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (patient === null) return;
  const form = ev.target;
  ui.guarded(form.querySelector("button[type=submit]"), say, "Changing the recovery code…", async () => {
    if (!$("rotate-understood").checked) throw new Error("Tick that you understand this page sees your recovery code, or use the CLI.");
    const current = RecoveryCode.parse($("rotate-code").value);
    let code, followups;
    try {
      ({ code, followups } = await rotateRecoveryCode(patient, current));
    } catch (exc) {
      if (exc.pendingCode) { // the node may have changed it: the new code is shown, never lost
        $("rotate-new-code").textContent = String(exc.pendingCode);
        $("rotate-done").hidden = false;
        exc.message = `No clear answer from the node (${exc.message}), so it may have made the change: write down the new code `
          + "shown below as well and keep both. Reload and change the code again with the new one: if the page accepts it, the new one is in effect.";
      }
      throw exc;
    }
    form.reset();
    changed();
    fillRevocable();
    $("rotate-new-code").textContent = String(code);
    $("rotate-done").hidden = false;
    say(`Your recovery code is changed: the old one no longer works. Write the new one down now.${followupText(followups, false)}`);
    document.body.dataset.recoveryRotated = String(Number(document.body.dataset.recoveryRotated || 0) + 1);
  });
});

$("rotate-kept").addEventListener("click", () => {
  hideNewCode();
  say("The new recovery code is no longer shown.");
});

$("recover-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  $("error").hidden = true;
  $("status").textContent = "Recovering…";
  (async () => {
    try {
      if (!$("recover-understood").checked) throw new Error("Tick that you understand this page sees your recovery code, or recover with the CLI.");
      if ($("recover-pass").value !== $("recover-pass2").value) throw new Error("The two passphrases differ.");
      const { patient: p, followups } = await recover($("recover-code").value, $("recover-pass").value, { keepAll: $("recover-keep").checked });
      form.reset();
      await recovered(p, `Recovered: this browser is a device of your account again, at a new identity epoch.${followupText(followups)}`);
    } catch (exc) {
      const box = $("error");
      box.textContent = exc.status !== undefined ? `The node refused: ${exc.message}` : exc.message || String(exc);
      box.hidden = false;
      $("status").textContent = "";
    } finally {
      button.disabled = false;
    }
  })();
});
