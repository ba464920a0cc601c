// The timeline: symptoms and feeling over time as lines, treatments as periods and
// conditions at their onset on the same time axis, drawn as inline SVG made here (no chart
// library), and the same data as a table for screen readers and for anyone who would rather
// read. timeline() is pure (tests/web/records.test.mjs); the DOM functions only build nodes.

const SVG = "http://www.w3.org/2000/svg";
const DAY = 86_400_000;
/** Colours a reader tells apart on white and on dark, each with its own marker shape. */
export const PALETTE = ["#0b5cad", "#b3261e", "#1b7f3b", "#8a4fbf", "#b35c00", "#00707a", "#6b6b00", "#a3246e"];
const MARKERS = ["circle", "square", "diamond", "triangle"];

const toTime = (date) => Date.parse(`${date}T00:00:00Z`);
const isDate = (v) => typeof v === "string" && /^\d{4}-\d{2}-\d{2}$/.test(v) && Number.isFinite(toTime(v));

/** The first day of a range ending `today`: "all" (null), or a number of days back. */
export function rangeStart(range, today) {
  if (range === "all" || !Number.isInteger(Number(range))) return null;
  return new Date(toTime(today) - Number(range) * DAY).toISOString().slice(0, 10);
}

/** What the timeline shows, from decrypted records: {start, end (dates), series: [{name,
 * points: [{date, value}]}] (symptoms by name, then "feeling"), treatments: [{name, start,
 * end, ongoing}], conditions: [{label, date}], days: the dates with a journal entry}. A
 * treatment without a start is left out (it has no period); one without an end runs to
 * `today`. With `since`, only what falls on or after that day (a treatment that started
 * earlier is drawn from `since`). */
export function timeline(records, today, since = null) {
  if (since !== null) {
    records = records.flatMap((r) => {
      const d = r.data;
      if (r.kind === "journal") return isDate(d.date) && d.date >= since ? [r] : [];
      if (r.kind === "condition") return isDate(d.onset) && d.onset >= since ? [r] : [];
      if (r.kind === "treatment" && isDate(d.started)) {
        if (isDate(d.stopped) && d.stopped < since) return [];
        return [{ ...r, data: { ...d, started: d.started < since ? since : d.started } }];
      }
      return [];
    });
  }
  const symptoms = new Map(), feeling = [], treatments = [], conditions = [];
  const journal = records.filter((r) => r.kind === "journal" && isDate(r.data.date))
    .sort((a, b) => (a.data.date < b.data.date ? -1 : a.data.date > b.data.date ? 1 : a.created < b.created ? -1 : 1));
  for (const r of journal) {
    for (const [name, value] of Object.entries(r.data.symptoms || {})) {
      if (!Number.isInteger(value)) continue;
      if (!symptoms.has(name)) symptoms.set(name, new Map());
      symptoms.get(name).set(r.data.date, value); // the last written of a day counts
    }
    if (Number.isInteger(r.data.feeling)) feeling.push([r.data.date, r.data.feeling]);
  }
  for (const r of records) {
    if (r.kind === "treatment" && isDate(r.data.started)) {
      const end = isDate(r.data.stopped) ? r.data.stopped : today;
      treatments.push({ name: r.data.name, start: r.data.started, end: end < r.data.started ? r.data.started : end, ongoing: !isDate(r.data.stopped) });
    } else if (r.kind === "condition" && isDate(r.data.onset)) {
      conditions.push({ label: r.data.label || `${(r.data.system || "").toUpperCase()} ${r.data.code || ""}`.trim(), date: r.data.onset });
    }
  }
  treatments.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : a.name < b.name ? -1 : 1));
  conditions.sort((a, b) => (a.date < b.date ? -1 : 1));
  const feelingByDay = new Map(feeling);
  const series = [...[...symptoms.keys()].sort().map((name) => ({ name, points: [...symptoms.get(name)].map(([date, value]) => ({ date, value })) })),
    ...(feelingByDay.size ? [{ name: "feeling", points: [...feelingByDay].map(([date, value]) => ({ date, value })) }] : [])];
  const dates = [...journal.map((r) => r.data.date), ...treatments.flatMap((t) => [t.start, t.end]), ...conditions.map((c) => c.date)];
  if (!dates.length) return null;
  dates.sort();
  return { start: dates[0], end: dates[dates.length - 1], series, treatments, conditions, days: [...new Set(journal.map((r) => r.data.date))] };
}

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function marker(shape, x, y, color) {
  const r = 3.5;
  if (shape === "square") return el("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: color });
  if (shape === "diamond") return el("path", { d: `M${x} ${y - r - 1}L${x + r + 1} ${y}L${x} ${y + r + 1}L${x - r - 1} ${y}Z`, fill: color });
  if (shape === "triangle") return el("path", { d: `M${x} ${y - r - 1}L${x + r + 1} ${y + r}L${x - r - 1} ${y + r}Z`, fill: color });
  return el("circle", { cx: x, cy: y, r, fill: color });
}

/** Evenly spaced tick dates (first of a month or of a year) between start and end. */
function ticks(start, end) {
  const t0 = toTime(start), t1 = toTime(end);
  const span = (t1 - t0) / DAY;
  const out = [];
  if (span <= 62) {
    const step = Math.max(1, Math.ceil(span / 6));
    for (let t = t0; t <= t1; t += step * DAY) out.push(new Date(t).toISOString().slice(0, 10));
    return out;
  }
  const months = span / 30.4;
  const every = months <= 8 ? 1 : months <= 24 ? 3 : months <= 72 ? 12 : 12 * Math.ceil(months / 72);
  const d = new Date(t0);
  let y = d.getUTCFullYear(), m = d.getUTCMonth() + 1;
  if (every >= 12) { y += 1; m = 0; }
  for (;;) {
    if (m >= 12) { y += Math.floor(m / 12); m %= 12; }
    const t = Date.UTC(y, m, 1);
    if (t > t1) break;
    if (t >= t0) out.push(new Date(t).toISOString().slice(0, 10));
    m += every;
  }
  return out;
}

/** The timeline as an SVG image (role img, described by its own title and the table). */
export function chart(data, { width = 640, id = "timeline-chart" } = {}) {
  const left = 34, right = 12, top = 12, plot = 170;
  const lane = 18, lanes = data.treatments.length;
  const height = top + plot + 26 + (data.conditions.length ? 16 : 0) + lanes * lane + 8;
  const t0 = toTime(data.start), t1 = Math.max(toTime(data.end), t0 + DAY);
  const x = (date) => left + ((toTime(date) - t0) / (t1 - t0)) * (width - left - right);
  const y = (value) => top + plot - (value / 10) * plot;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": `${id}-title`, class: "chart", id });
  svg.append(el("title", { id: `${id}-title` }, `Timeline from ${data.start} to ${data.end}: ${data.series.map((s) => s.name).join(", ") || "no scores"}`
    + (lanes ? `; treatments ${data.treatments.map((t) => t.name).join(", ")}` : "") + ". The table below shows the same data."));
  const grid = el("g", { class: "grid" });
  for (const v of [0, 5, 10]) {
    grid.append(el("line", { x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    grid.append(el("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  const long = (t1 - t0) / DAY > 62;
  for (const date of ticks(data.start, data.end)) {
    grid.append(el("line", { x1: x(date), x2: x(date), y1: top, y2: top + plot, class: "tick" }));
    grid.append(el("text", { x: x(date), y: top + plot + 16, "text-anchor": "middle" }, long ? date.slice(0, 7) : date.slice(5)));
  }
  svg.append(grid);
  data.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length], shape = MARKERS[i % MARKERS.length];
    const g = el("g", { class: "series", "data-series": s.name });
    if (s.points.length > 1) {
      g.append(el("polyline", { points: s.points.map((p) => `${x(p.date).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "), fill: "none",
        stroke: color, "stroke-width": s.name === "feeling" ? 2.5 : 2, "stroke-dasharray": s.name === "feeling" ? "6 3" : "none" }));
    }
    for (const p of s.points) g.append(marker(shape, x(p.date), y(p.value), color));
    svg.append(g);
  });
  let row = top + plot + 26;
  if (data.conditions.length) {
    const g = el("g", { class: "conditions" });
    for (const c of data.conditions) g.append(el("path", { d: `M${x(c.date)} ${row}l5 8h-10z`, class: "onset" }));
    svg.append(g);
    row += 16;
  }
  data.treatments.forEach((t, i) => {
    const g = el("g", { class: "treatment", "data-treatment": t.name });
    const x0 = x(t.start), x1 = Math.max(x(t.end), x0 + 3);
    g.append(el("rect", { x: x0, y: row + i * lane, width: x1 - x0, height: lane - 6, rx: 3, class: t.ongoing ? "period ongoing" : "period" }));
    g.append(el("text", { x: Math.min(x0 + 4, width - right - 4), y: row + i * lane + lane - 9, class: "period-label" }, t.name));
    svg.append(g);
  });
  return svg;
}

/** The chart's legend: each series' colour and marker named in words. */
export function legend(data) {
  const ul = document.createElement("ul");
  ul.className = "legend";
  data.series.forEach((s, i) => {
    const li = document.createElement("li");
    const key = el("svg", { width: 14, height: 14, viewBox: "0 0 14 14", "aria-hidden": "true" });
    key.append(marker(MARKERS[i % MARKERS.length], 7, 7, PALETTE[i % PALETTE.length]));
    li.append(key, document.createTextNode(` ${s.name === "feeling" ? "feeling overall (dashed)" : s.name} (0–10)`));
    ul.append(li);
  });
  if (data.treatments.length) {
    const li = document.createElement("li");
    li.textContent = "bars: treatments, from start to stop (to today while ongoing)";
    ul.append(li);
  }
  if (data.conditions.length) {
    const li = document.createElement("li");
    li.textContent = "triangles under the scores: a condition's onset";
    ul.append(li);
  }
  return ul;
}

/** The same data as a table: one row per day with a score, the treatments taken that day. */
export function table(data) {
  const t = document.createElement("table");
  const caption = document.createElement("caption");
  caption.textContent = `Scores by day (0–10), with the treatments you were taking`;
  t.append(caption);
  const head = document.createElement("thead");
  const hr = document.createElement("tr");
  for (const name of ["Date", ...data.series.map((s) => (s.name === "feeling" ? "Feeling" : s.name)), "Treatments"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    hr.append(th);
  }
  head.append(hr);
  t.append(head);
  const body = document.createElement("tbody");
  const values = data.series.map((s) => new Map(s.points.map((p) => [p.date, p.value])));
  const days = [...new Set([...data.days, ...data.conditions.map((c) => c.date)])].sort();
  for (const date of days) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = date;
    tr.append(th);
    for (const v of values) {
      const td = document.createElement("td");
      td.textContent = v.has(date) ? String(v.get(date)) : "–";
      tr.append(td);
    }
    const td = document.createElement("td");
    const taking = data.treatments.filter((x) => x.start <= date && date <= x.end).map((x) => x.name);
    const onset = data.conditions.filter((c) => c.date === date).map((c) => `onset: ${c.label}`);
    td.textContent = [...taking, ...onset].join(", ") || "–";
    tr.append(td);
    body.append(tr);
  }
  t.append(body);
  return t;
}
