// Live metrics: /metrics is scraped every few seconds and each chart is derived from the
// scrapes kept for the window: gauges as they are, counters as rates, the TTFT histogram
// and the prefix-cache counters over the last 30 s.

import { request } from "./api.js";
import { LineChart, niceBytes } from "./charts.js";
import { byId, formatBytes, formatNumber, setStatus } from "./dom.js";
import { bucketDelta, buckets, parsePrometheus, quantile, total } from "./prom.js";

const WINDOW_S = 300;
const RECENT_S = 30;
export const POLL_MS = 2000;

const scrapes = []; // [{t, running, waiting, generated, ttft, queries, hits, rss, models}]
let charts = null;

function makeCharts() {
  const count = (v) => (Number.isInteger(v) ? String(v) : formatNumber(v));
  const ms = (v) => (v >= 1 ? `${formatNumber(v)} s` : `${Math.round(v * 1000)} ms`);
  return {
    requests: new LineChart("Requests", [{ name: "running", cls: "s1" },
                                         { name: "waiting", cls: "s2" }], count),
    tokens: new LineChart("Generated tokens/s", [{ name: "tok/s", cls: "s1" }], count),
    ttft: new LineChart("Time to first token (30 s)", [{ name: "p50", cls: "s1" },
                                                       { name: "p99", cls: "s2" }], ms),
    cache: new LineChart("Prefix cache hit rate (30 s)", [{ name: "hit rate", cls: "s1" }],
                         (v) => `${Math.round(v * 100)}%`, { fixedMax: 1 }),
    memory: new LineChart("Memory", [{ name: "process RSS", cls: "s1" },
                                     { name: "models", cls: "s2" }], formatBytes, { nice: niceBytes }),
  };
}

/** The scrape closest to `seconds` before the latest one (the oldest when none is). */
function before(seconds) {
  const latest = scrapes[scrapes.length - 1];
  let found = scrapes[0];
  for (const scrape of scrapes) {
    if (scrape.t <= latest.t - seconds) found = scrape;
  }
  return found;
}

function rate(now, then, key) {
  if (now[key] === null || then[key] === null || now.t <= then.t) return null;
  const delta = now[key] - then[key];
  return delta < 0 ? null : delta / (now.t - then.t); // a restart resets counters
}

/** One chart point per scrape, from that scrape and the ones before it. */
function points() {
  return scrapes.map((now, i) => {
    const previous = scrapes[Math.max(0, i - 1)];
    let recent = now;
    for (let j = i; j >= 0 && scrapes[j].t >= now.t - RECENT_S; j -= 1) recent = scrapes[j];
    if (recent === now && i > 0) recent = previous;
    const ttft = bucketDelta(now.ttft, recent.ttft);
    const queries = now.queries - recent.queries;
    return {
      t: now.t,
      requests: [now.running, now.waiting],
      tokens: [i === 0 ? null : rate(now, previous, "generated")],
      ttft: [quantile(0.5, ttft), quantile(0.99, ttft)],
      cache: [queries > 0 ? (now.hits - recent.hits) / queries : null],
      memory: [now.rss, now.models],
    };
  });
}

function record(text) {
  const samples = parsePrometheus(text);
  scrapes.push({
    t: Date.now() / 1000,
    running: total(samples, "vllm:num_requests_running") ?? 0,
    waiting: total(samples, "vllm:num_requests_waiting") ?? 0,
    generated: total(samples, "vllm:generation_tokens_total"),
    ttft: buckets(samples, "vllm:time_to_first_token_seconds"),
    queries: total(samples, "vllm:prefix_cache_queries_total") ?? 0,
    hits: total(samples, "vllm:prefix_cache_hits_total") ?? 0,
    rss: total(samples, "process_resident_memory_bytes"),
    models: total(samples, "mlx_server_model_memory_bytes") ?? 0,
  });
  while (scrapes.length > 2 && scrapes[1].t < scrapes[scrapes.length - 1].t - WINDOW_S) {
    scrapes.shift();
  }
}

function redraw() {
  const all = points();
  const now = scrapes[scrapes.length - 1].t;
  // from one minute (a page just opened) up to the whole window, in whole minutes
  const minutes = Math.ceil(Math.max(60, now - scrapes[0].t) / 60);
  const span = Math.min(WINDOW_S, minutes * 60);
  for (const [key, chart] of Object.entries(charts)) {
    chart.draw(all.map((p) => ({ t: p.t, values: p[key] })), now, span);
  }
}

async function poll() {
  try {
    const response = await request("/metrics");
    record(await response.text());
    redraw();
  } catch (err) {
    setStatus(`Metrics: ${err.message}`, true);
  }
}

/** Start polling when the server serves /metrics; otherwise say why there are no charts. */
export function initMetrics(config) {
  const box = byId("metrics-charts");
  if (!config.metrics) {
    box.textContent = "This server does not serve /metrics (--no-metrics-enabled).";
    return;
  }
  charts = makeCharts();
  box.replaceChildren(...Object.values(charts).map((c) => c.el));
  poll();
  setInterval(() => {
    if (document.visibilityState === "visible") poll();
  }, POLL_MS);
}
