// Pools and their instances, the resource manager's decisions; admins drain or kill.
import { fill, flash, fmtAgo, fmtTime, getJSON, h, isAdmin, live, postJSON, throttle } from "./common.js";

async function act(pool, what, instances) {
  const target = instances.length ? `instance ${instances.join(", ")}` : `every instance (scaled to 0)`;
  try {
    const done = await postJSON(`/ui/api/pools/${encodeURIComponent(pool)}/${what}`, { instances });
    const extra = done.requeued ? `; ${done.requeued.length} job(s) requeued` : "";
    flash(`pool ${pool}: ${what} ${target}${extra}`, false);
  } catch (err) {
    flash(`pool ${pool}: ${err.message}`);
  }
  reload();
}

function button(label, pool, what, instances, danger = false) {
  return h("button", {
    type: "button", className: danger ? "danger" : "",
    dataset: { action: what, pool, instances: instances.join(",") },
    onclick: () => act(pool, what, instances),
  }, label);
}

function instanceRow(pool, i) {
  const buttons = isAdmin && !["terminating", "terminated", "gone"].includes(i.state)
    ? [button("Drain", pool, "drain", [i.id]), " ", button("Kill", pool, "kill", [i.id], true)] : [];
  return h("tr", { dataset: { instanceId: i.id } },
    h("td", { className: "num" }, String(i.id)), h("td", {}, i.state), h("td", {}, i.provider_id),
    h("td", {}, i.agent_id ?? ""), h("td", {}, fmtAgo(i.ready_at || i.created_at)),
    h("td", { className: "wrap" }, i.reason), h("td", { className: "admin-only" }, buttons));
}

function poolCard(p) {
  const head = h("h2", {}, `${p.name} `, h("span", { className: "note" },
    `${p.provider} · ${p.cpus} cpus · min ${p.min} max ${p.max} · $${p.cost_per_hour}/h · spent $${p.cost.toFixed(2)}`));
  const actions = isAdmin ? h("div", { className: "actions admin-only" },
    button("Drain pool", p.name, "drain", []), button("Kill pool", p.name, "kill", [], true)) : "";
  const table = h("table", {},
    h("thead", {}, h("tr", {}, ...["instance", "state", "provider id", "agent", "up since", "why"].map((t) => h("th", {}, t)), h("th", { className: "admin-only" }))),
    h("tbody", {}, ...p.instances.map((i) => instanceRow(p.name, i))));
  return h("section", { className: "pool", dataset: { pool: p.name } }, head,
    h("p", { className: "muted" }, `labels: ${p.labels.join(", ") || "none"} · agents: ${p.agents.length}`),
    actions, p.instances.length ? table : h("p", { className: "muted" }, "no live instances"));
}

function decisionRow(e) {
  return h("tr", {}, h("td", {}, fmtTime(e.ts)), h("td", {}, e.kind), h("td", { className: "wrap" }, e.detail));
}

async function load() {
  const data = await getJSON("/ui/api/pools");
  const box = document.getElementById("pools");
  fill(box, data.pools.length ? data.pools.map(poolCard)
    : [h("p", { className: "muted" }, "No pools are declared in this session's clobi.toml.")]);
  fill(document.querySelector("#decisions tbody"), data.decisions.map(decisionRow));
}

const reload = throttle(() => load().catch(() => {}), 1000);
load().catch(() => {});
live((e) => {
  if (!e.job_id) reload();
}, reload);
