// The moderation plugin's pre-send check in the page (plugins/moderation.py, spec/moderation.md):
// the signed rules statement verified here under the publisher key the plugin trusts, its
// Python patterns translated to JavaScript ones that match the same text, and the same
// clause, negation, addressee and testimony logic. It reads the text and returns warnings;
// nothing about the check leaves the page.

import { canonical } from "./canonical.mjs";
import { b64d } from "./encoding.mjs";
import * as p from "./protocol.mjs";
import { crisisResources } from "./questionnaires.mjs";
import { CLAUSE, DROPPED, OPENS_ADVICE, PUBLISHERS, RULES, SCOPES, STATEMENT } from "./moderation-rules.mjs";
import { CRISIS_NOTICE } from "./tables.mjs";

export const MAX_RULES_BYTES = 1 << 20;

/** The rules cannot be applied (unsigned, tampered, another key, or patterns the page cannot
 * translate); `message` says why, as the plugin's RulesRefused does. */
export class RulesRefused extends Error {
  constructor(message) {
    super(message);
    this.code = "moderation_rules_refused";
  }
}

// -- Python's `re` in JavaScript -------------------------------------------------------------

// Python's \w for str patterns: a letter, a number or "_" (str.isalnum() or "_"); \s: what
// str.isspace() holds; \d: a decimal digit of any script. JavaScript's are ASCII (\w, \d) or
// a slightly different set (\s), so each is spelled out.
const WORD = "\\p{L}\\p{N}_";
const SPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const BOUNDARY = `(?:(?<=[${WORD}])(?![${WORD}])|(?<![${WORD}])(?=[${WORD}]))`;
const NOT_BOUNDARY = `(?:(?<=[${WORD}])(?=[${WORD}])|(?<![${WORD}])(?![${WORD}]))`;
const SYNTAX = "^$\\.*+?()[]{}|/";

const unsupported = (what, src) => new SyntaxError(`${what} is not supported in the page (pattern ${JSON.stringify(src.slice(0, 60))})`);

/** The JavaScript source (flag "u") of Python pattern `src`: the same matches on any text,
 * or SyntaxError for what has no translation here (inline flags, atomic groups, conditionals). */
export function translate(src) {
  const out = [];
  let i = 0;
  let inClass = false;
  let classStart = false;
  const hex = (cp) => `\\u{${cp.toString(16)}}`;
  while (i < src.length) {
    const cp = src.codePointAt(i);
    const c = String.fromCodePoint(cp);
    i += c.length;
    const first = classStart;
    classStart = false;
    if (c === "\\") {
      if (i >= src.length) throw unsupported("a trailing backslash", src);
      const e = src[i++];
      if (e === "w") out.push(inClass ? WORD : `[${WORD}]`);
      else if (e === "W") {
        if (inClass) throw unsupported("\\W in a set", src);
        out.push(`[^${WORD}]`);
      } else if (e === "d") out.push("\\p{Nd}");
      else if (e === "D") out.push("\\P{Nd}");
      else if (e === "s") out.push(inClass ? SPACE : `[${SPACE}]`);
      else if (e === "S") {
        // in a set, JavaScript's own \S (it also holds \x1c-\x1f and \x85, which the plugin's
        // normalised text does not reach a pattern with) and U+FEFF, which Python's holds
        out.push(inClass ? "\\S\\ufeff" : `[^${SPACE}]`);
      } else if (e === "b") out.push(inClass ? "\\x08" : BOUNDARY);
      else if (e === "B") {
        if (inClass) throw unsupported("\\B in a set", src);
        out.push(NOT_BOUNDARY);
      } else if (e === "A" && !inClass) out.push("^");
      else if (e === "Z" && !inClass) out.push("$");
      else if ("ntrfv".includes(e)) out.push(`\\${e}`);
      else if (e === "a") out.push("\\x07");
      else if (e === "x" && /^[0-9a-fA-F]{2}/.test(src.slice(i))) {
        out.push(`\\x${src.slice(i, i + 2)}`);
        i += 2;
      } else if (e === "u" && /^[0-9a-fA-F]{4}/.test(src.slice(i))) {
        out.push(`\\u${src.slice(i, i + 4)}`);
        i += 4;
      } else if (e === "U" && /^[0-9a-fA-F]{8}/.test(src.slice(i))) {
        out.push(hex(parseInt(src.slice(i, i + 8), 16)));
        i += 8;
      } else if (/[1-9]/.test(e) && !inClass) {
        let n = e;
        if (/[0-9]/.test(src[i] || "")) n += src[i++];
        out.push(`\\${n}`);
      } else if (/[\p{L}\p{N}_]/u.test(e)) {
        throw unsupported(`the escape \\${e}`, src);
      } else {
        const ecp = src.codePointAt(i - 1);
        const ch = String.fromCodePoint(ecp);
        i += ch.length - 1;
        out.push(SYNTAX.includes(ch) || (inClass && ch === "-") ? `\\${ch}` : hex(ecp));
      }
    } else if (inClass) {
      if (c === "]" && !first) {
        inClass = false;
        out.push("]");
      } else if (c === "]" || c === "[") out.push(`\\${c}`);
      else if (c === "^" && first) {
        out.push("^");
        classStart = true; // "[^]...]": a "]" right after "^" is a literal too
      } else out.push(c);
    } else if (c === "[") {
      inClass = true;
      classStart = true;
      out.push("[");
    } else if (c === "]" || c === "}") {
      out.push(`\\${c}`);
    } else if (c === "{") {
      const q = /^(\d*)(,(\d*))?\}/.exec(src.slice(i));
      if (q && (q[1] !== "" || q[2] !== undefined)) {
        out.push(`{${q[1] || "0"}${q[2] !== undefined ? `,${q[3]}` : ""}}`);
        i += q[0].length;
      } else out.push("\\{");
    } else if (c === ".") {
      out.push("[^\\n]");
    } else if (c === "$") {
      out.push("(?=\\n?$)");
    } else if (c === "(") {
      const rest = src.slice(i);
      if (rest.startsWith("?P<")) {
        out.push("(?<");
        i += 3;
      } else if (rest.startsWith("?P=")) {
        const end = rest.indexOf(")");
        if (end < 0) throw unsupported("an unclosed group", src);
        out.push(`\\k<${rest.slice(3, end)}>`);
        i += end + 1;
      } else if (rest.startsWith("?#")) {
        const end = rest.indexOf(")");
        if (end < 0) throw unsupported("an unclosed comment", src);
        i += end + 1;
      } else if (rest.startsWith("?") && !/^\?(?::|=|!|<=|<!)/.test(rest)) {
        throw unsupported(`the group (${rest.slice(0, 3)}`, src);
      } else out.push("(");
    } else if (c === "*" || c === "+" || c === "?") {
      out.push(c);
      if (src[i] === "+") throw unsupported("a possessive quantifier", src);
    } else out.push(c);
  }
  if (inClass) throw unsupported("an unclosed set", src);
  return out.join("");
}

/** A compiled Python pattern with the methods of Python's: search, match (at a position),
 * finditer and sub, over the same text. */
export class PyPattern {
  constructor(src) {
    this.pattern = src;
    this.source = translate(src);
    try {
      this.global = new RegExp(this.source, "gu");
    } catch (exc) {
      throw new SyntaxError(`pattern ${JSON.stringify(src.slice(0, 60))} does not compile in the page: ${exc.message}`);
    }
  }

  search(text) {
    this.global.lastIndex = 0;
    return this.global.exec(text);
  }

  /** Python's match(text, pos): anchored at `pos` (lookbehinds still see what is before it). */
  match(text, pos = 0) {
    // the anchored form is made when first needed (most patterns are only searched)
    if (this.sticky === undefined) this.sticky = new RegExp(this.source, "yu");
    this.sticky.lastIndex = pos;
    return this.sticky.exec(text);
  }

  /** Every match, as Python's finditer: after an empty match the next may start at the same
   * place if it is not empty. */
  *finditer(text) {
    let pos = 0;
    let afterEmpty = false;
    while (pos <= text.length) {
      let m = null;
      if (afterEmpty) {
        m = this.nonEmptyAt(text, pos);
        if (m === null) {
          if (pos >= text.length) return;
          pos += String.fromCodePoint(text.codePointAt(pos)).length;
        }
      }
      if (m === null) {
        this.global.lastIndex = pos;
        m = this.global.exec(text);
        if (m === null) return;
      }
      yield m;
      const end = m.index + m[0].length;
      afterEmpty = m[0].length === 0;
      pos = end;
    }
  }

  /** A non-empty match starting at `at`, backtracking into the pattern as Python does after
   * an empty match there (a lookbehind that the end lies beyond `at`). */
  nonEmptyAt(text, at) {
    const points = [...text.slice(0, at)].length + 1;
    const re = new RegExp(`(?:${this.source})(?<=^[\\s\\S]{${points},})`, "yu");
    re.lastIndex = at;
    return re.exec(text);
  }

  /** The pieces between matches, as Python's re.split (the pattern has no groups). */
  split(text) {
    const out = [];
    let last = 0;
    for (const m of this.finditer(text)) {
      out.push(text.slice(last, m.index));
      last = m.index + m[0].length;
    }
    out.push(text.slice(last));
    return out;
  }

  /** Python's sub(replacement, text): \1, \g<1> and \g<name> name groups; nothing else is special. */
  sub(replacement, text) {
    const parts = [];
    let last = 0;
    for (const m of this.finditer(text)) {
      parts.push(text.slice(last, m.index), expand(replacement, m));
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    return parts.join("");
  }
}

function expand(template, m) {
  if (!template.includes("\\")) return template;
  return template.replace(/\\(?:g<(\w+)>|(\d{1,2})|(.))/gsu, (all, named, number, other) => {
    if (named !== undefined) return (/^\d+$/.test(named) ? m[Number(named)] : m.groups?.[named]) ?? "";
    if (number !== undefined) return m[Number(number)] ?? "";
    const escapes = { n: "\n", t: "\t", r: "\r", f: "\f", v: "\v", a: "\x07", "\\": "\\" };
    return Object.hasOwn(escapes, other) ? escapes[other] : all;
  });
}

// -- the rules --------------------------------------------------------------------------------

const DROP = new RegExp(`[${DROPPED.map(([a, b]) => (a === b ? `\\u{${a.toString(16)}}` : `\\u{${a.toString(16)}}-\\u{${b.toString(16)}}`)).join("")}]`, "gu");
const QUOTES = { "\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"' };
const REPEATS = new PyPattern("(\\w)\\1{2,}");
const SPACES = new PyPattern("[ \\t]+");
const CLAUSES = new PyPattern(CLAUSE);
const OPENS = new PyPattern(OPENS_ADVICE);
const STRIP = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "gu");
const strip = (text) => text.replace(STRIP, "");

/** Python's bool() of a JSON value (an empty list or object is false). */
function truthy(v) {
  if (Array.isArray(v)) return v.length > 0;
  if (v !== null && typeof v === "object") return Object.keys(v).length > 0;
  return Boolean(v);
}

/** The index `n` code points before `at` (Python slices by code point). */
function back(text, at, n) {
  let i = at;
  for (let k = 0; k < n && i > 0; k++) {
    const low = text.charCodeAt(i - 1);
    i -= low >= 0xdc00 && low <= 0xdfff && i >= 2 && text.charCodeAt(i - 2) >= 0xd800 && text.charCodeAt(i - 2) <= 0xdbff ? 2 : 1;
  }
  return i;
}

export class ModerationRules {
  /** Verify `doc` (a signed moderation.rules statement) under the `trusted` publishers and
   * compile it; RulesRefused says why not (ModerationRules.from_bytes). */
  static fromStatement(doc, trusted = PUBLISHERS, where = "moderation rules") {
    let size;
    try {
      size = canonical(doc).length;
    } catch {
      throw new RulesRefused(`${where}: not a rules file`);
    }
    if (size > MAX_RULES_BYTES) throw new RulesRefused(`${where}: larger than ${MAX_RULES_BYTES} bytes`);
    if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !Object.hasOwn(doc, "sig")) {
      throw new RulesRefused(`${where}: not signed (a rules file is a signed statement)`);
    }
    const body = doc.body;
    const publisher = body !== null && typeof body === "object" && !Array.isArray(body) ? body.publisher : undefined;
    if (typeof publisher !== "string" || !Object.hasOwn(trusted, publisher)) {
      throw new RulesRefused(`${where}: publisher ${JSON.stringify(publisher ?? null)} is not one this page trusts`);
    }
    let opened;
    try {
      opened = p.openStatement(doc, STATEMENT, b64d(trusted[publisher], 32), where);
    } catch (exc) {
      if (exc.code === "bad_statement_signature") {
        throw new RulesRefused(`${where}: the signature does not verify under publisher ${JSON.stringify(publisher)}'s key `
          + "(the file was changed after it was signed)");
      }
      throw new RulesRefused(exc.message);
    }
    try {
      return new ModerationRules(opened);
    } catch (exc) {
      throw new RulesRefused(`${where}: signed, but not rules this page can apply (${exc.message})`);
    }
  }

  constructor(body) {
    const lexicon = {};
    for (const [name, words] of Object.entries(body.lexicon)) {
      if (!Array.isArray(words) || !words.every((w) => typeof w === "string")) throw new TypeError(`lexicon ${name} is not a list of strings`);
      lexicon[name] = `(?:${words.join("|")})`;
    }
    const rx = (text) => {
      if (Array.isArray(text)) {
        if (!text.every((t) => typeof t === "string")) throw new TypeError("a pattern must be a string or a list of strings");
        text = text.map((t) => `(?:${t})`).join("|");
      }
      if (typeof text !== "string") throw new TypeError("a pattern must be a string or a list of strings");
      return new PyPattern(text.replace(/\{([\p{L}\p{N}_]+)\}/gu, (all, name) => {
        if (!Object.hasOwn(lexicon, name)) throw new TypeError(`no lexicon entry ${name}`);
        return lexicon[name];
      }));
    };
    const maybe = (obj, key) => (Object.hasOwn(obj, key) ? rx(obj[key]) : null);
    this.publisher = body.publisher;
    this.version = Number(body.version);
    if (!Number.isInteger(this.version)) throw new TypeError("the version is not a number");
    this.issued = String(body.issued);
    this.categories = body.categories.map((c) => {
      if (!SCOPES.includes(c.scope)) throw new TypeError(`unknown scope ${JSON.stringify(c.scope)}`);
      const patterns = c.patterns.map((q) => ({
        regex: rx(q.re), negation: Object.hasOwn(q, "negation") ? q.negation : "allows", requires: maybe(q, "requires"),
        direct: truthy(q.direct ?? false), whole: truthy(q.whole ?? false), also: (q.also ?? []).map(rx),
        clauseLevel: truthy(q.clause ?? false), unless: maybe(q, "unless"),
      }));
      if (patterns.some((q) => q.negation !== "allows" && q.negation !== "ignore")) {
        throw new TypeError("a pattern's negation is 'allows' or 'ignore'");
      }
      if (typeof c.code !== "string" || typeof c.message !== "string") throw new TypeError("a category has a code and a message");
      return {
        code: c.code, message: c.message, confirm: truthy(c.confirm), scope: c.scope, patterns,
        exceptions: (c.except ?? []).map(rx), imperatives: maybe(c, "imperatives"), reported: truthy(c.reported ?? false),
      };
    });
    const a = body.advice;
    for (const key of ["addressee", "framing", "asking", "rhetorical", "lead", "imperative", "subordinate", "speaker", "subject", "reporting"]) {
      if (!Object.hasOwn(a, key)) throw new TypeError(`advice.${key} is missing`);
      this[key] = rx(a[key]);
    }
    this.negator = rx(body.negator);
    this.substitutions = body.substitutions.map((s) => {
      if (typeof s[1] !== "string") throw new TypeError("a substitution's replacement is a string");
      return [rx(s[0]), s[1]];
    });
  }

  /** Lower case, compatibility forms, no accents or invisible characters, one kind of
   * apostrophe and quote, and the spellings people type made regular (normalise). */
  normalise(text) {
    text = text.normalize("NFKD").replace(DROP, "").toLowerCase();
    text = text.replace(/[\u2018\u2019\u02bc`\u00b4\u201c\u201d\u00ab\u00bb]/gu, (ch) => QUOTES[ch]);
    text = REPEATS.sub("\\1\\1", text);
    for (const [pattern, replacement] of this.substitutions) text = pattern.sub(replacement, text);
    return SPACES.sub(" ", text);
  }

  /** The categories `text` falls in, at most one finding per category: {code, message, confirm}. */
  check(text) {
    const norm = this.normalise(text);
    const clauses = CLAUSES.split(norm).map(strip).filter((c) => c);
    const found = [];
    for (const category of this.categories) {
      const whole = category.patterns.filter((q) => q.whole);
      if (whole.some((q) => q.regex.search(norm) && (q.requires === null || q.requires.search(norm)))
          || clauses.some((clause) => this.flags(category, clause))) {
        found.push({ code: category.code, message: category.message, confirm: category.confirm });
      }
    }
    return found;
  }

  flags(category, clause) {
    const question = clause.endsWith("?");
    const own = category.reported ? clause : this.unreported(clause);
    if (category.exceptions.some((e) => e.search(own))) return false;
    for (const pattern of category.patterns) {
      if (pattern.whole) continue;
      for (const m of pattern.regex.finditer(own)) {
        if (pattern.negation === "allows" && this.negated(own, m.index)) continue;
        if (pattern.requires !== null && !pattern.requires.search(own)) continue;
        if (!pattern.also.every((a) => a.search(own))) continue;
        if (pattern.unless !== null && pattern.unless.search(own)) continue;
        if (category.scope === "any" || pattern.direct
            || (pattern.clauseLevel ? this.clauseAddressed(own, m.index, question) : this.addressed(category, own, m, question))) {
          return true;
        }
      }
    }
    return false;
  }

  unreported(clause) {
    const m = this.reporting.search(clause);
    return m === null ? clause : clause.slice(0, m.index);
  }

  negated(clause, at) {
    return this.negator.search(clause.slice(back(clause, at, 40), at)) !== null;
  }

  clauseAddressed(clause, at, question) {
    if (question && this.asking.search(clause) && !this.rhetorical.search(clause)) return false;
    if (this.rhetorical.search(clause) || this.framing.search(clause)) return true;
    const before = clause.slice(0, at);
    if (this.speaker.search(before) || this.subject.match(before.slice(before.lastIndexOf(",") + 1))) return false;
    if (this.addressee.search(clause)) return true;
    const start = this.subordinate.match(clause);
    const rest = start ? clause.slice(start.index + start[0].length) : clause;
    const lead = this.lead.match(rest);
    return this.imperative.match(lead ? rest.slice(lead.index + lead[0].length) : rest) !== null;
  }

  addressed(category, clause, m, question) {
    const before = clause.slice(0, m.index);
    if (question && this.asking.search(clause) && !this.rhetorical.search(clause)) return false;
    if (this.rhetorical.search(clause) || this.framing.search(clause)) return true;
    if (this.speaker.search(before)) return false;
    if (this.addressee.search(m[0]) || this.addressee.search(before.slice(back(before, before.length, 60)))) return true;
    if (category.imperatives !== null && category.imperatives.match(clause, m.index)) {
      let lead = this.lead.match(before);
      if (lead !== null && lead.index + lead[0].length === before.length) return true;
      const segment = before.slice(before.lastIndexOf(",") + 1).replace(/^[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u, "");
      lead = this.lead.match(segment);
      if (before.includes(",") && lead !== null && lead.index + lead[0].length === segment.length && OPENS.match(clause)) return true;
    }
    return false;
  }
}

let shipped = null;

/** The shipped rules, verified and compiled once (or the RulesRefused that says why not). */
export function shippedRules() {
  if (shipped === null) {
    try {
      shipped = ModerationRules.fromStatement(RULES, PUBLISHERS, "the shipped moderation rules");
    } catch (exc) {
      if (!(exc instanceof RulesRefused)) throw exc;
      shipped = exc;
    }
  }
  return shipped;
}

/** The warnings for `text` before it is posted, as the plugin's rxfed_presend_check gives them:
 * {code, message, resources, confirm}; crisis language carries the line for `country`. */
export function presendWarnings(text, country = null, rules = shippedRules()) {
  if (rules instanceof RulesRefused) {
    return [{ code: "unchecked", message: `This message was not checked: ${rules.message}.`, resources: [], confirm: false }];
  }
  return rules.check(text).map((f) => ({
    code: f.code, message: f.message, confirm: f.confirm,
    resources: f.code === "crisis" ? [crisisResources(country), CRISIS_NOTICE] : [],
  }));
}
