// The Matches view: patients on other nodes (and this one) who share the patient's diagnosis
// categories, from the home node's GET /v1/matching/suggestions. The DOM only, text nodes
// only; the checks are in matches.mjs. app.mjs calls attach() once the vault is open and
// detach() when the page locks.

import { checked, lines } from "./matches.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
let patient = null;
const say = ui.statusLine("matches");

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

async function refresh() {
  let view;
  try {
    view = checked(await patient.node.call("GET", "/v1/matching/suggestions", null, patient.id.device));
  } catch (exc) {
    if (exc.code === "no_matching_grant") {
      $("matches-list").replaceChildren();
      say("Suggestions are for patients who share their diagnosis categories for matching: grant "
        + "“your diagnosis categories” for the purpose “matching” to your node's matching plugin (Sharing, below).");
      document.body.dataset.matches = "no-grant";
      return;
    }
    throw exc;
  }
  const shown = lines(view);
  $("matches-list").replaceChildren(...shown.map(item));
  say(shown.length ? `Counts are at least ${view.k} and rounded down.`
    : `No suggestions yet: a category shows once at least ${view.k} consenting patients on a node share it.`);
  document.body.dataset.matches = String(shown.length);
}

export function attach(p) {
  patient = p;
  $("matches").hidden = false;
}

export function detach() {
  patient = null;
  $("matches-list").replaceChildren();
  $("matches").hidden = true;
  say("");
  delete document.body.dataset.matches;
}

$("matches-load").addEventListener("click", (ev) => {
  if (patient === null) return;
  ui.guarded(ev.target, say, "Asking your node…", refresh);
});
