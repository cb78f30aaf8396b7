// The reports page: GET /reports drawn as charts and tables, and its CSV downloaded.
// No framework and no build step. Data only ever goes into textContent and SVG
// attributes, never into HTML, so nothing a service answers can run as code.
"use strict";

// The dashboard's: one key for both pages of a tab.
const KEY_STORAGE = "bridge.apiKey";
const SVG = "http://www.w3.org/2000/svg";
const TIME_GROUPS = ["day", "week", "month"];
const FILTERS = ["vendedor", "pipeline"];
const TAKEOVERS = ["takeovers_command", "takeovers_api", "takeovers_human"];
const HANDOFFS = ["handoffs_ai", "handoffs_silent", "handoffs_keyword"];
// A CSV's Blob URL lives until the download has surely read it.
const BLOB_LIFETIME_MS = 60000;

// Numbers for people: counts whole, in the reader's locale; times in seconds.
const COUNT = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = (n) => ({ minimumFractionDigits: n, maximumFractionDigits: n });
const SHORT_TIME = new Intl.NumberFormat(undefined, decimals(2));
const LONG_TIME = new Intl.NumberFormat(undefined, decimals(1));

// The figures of a row the page shows: a report's own, and two sums of them.
const FIGURES = {
  conversations_started: { label: "Conversations started",
    value: (row) => row.conversations_started },
  customer_messages: { label: "Customer messages", value: (row) => row.customer_messages },
  bot_messages: { label: "Bot messages", value: (row) => row.bot_messages },
  replies: { label: "Bot replies", value: (row) => row.replies },
  takeovers: { label: "Takeovers", value: (row) => total(row, TAKEOVERS) },
  handoffs: { label: "Handoffs", value: (row) => total(row, HANDOFFS) },
  reply_p50_seconds: { label: "Reply p50", value: (row) => row.reply_p50_seconds, seconds: true },
  reply_p90_seconds: { label: "Reply p90", value: (row) => row.reply_p90_seconds, seconds: true },
  n8n_answer_p50_seconds: { label: "n8n answer p50", value: (row) => row.n8n_answer_p50_seconds,
    seconds: true },
};
const TABLE_COLUMNS = ["conversations_started", "customer_messages", "bot_messages", "takeovers",
  "handoffs", "reply_p50_seconds", "reply_p90_seconds", "n8n_answer_p50_seconds"];

// The query of the report on screen: the CSV buttons download that one, not what the
// controls say after an edit not yet applied.
let shown = null;
let loads = 0; // the newest load; an older one answering late draws nothing
let vendedorNames = null;
let redraw = null; // the charts of the report on screen, drawn again at a new width

function total(row, names) {
  return names.reduce((sum, name) => sum + (row[name] || 0), 0);
}

function figureText(name, row) {
  const figure = FIGURES[name];
  const value = figure.value(row) || 0;
  if (!figure.seconds) return COUNT.format(value);
  // No reply timed reads "–", not a reply time of zero; nor is a few milliseconds zero.
  if (!value) return "–";
  if (value < 0.005) return `< ${SHORT_TIME.format(0.01)} s`;
  return `${(value < 10 ? SHORT_TIME : LONG_TIME).format(value)} s`;
}

// The key comes in the fragment (never sent to the server, so never in its logs),
// is kept for this tab only, and the fragment is wiped from the address bar.
function apiKey() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    sessionStorage.setItem(KEY_STORAGE, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY_STORAGE);
}

class KeyRefused extends Error {}

// GET /reports with the key in its header; a refusal says why, in the edge's words.
async function fetchReport(key, query, format) {
  const params = new URLSearchParams(query);
  if (format) params.set("format", format);
  const response = await fetch(`/reports?${params}`, {
    headers: { "X-API-Key": key },
    cache: "no-store",
  });
  if (response.status === 401) throw new KeyRefused();
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `the edge answered ${response.status}`);
  }
  return response;
}

// Vendedores' names for the table; without them it shows the Kommo user ids.
async function names(key) {
  if (vendedorNames) return vendedorNames;
  try {
    const response = await fetch("/vendedores", { headers: { "X-API-Key": key } });
    if (!response.ok) return new Map();
    const body = await response.json();
    vendedorNames = new Map(body.vendedores.map((v) => [String(v.id), v.name]));
    return vendedorNames;
  } catch {
    return new Map();
  }
}

function controlsQuery() {
  const query = { group_by: document.getElementById("group").value };
  for (const name of ["from", "to", ...FILTERS]) {
    const value = document.getElementById(name).value.trim();
    if (value) query[name] = value;
  }
  return query;
}

// The controls from the address bar (?from=&to=&group=&vendedor=&pipeline=), so that a
// report can be bookmarked; never the key, which stays in the fragment.
function controlsFromAddress() {
  const params = new URLSearchParams(location.search);
  for (const name of ["from", "to", ...FILTERS]) {
    if (params.get(name)) document.getElementById(name).value = params.get(name);
  }
  if (TIME_GROUPS.includes(params.get("group"))) {
    document.getElementById("group").value = params.get("group");
  }
}

function controlsToAddress(query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    params.set(name === "group_by" ? "group" : name, value);
  }
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

async function load() {
  const key = apiKey();
  if (!key) return askForKey();
  const mine = ++loads;
  document.body.dataset.state = "loading";
  const query = controlsQuery();
  try {
    const series = await (await fetchReport(key, query)).json();
    // The service chose the range when none was given (the last 30 days in its time
    // zone): the tables ask for the very same days.
    const ranged = { ...query, from: series.from, to: series.to };
    const [byVendedor, byPipeline, known] = await Promise.all([
      fetchReport(key, { ...ranged, group_by: "vendedor" }).then((r) => r.json()),
      fetchReport(key, { ...ranged, group_by: "pipeline" }).then((r) => r.json()),
      names(key),
    ]);
    if (mine !== loads) return;
    shown = ranged;
    render(series, byVendedor, byPipeline, known);
    finished("ready", "");
  } catch (error) {
    if (mine !== loads) return;
    if (error instanceof KeyRefused) return askForKey("That key was refused.");
    // The reason and the controls to mend it; no figures of another query under them.
    shown = null;
    redraw = null;
    document.getElementById("key-form").hidden = true;
    document.getElementById("controls").hidden = false;
    document.getElementById("results").hidden = true;
    document.getElementById("range").textContent = "";
    finished("error", `The report could not be made: ${error.message}`);
  }
}

function finished(state, message) {
  banner(message);
  document.body.dataset.state = state;
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

function render(series, byVendedor, byPipeline, known) {
  document.getElementById("key-form").hidden = true;
  document.getElementById("controls").hidden = false;
  document.getElementById("results").hidden = false;
  document.getElementById("from").value = series.from;
  document.getElementById("to").value = series.to;
  const range = `${series.from} – ${series.to}`;
  document.getElementById("range").textContent = `${range} · ${series.timezone}`;
  document.getElementById("totals-range").textContent = range;
  document.getElementById("timezone").textContent = series.timezone;
  for (const node of document.querySelectorAll("[data-total]")) {
    node.textContent = figureText(node.dataset.total, series.total);
  }
  for (const node of document.querySelectorAll("[data-period]")) {
    node.textContent = series.group_by;
  }
  const periods = timeline(series);
  redraw = () => charts(periods);
  redraw();
  table("by-vendedor", "Vendedor", byVendedor, (id) => known.get(id));
  table("by-pipeline", "Pipeline", byPipeline, () => undefined);
}

function charts(periods) {
  barChart("chart-messages", periods, [["customer", "customer_messages"], ["bot", "bot_messages"]]);
  barChart("chart-handling", periods,
    [["replies", "replies"], ["takeovers", "takeovers"], ["handoffs", "handoffs"]]);
  lineChart("chart-reply", periods, ["p50", "p90"]);
}

// ---- time ----

function parseDay(text) {
  const [y, m, d] = text.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d));
}

function dayText(date) {
  return date.toISOString().slice(0, 10);
}

// Every period of the range, as the service names them (a day, the week's Monday, a
// month), each with its row or zeros: a chart's gaps are days nothing happened, drawn.
function timeline(report) {
  const rows = new Map(report.rows.map((row) => [row.group, row]));
  const groups = periodNames(report.group_by, report.from, report.to);
  // A group outside the expected names (a service that names them otherwise): its rows
  // as they came, rather than a chart of zeros.
  if (report.rows.some((row) => !groups.includes(row.group))) return report.rows;
  return groups.map((group) => rows.get(group) || { group });
}

function periodNames(groupBy, from, to) {
  let day = parseDay(from);
  const last = parseDay(to);
  if (groupBy === "week") day.setUTCDate(day.getUTCDate() - ((day.getUTCDay() + 6) % 7));
  if (groupBy === "month") day.setUTCDate(1);
  const names = [];
  while (day <= last) {
    names.push(groupBy === "month" ? dayText(day).slice(0, 7) : dayText(day));
    day = new Date(day);
    if (groupBy === "month") day.setUTCMonth(day.getUTCMonth() + 1);
    else day.setUTCDate(day.getUTCDate() + (groupBy === "week" ? 7 : 1));
  }
  return names;
}

// An axis label: a month as it is, a day or a week's Monday without its year (the
// header says the range).
function periodLabel(group) {
  return group.length === 10 ? group.slice(5) : group;
}

// ---- charts ----

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.append(node);
  return node;
}

// The smallest 1, 2 or 5 times a power of ten at or above `value`.
function niceMax(value) {
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1e-9)));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

// Shows the chart, or its "nothing" line when no period has a figure to draw.
function chartOrEmpty(id, any) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  // The attribute: an SVG element has no `hidden` property (an HTML element's).
  svg.toggleAttribute("hidden", !any);
  document.querySelector(`[data-empty="${id}"]`).hidden = any;
  return any ? svg : null;
}

// A chart's frame: y from 0 to max with four gridlines, a label every ~80 px along x.
function frame(svg, periods, max, seconds) {
  const width = svg.clientWidth || 900;
  const height = svg.clientHeight || 220;
  const left = 44, right = 8, bottom = 20, top = 8;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotW = width - left - right, plotH = height - bottom - top;
  const step = plotW / Math.max(1, periods.length);
  const y = (value) => top + plotH - (value / max) * plotH;
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const value = max * fraction;
    // Counts are whole: a tick of 2.5 messages would be a lie.
    if (!seconds && !Number.isInteger(value)) continue;
    el("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "axis" }, svg);
    el("text", { x: left - 6, y: y(value) + 3, "text-anchor": "end" }, svg).textContent =
      seconds ? `${+value.toFixed(2)} s` : COUNT.format(value);
  }
  const every = Math.max(1, Math.ceil(80 / step));
  periods.forEach((period, i) => {
    if (i % every) return;
    el("text", { x: left + i * step + step / 2, y: height - 5, "text-anchor": "middle" }, svg)
      .textContent = periodLabel(period.group);
  });
  return { left, step, y };
}

// Bars side by side per period, one per [class, figure].
function barChart(id, periods, kinds) {
  const value = (period, figure) => FIGURES[figure].value(period) || 0;
  const max = Math.max(0, ...periods.flatMap((p) => kinds.map(([, f]) => value(p, f))));
  const svg = chartOrEmpty(id, max > 0);
  if (!svg) return;
  const { left, step, y } = frame(svg, periods, niceMax(max), false);
  const gap = Math.min(4, step * 0.2);
  const width = Math.max(1, (step - gap) / kinds.length);
  periods.forEach((period, i) => {
    kinds.forEach(([kind, figure], k) => {
      const n = value(period, figure);
      if (!n) return;
      const bar = el("rect", { x: left + i * step + gap / 2 + k * width, y: y(n),
        width: Math.max(1, width - 1), height: y(0) - y(n), class: kind }, svg);
      el("title", {}, bar).textContent =
        `${period.group}: ${COUNT.format(n)} ${FIGURES[figure].label.toLowerCase()}`;
    });
  });
}

// Reply time per period: a line and dots for each quantile, only where replies were timed.
function lineChart(id, periods, quantiles) {
  const timed = periods.filter((p) => p.replies > 0);
  const max = Math.max(0, ...timed.flatMap((p) => quantiles.map((q) => p[`reply_${q}_seconds`])));
  const svg = chartOrEmpty(id, max > 0);
  if (!svg) return;
  const { left, step, y } = frame(svg, periods, niceMax(max), true);
  for (const q of quantiles) {
    const name = `reply_${q}_seconds`;
    const points = periods
      .map((p, i) => [p, left + i * step + step / 2, y(p[name] || 0)])
      .filter(([p]) => p.replies > 0);
    if (points.length > 1) {
      const d = points.map(([, x, py], i) => `${i ? "L" : "M"}${x.toFixed(1)},${py.toFixed(1)}`);
      el("path", { d: d.join(" "), class: q }, svg);
    }
    for (const [p, x, py] of points) {
      const dot = el("circle",
        { cx: x.toFixed(1), cy: py.toFixed(1), r: 3, class: `dot ${q}` }, svg);
      el("title", {}, dot).textContent =
        `${p.group}: ${q} ${figureText(name, p)} over ${COUNT.format(p.replies)} replies`;
    }
  }
}

// ---- tables ----

function cells(row, columns, first) {
  const tr = document.createElement("tr");
  const head = document.createElement("td");
  head.textContent = first;
  tr.append(head);
  for (const name of columns) {
    const td = document.createElement("td");
    td.dataset.metric = name;
    td.textContent = figureText(name, row);
    tr.append(td);
  }
  return tr;
}

function table(id, title, report, nameOf) {
  const node = document.getElementById(id);
  const headRow = document.createElement("tr");
  for (const text of [title, ...TABLE_COLUMNS.map((name) => FIGURES[name].label)]) {
    const th = document.createElement("th");
    th.textContent = text;
    headRow.append(th);
  }
  node.tHead.replaceChildren(headRow);
  node.tBodies[0].replaceChildren(...report.rows.map((row) => {
    const name = nameOf(row.group);
    const label = row.group === "-" ? "not known" : name ? `${name} (${row.group})` : row.group;
    const tr = cells(row, TABLE_COLUMNS, label);
    tr.dataset.group = row.group;
    return tr;
  }));
  node.tFoot.replaceChildren(cells(report.total, TABLE_COLUMNS, "Total"));
  node.hidden = report.rows.length === 0;
  document.querySelector(`[data-empty="${id}"]`).hidden = report.rows.length !== 0;
}

// ---- CSV ----

// The CSV of the report on screen (or one of its tables), fetched with the key in its
// header and saved from a Blob URL: the key never goes into a URL.
async function download(groupBy) {
  const key = apiKey();
  if (!key) return askForKey();
  if (!shown) return;
  try {
    const query = { ...shown, group_by: groupBy || shown.group_by };
    const response = await fetchReport(key, query, "csv");
    const disposition = response.headers.get("Content-Disposition") || "";
    const filename = /filename="([^"]+)"/.exec(disposition)?.[1] || "report.csv";
    const url = URL.createObjectURL(new Blob([await response.text()], { type: "text/csv" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), BLOB_LIFETIME_MS);
    document.body.dataset.downloaded = filename;
    banner("");
  } catch (error) {
    if (error instanceof KeyRefused) return askForKey("That key was refused.");
    banner(`The CSV could not be made: ${error.message}`);
  }
}

// ---- the page ----

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  document.getElementById("key-form").hidden = false;
  document.getElementById("controls").hidden = true;
  document.getElementById("results").hidden = true;
  document.getElementById("key-error").textContent = message || "";
  document.body.dataset.state = "key";
}

function banner(message) {
  const node = document.getElementById("banner");
  node.hidden = !message;
  node.textContent = message || "";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, document.getElementById("key").value);
  load();
});

document.getElementById("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  controlsToAddress(controlsQuery());
  load();
});

document.getElementById("group").addEventListener("change", () => {
  controlsToAddress(controlsQuery());
  load();
});

document.getElementById("download").addEventListener("click", () => download());
document.getElementById("csv-vendedor").addEventListener("click", () => download("vendedor"));
document.getElementById("csv-pipeline").addEventListener("click", () => download("pipeline"));

// The charts are drawn to the pixel width of the page: drawn again when it changes.
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => redraw && redraw(), 200);
});

controlsFromAddress();
load();
