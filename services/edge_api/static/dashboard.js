// The operator's dashboard: asks /dashboard/data every few seconds and draws it.
// No framework and no build step. Data only ever goes into textContent and SVG
// attributes, never into HTML, so nothing a service answers can run as code.
"use strict";

const KEY_STORAGE = "bridge.apiKey";
const params = new URLSearchParams(location.search);
const refreshSeconds = clamp(Number(params.get("refresh")) || 10, 1, 300);
const SVG = "http://www.w3.org/2000/svg";
let hours = clamp(Number(params.get("hours")) || 6, 1, 24);
let timer = null;

function clamp(n, lo, hi) {
  return Math.min(hi, Math.max(lo, Math.round(n)));
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

function show(name, value, tone) {
  for (const el of document.querySelectorAll(`[data-metric="${name}"]`)) {
    el.textContent = value === null || value === undefined ? "–" : String(value);
    el.classList.remove("ok", "warn", "bad");
    if (tone) el.classList.add(tone);
  }
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return null;
  const s = Math.abs(seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function secondsText(value) {
  return value ? `${value.toFixed(2)} s` : "–";
}

function render(data) {
  const stats = data.stats;
  if (stats.error) {
    show("conversations.active", "unavailable", "bad");
  } else {
    const c = stats.conversations;
    show("conversations.active", c.active || 0);
    show("conversations.paused", c.paused || 0, c.paused ? "warn" : null);
    show("conversations.awaiting_reply", c.awaiting_reply || 0);
    const t = stats.takeovers;
    show("takeovers.total", t.by_command + t.automatic + t.by_api);
    show("takeovers.by_command", t.by_command);
    show("takeovers.automatic", t.automatic);
    show("takeovers.by_api", t.by_api);
    show("messages.in", stats.messages.in);
    show("messages.out", stats.messages.out);
    show("messages.too_old", stats.messages.too_old);
    show("messages.without_lead", stats.messages.without_lead);
    const hooks = stats.webhooks;
    const total = (byReason) => Object.values(byReason).reduce((a, b) => a + b, 0);
    show("webhooks.refused", total(hooks.refused), total(hooks.refused) ? "warn" : null);
    show("webhooks.items_skipped", total(hooks.items_skipped));
    show("webhooks.reasons", [
      ...Object.entries(hooks.refused).map(([r, n]) => `refused ${r}: ${n}`),
      ...Object.entries(hooks.items_skipped).map(([r, n]) => `skipped ${r}: ${n}`),
    ].join(" · "));
    for (const [k, v] of Object.entries(stats.decisions)) {
      show(`decisions.${k}`, v);
    }
    // WhatsApp's 24-hour window: templates sent, and what became of the replies that
    // found it closed (all-time counters).
    for (const [k, v] of Object.entries(stats.whatsapp || {})) {
      show(`whatsapp.${k}`, v);
    }
    const w = stats.window;
    for (const k of ["takeovers", "handoffs", "messages_in", "messages_out", "replies"]) {
      show(`window.${k}`, w[k]);
    }
    show("window.dead_lettered", w.dead_lettered, w.dead_lettered ? "bad" : null);
    show("window.hours", `${data.hours} h`);
    show("latency.median", secondsText(stats.median_reply_seconds));
    show("latency.p50", secondsText(w.reply_p50_seconds));
    show("latency.p95", secondsText(w.reply_p95_seconds));
    show("n8n.dead_letters", stats.n8n.dead_letters, stats.n8n.dead_letters ? "bad" : "ok");
    show("n8n.outbox_pending", stats.n8n.outbox_pending);
    show("n8n.retried", stats.n8n.retried);
    show("bucket", duration(stats.bucket_seconds));
    throughputChart(stats.series, stats.bucket_seconds);
    latencyChart(stats.series, stats.bucket_seconds);
  }

  const k = data.kommo;
  if (k.error) {
    show("kommo.token_state", "unknown", "bad");
    show("kommo.detail", k.error);
  } else {
    const good = k.token_state === "ok" || k.token_state === "long_lived";
    show("kommo.token_state", k.token_state, good ? "ok" : "bad");
    show("kommo.expires_in",
      k.token_expires_at ? duration(k.token_expires_at - data.generated_at) : null);
    show("kommo.blocked", k.blocked ? "yes" : "no", k.blocked ? "bad" : "ok");
    show("kommo.breaker", k.breaker, k.breaker === "closed" ? "ok" : "warn");
    show("kommo.detail", k.detail || "");
  }

  const v = data.vendedores;
  if (v.error) {
    show("vendedores.active_total", "unavailable", "bad");
    show("vendedores.sync_error", v.error);
  } else {
    show("vendedores.active_total", `${v.active} / ${v.total}`);
    show("vendedores.age", v.age_seconds === null ? "never" : `${duration(v.age_seconds)} ago`,
      v.sync_error || v.age_seconds === null ? "warn" : "ok");
    show("vendedores.sync_error", v.sync_error ? `last sync failed: ${v.sync_error}` : "");
  }

  const list = document.getElementById("services");
  list.replaceChildren();
  for (const [name, state] of Object.entries(data.services)) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = name;
    const value = document.createElement("strong");
    value.textContent = state;
    value.className = state === "SERVING" ? "ok" : "bad";
    value.dataset.metric = `services.${name}`;
    li.append(label, value);
    list.append(li);
  }

  const work = data.health.work;
  if (typeof work === "string") {
    show("work.failing", "unknown", "bad");
  } else {
    show("work.failing", work.failing, work.failing ? "bad" : "ok");
    show("work.dead_letters", work.dead_letters, work.dead_letters ? "warn" : "ok");
    show("work.dead_letters_recent", work.dead_letters_recent,
      work.dead_letters_recent ? "bad" : "ok");
  }
  attentionTable(data.attention || [], data.generated_at);

  // The header is what GET /health says, problems included: one source of truth.
  const overall = data.health.status;
  const pill = document.getElementById("overall");
  pill.dataset.state = overall;
  pill.textContent = overall;
  document.getElementById("problems").textContent = data.health.problems.join(" · ");
  document.getElementById("updated").textContent =
    `updated ${new Date(data.generated_at * 1000).toLocaleTimeString()} · every ${refreshSeconds} s`;
}

const REASONS = {
  failing: "work failing",
  dead_letter: "dead letter",
  waiting_for_n8n: "waiting for n8n",
  taken_over: "taken over",
};

function attentionTable(items, now) {
  const table = document.getElementById("attention");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    row.dataset.reason = item.reason;
    const cells = [
      REASONS[item.reason] || item.reason,
      item.lead_id === null ? "–" : String(item.lead_id),
      item.conversation_id,
      item.since ? `${duration(now - item.since)} ago` : "–",
      item.detail || "",
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.firstChild.className = item.reason === "taken_over" || item.reason === "waiting_for_n8n"
      ? "warn" : "bad";
    body.append(row);
  }
  table.hidden = items.length === 0;
  document.getElementById("attention-empty").hidden = items.length !== 0;
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.append(node);
  return node;
}

// A chart frame: width from the page, y from 0 to max, a time label every hour.
// The smallest 1, 2 or 5 times a power of ten at or above `value`.
function niceMax(value) {
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1e-9)));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

function frame(svg, series, bucketSeconds, max, unit) {
  svg.replaceChildren();
  const width = svg.clientWidth || 800;
  const height = svg.clientHeight || 160;
  const left = 36, bottom = 18, top = 8;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotW = width - left - 4, plotH = height - bottom - top;
  const step = plotW / Math.max(1, series.length);
  const y = (value) => top + plotH - (max ? (value / max) * plotH : 0);
  el("line", { x1: left, x2: width - 4, y1: top + plotH, y2: top + plotH, class: "axis" }, svg);
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    if (!unit && !Number.isInteger(value)) continue;
    if (fraction) {
      el("line", { x1: left, x2: width - 4, y1: y(value), y2: y(value), class: "axis" }, svg);
    }
    el("text", { x: 2, y: y(value) + 3 }, svg).textContent = `${+value.toFixed(1)}${unit}`;
  }
  const every = Math.max(1, Math.round(3600 / bucketSeconds));
  series.forEach((b, i) => {
    if ((b.start % 3600) === 0 || (i === 0 && series.length <= every)) {
      const t = new Date(b.start * 1000);
      el("text", { x: left + i * step, y: height - 4 }, svg).textContent =
        t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
  });
  return { left, step, y };
}

function throughputChart(series, bucketSeconds) {
  const svg = document.getElementById("throughput");
  const max = niceMax(Math.max(1, ...series.map((b) => Math.max(b.messages_in, b.messages_out))));
  const { left, step, y } = frame(svg, series, bucketSeconds, max, "");
  const w = Math.max(1, step / 2 - 1);
  series.forEach((b, i) => {
    for (const [kind, value, dx] of [["in", b.messages_in, 0], ["out", b.messages_out, w]]) {
      if (!value) continue;
      const bar = el("rect", { x: left + i * step + dx, y: y(value), width: w,
        height: y(0) - y(value), class: kind }, svg);
      el("title", {}, bar).textContent =
        `${new Date(b.start * 1000).toLocaleTimeString()}: ${value} ${kind === "in" ? "in" : "out"}`;
    }
  });
}

function latencyChart(series, bucketSeconds) {
  const svg = document.getElementById("latency");
  const max = niceMax(Math.max(1, ...series.map((b) => b.reply_p95_seconds)));
  const { left, step, y } = frame(svg, series, bucketSeconds, max, "s");
  for (const kind of ["p50", "p95"]) {
    const points = series
      .map((b, i) => [b, left + i * step + step / 2, y(b[`reply_${kind}_seconds`])])
      .filter(([b]) => b.replies > 0);
    if (points.length > 1) {
      el("polyline", { class: kind,
        points: points.map(([, x, py]) => `${x.toFixed(1)},${py.toFixed(1)}`).join(" ") }, svg);
    }
    for (const [b, x, py] of points) {
      const dot = el("circle", { cx: x.toFixed(1), cy: py.toFixed(1), r: 3, class: `dot ${kind}` }, svg);
      el("title", {}, dot).textContent = `${new Date(b.start * 1000).toLocaleTimeString()}: ` +
        `${kind} ${b[`reply_${kind}_seconds`].toFixed(2)} s over ${b.replies} replies`;
    }
  }
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  document.getElementById("key-form").hidden = false;
  document.getElementById("panels").hidden = true;
  document.getElementById("key-error").textContent = message || "";
}

function banner(message) {
  const node = document.getElementById("banner");
  node.hidden = !message;
  node.textContent = message || "";
}

async function load() {
  const key = apiKey();
  if (!key) return askForKey();
  try {
    const response = await fetch(`/dashboard/data?hours=${hours}`, {
      headers: { "X-API-Key": key },
      cache: "no-store",
    });
    if (response.status === 401) return askForKey("That key was refused.");
    if (!response.ok) throw new Error(`the edge answered ${response.status}`);
    const data = await response.json();
    document.getElementById("key-form").hidden = true;
    document.getElementById("panels").hidden = false;
    render(data);
    banner("");
    document.body.dataset.loaded = String(data.generated_at);
  } catch (error) {
    banner(`Could not refresh (${error.message}); showing the last figures.`);
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(load, refreshSeconds * 1000);
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, document.getElementById("key").value);
  load();
});

const select = document.getElementById("hours");
select.value = String(hours);
select.addEventListener("change", () => {
  hours = clamp(Number(select.value), 1, 24);
  load();
});

load();
