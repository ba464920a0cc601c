// The Insights view: the newest noisy table of a diagnosis category, as `rxfed insights`
// shows it. The DOM only, text nodes only; the work is in insights.mjs. app.mjs calls
// attach() once the vault is open and detach() when the page locks.

import { fetchInsights, forTreatment, insightsLines } from "./insights.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
let patient = null;

const say = ui.statusLine("insights");

function show(doc) {
  const all = insightsLines(doc);
  const budget = all.filter((l) => l.startsWith("your node's privacy budget"));
  const [head, ...rest] = all.filter((l) => !budget.includes(l));
  $("insights-summary").textContent = [head, ...budget].join(" ");
  const items = [];
  let current = null;
  for (const line of rest) {
    if (!line.startsWith("  ")) {
      current = document.createElement("li");
      const name = document.createElement("div");
      name.className = "meta";
      name.textContent = line;
      current.append(name, document.createElement("ul"));
      const treatment = doc.treatments[items.length];
      if (treatment) current.dataset.treatment = treatment.treatment;
      items.push(current);
    } else {
      const li = document.createElement("li");
      li.textContent = line.trim();
      current.lastChild.append(li);
    }
  }
  $("insights-table").replaceChildren(...items);
  document.body.dataset.insights = doc.release;
  document.body.dataset.insightsRows = String(items.length);
}

export function attach(p) {
  patient = p;
  $("insights").hidden = false;
}

export function detach() {
  patient = null;
  $("insights-table").replaceChildren();
  $("insights-summary").textContent = "";
  $("insights").hidden = true;
  say("");
  delete document.body.dataset.insights;
  delete document.body.dataset.insightsRows;
}

$("insights-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (patient === null) return;
  const form = ev.target;
  ui.guarded(form.querySelector("button[type=submit]"), say, "Reading the table…", async () => {
    const doc = await fetchInsights(patient, $("i-category").value.trim().toUpperCase());
    show(forTreatment(doc, $("i-treatment").value.trim().toLowerCase() || null));
    say("");
  });
});
