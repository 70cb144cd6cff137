// Overview: jobs by state, charts over time, pools, recent events; kept live.
import { lineChart } from "./chart.js";
import { JOB_STATES, eventChange, fill, fmtTime, getJSON, h, jobLink, live, stateBadge, throttle } from "./common.js";

const counts = {};
const CHART_WINDOW_S = 3600;
const CHART_REFRESH_MS = 10000;
const MAX_EVENTS = 50;

function drawCounts() {
  fill(document.getElementById("counts"), JOB_STATES.map((state) =>
    h("a", { className: "card", href: `/ui/jobs?state=${state}`, dataset: { state } },
      h("div", { className: "n" }, String(counts[state] ?? 0)),
      h("div", { className: "label" }, stateBadge(state)))));
}

function poolRow(p) {
  const instances = Object.entries(p.instances).map(([s, n]) => `${n} ${s}`).join(", ");
  return h("tr", { dataset: { pool: p.pool } },
    h("td", {}, p.pool), h("td", { className: "num" }, String(p.agents)),
    h("td", { className: "num" }, String(p.busy)), h("td", { className: "num" }, String(p.cpus)),
    h("td", { className: "num" }, String(p.running)), h("td", {}, instances || "—"));
}

function eventRow(e) {
  return h("tr", { dataset: { eventId: e.id } },
    h("td", {}, fmtTime(e.ts)), h("td", {}, e.kind), h("td", {}, jobLink(e.job_id)),
    h("td", {}, e.agent_id ?? ""), h("td", {}, eventChange(e)), h("td", { className: "wrap" }, e.detail));
}

async function load() {
  const data = await getJSON("/ui/api/overview");
  for (const state of JOB_STATES) counts[state] = data.counts[state] ?? 0;
  drawCounts();
  fill(document.querySelector("#pools tbody"), data.pools.map(poolRow));
  fill(document.querySelector("#events tbody"), data.events.map(eventRow));
}

async function loadCharts() {
  const data = await getJSON(`/ui/api/series?window_s=${CHART_WINDOW_S}`);
  const range = { since: data.since, until: data.until };
  lineChart(document.getElementById("chart-queue"), data.queue, range);
  lineChart(document.getElementById("chart-throughput"), data.throughput, { ...range, unit: "/s" });
}

const reloadCounts = throttle(async () => {
  const found = await getJSON("/ui/api/counts");
  for (const state of JOB_STATES) counts[state] = found[state] ?? 0;
  drawCounts();
}, 2000);
const reloadAll = throttle(() => load().catch(() => {}), 2000);

function onEvent(e) {
  const body = document.querySelector("#events tbody");
  body.prepend(eventRow(e));
  while (body.children.length > MAX_EVENTS) body.lastElementChild.remove();
  if (e.job_id) {
    // Show the move at once; the throttled reload then corrects anything the events miss.
    if (e.from_state in counts && counts[e.from_state] > 0) counts[e.from_state] -= 1;
    if (e.to_state in counts) counts[e.to_state] += 1;
    drawCounts();
    reloadCounts();
  } else {
    reloadAll();
  }
}

load().catch(() => {});
loadCharts().catch(() => {});
setInterval(() => {
  if (document.visibilityState === "visible") loadCharts().catch(() => {});
}, CHART_REFRESH_MS);
live(onEvent, () => load().catch(() => {}));
