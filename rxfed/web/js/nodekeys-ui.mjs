// The keys of other nodes this browser trusts (js/nodekeys.mjs): listed by fingerprint,
// each node's forgotten on request (then trusted again as at first contact). The DOM only,
// text nodes only. app.mjs calls attach() once the vault is open and detach() on lock.

import { forgetNode, pinnedNodes } from "./nodekeys.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
const say = ui.statusLine("nodekeys");
let open = false;

async function render() {
  const nodes = await pinnedNodes();
  $("nodekeys-list").replaceChildren(...nodes.map(({ node, keys }) => {
    const li = document.createElement("li");
    li.dataset.node = node;
    const what = document.createElement("span");
    what.className = "code small";
    what.textContent = `${node}: ${keys.join(", ")}`;
    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "forget";
    forget.textContent = `Forget the keys of ${node}`;
    forget.addEventListener("click", () => ui.guarded(forget, say, "Forgetting…", async () => {
      await forgetNode(node);
      await render();
      say(`Forgotten: the next time, this browser trusts the keys ${node} then lists. Check that their fingerprint is the one its operator gave you.`);
    }));
    li.append(what, " ", forget);
    return li;
  }));
  $("nodekeys-empty").hidden = nodes.length > 0;
}

export function attach() {
  open = true;
  if ($("nodekeys").open) ui.guarded(null, say, "", render);
}

export function detach() {
  open = false;
  $("nodekeys-list").replaceChildren();
  $("nodekeys").open = false;
  say("");
}

$("nodekeys").addEventListener("toggle", () => {
  if (!$("nodekeys").open) {
    $("nodekeys-list").replaceChildren(); // drawn again, as they are then, when opened
    return;
  }
  if (open) ui.guarded(null, say, "", async () => {
    await render();
    say("");
  });
});
