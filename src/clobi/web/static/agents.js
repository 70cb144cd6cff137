// Agents: what each offers, what it runs, when it was last heard from; admins drain them.
import { fill, flash, fmtAgo, fmtBytes, getJSON, h, isAdmin, live, postJSON, throttle } from "./common.js";

const gone = document.getElementById("include-gone");

function actions(a) {
  if (!isAdmin || a.state === "gone") return h("td", { className: "admin-only" });
  const label = a.drain ? "Undrain" : "Drain";
  return h("td", { className: "admin-only" },
    h("button", { type: "button", dataset: { action: "drain", agent: a.id }, onclick: () => drain(a) }, label));
}

function row(a) {
  return h("tr", { dataset: { agentId: a.id } },
    h("td", { className: "num" }, String(a.id)), h("td", {}, a.name), h("td", {}, a.host),
    h("td", {}, a.pool), h("td", {}, a.state), h("td", { className: "num" }, String(a.cpus)),
    h("td", { className: "num" }, fmtBytes(a.memory_bytes)), h("td", { className: "num" }, String(a.gpus)),
    h("td", { className: "num" }, String(a.running)), h("td", {}, fmtAgo(a.last_seen)),
    h("td", {}, a.drain ? "yes" : ""), actions(a));
}

async function drain(a) {
  try {
    await postJSON(`/ui/api/agents/${a.id}/drain`, { drain: !a.drain });
    flash(`agent ${a.id}: ${a.drain ? "no longer draining" : "draining"}`, false);
  } catch (err) {
    flash(`agent ${a.id}: ${err.message}`);
  }
  reload();
}

async function load() {
  const found = await getJSON(`/ui/api/agents?include_gone=${gone.checked}`);
  fill(document.querySelector("#agents tbody"), found.map(row));
}

const reload = throttle(() => load().catch(() => {}), 1000);
gone.addEventListener("change", reload);
load().catch(() => {});
live((e) => {
  if (e.agent_id || e.kind.startsWith("agent_")) reload();
}, reload);
