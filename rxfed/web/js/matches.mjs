// Matching suggestions in the page: the node's answer checked as rxfed/client/matching.py
// checks it (no count below the node's threshold k is shown, whatever the node says), and
// the sentence a patient reads. Pure: no DOM, no network.

export const MIN_K = 5;
const CATEGORY = /^[a-z0-9]{1,16}:[A-Za-z0-9.]{1,16}$/;

export class BadSuggestions extends Error {
  constructor(message) {
    super(message);
    this.code = "bad_suggestions";
  }
}

const isCount = (n) => Number.isSafeInteger(n);

function entries(items, k) {
  if (!Array.isArray(items)) throw new BadSuggestions("the node's suggestions are not a list");
  const out = [];
  for (const item of items) {
    if (item === null || typeof item !== "object" || typeof item.category !== "string" || !CATEGORY.test(item.category)
        || typeof item.node !== "string" || !isCount(item.count)) {
      throw new BadSuggestions("the node sent a suggestion of another shape");
    }
    if (item.count >= k) {
      const kept = {};
      for (const key of ["id", "category", "node", "count", "updated"]) if (key in item) kept[key] = item[key];
      out.push(kept);
    }
  }
  return out;
}

/** The node's answer as the patient sees it: counts below `k` left out. */
export function checked(found) {
  if (found === null || typeof found !== "object" || !isCount(found.k) || found.k < MIN_K) {
    throw new BadSuggestions("the node's suggestions name no threshold of at least 5");
  }
  const k = found.k;
  return { node: found.node ?? null, k, own: entries(found.own, k), suggestions: entries(found.suggestions, k) };
}

export const codeOf = (category) => category.split(":", 2)[1];

/** "14 patients on hospital-b (and 11 on your own node) share category G40". */
export function sentence(suggestion, own) {
  const mine = own.has(suggestion.category) ? ` (and ${own.get(suggestion.category)} on your own node)` : "";
  return `${suggestion.count} patients on ${suggestion.node}${mine} share category ${codeOf(suggestion.category)}`;
}

/** Every line the Matches view shows, in the CLI's order. */
export function lines(view) {
  const own = new Map(view.own.map((o) => [o.category, o.count]));
  const out = view.suggestions.map((s) => sentence(s, own));
  for (const [category, n] of own) {
    if (!view.suggestions.some((s) => s.category === category)) {
      out.push(`${n} patients on your own node share category ${codeOf(category)}; no other node shares it yet`);
    }
  }
  return out;
}
