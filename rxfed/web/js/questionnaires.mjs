// PHQ-9 (depression) and GAD-7 (anxiety) scored in the page, as
// rxfed/client/questionnaires.py scores them: the same items, bands and record form (the
// tables come from that module through tables.mjs). Answers and scores stay in the
// encrypted journal. PHQ-9 item 9 asks about thoughts of death or self-harm: any answer above
// "Not at all" sets `crisis`, and the page shows crisisResources() first.

import { ANSWERS, ATTRIBUTION, COUNTRY_ALIASES, CRISIS_LINES, FALLBACK_LINE, INSTRUMENTS, PHQ9_SELF_HARM_ITEM } from "./tables.mjs";

export { ANSWERS, ATTRIBUTION, INSTRUMENTS };
export const MAX_ANSWER = ANSWERS[ANSWERS.length - 1][0];

export class BadQuestionnaire extends Error {
  constructor(message) {
    super(message);
    this.code = "bad_questionnaire";
  }
}

export function instrument(name) {
  const found = Object.hasOwn(INSTRUMENTS, name) ? INSTRUMENTS[name] : null;
  if (found === null) throw new BadQuestionnaire(`unknown questionnaire ${JSON.stringify(name)}: use one of ${Object.keys(INSTRUMENTS).join(", ")}`);
  return found;
}

export function severity(inst, total) {
  return inst.bands.find(([upper]) => total <= upper)[1];
}

/** {instrument, answers, total, severity, crisis} of one completed questionnaire; every
 * item must be answered with a whole number 0..3 (questionnaires.score). */
export function score(name, answers) {
  const inst = instrument(name);
  if (!Array.isArray(answers) || answers.length !== inst.items.length) {
    throw new BadQuestionnaire(`${inst.name} needs exactly ${inst.items.length} answers`);
  }
  answers.forEach((a, i) => {
    if (!Number.isInteger(a) || a < 0 || a > MAX_ANSWER) {
      throw new BadQuestionnaire(`${inst.name} answer ${i + 1} must be a whole number from 0 to ${MAX_ANSWER}`);
    }
  });
  const total = answers.reduce((x, y) => x + y, 0);
  return { instrument: inst.name, answers: [...answers], total, severity: severity(inst, total),
    crisis: inst.name === "phq9" && answers[PHQ9_SELF_HARM_ITEM] > 0 };
}

/** The form kept inside an encrypted journal record (Score.to_dict). */
export const stored = (s) => ({ instrument: s.instrument, answers: [...s.answers], total: s.total, severity: s.severity });

/** Re-score stored answers; a stored total or severity that disagrees is refused (Score.from_dict). */
export function fromStored(doc) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) throw new BadQuestionnaire("a stored questionnaire must be an object");
  const s = score(doc.instrument, doc.answers);
  if (doc.total !== s.total || doc.severity !== s.severity) {
    throw new BadQuestionnaire(`stored ${s.instrument} total or severity does not match its answers`);
  }
  return s;
}

/** A short, kind message with the crisis line for `country` (ISO code, any case), word for
 * word what questionnaires.crisis_resources says. */
export function crisisResources(country) {
  const code = typeof country === "string" ? country.trim().toUpperCase() : "";
  const key = Object.hasOwn(COUNTRY_ALIASES, code) ? COUNTRY_ALIASES[code] : code;
  const line = Object.hasOwn(CRISIS_LINES, key) ? CRISIS_LINES[key] : null;
  let message = "You deserve support right now, and you do not have to carry this alone. "
    + `Please reach out now: ${line || FALLBACK_LINE}.`;
  if (line) message += " If you are in immediate danger, call your local emergency number.";
  return message;
}

/** The country the browser's language names ("en-GB" -> "GB"), a default for the crisis line. */
export function browserCountry(languages = globalThis.navigator ? navigator.languages || [navigator.language] : []) {
  for (const tag of languages) {
    const m = /^[a-z]{2,3}(?:-[A-Za-z]{4})?-([A-Z]{2})\b/.exec(tag || "");
    if (m) return m[1];
  }
  return null;
}
