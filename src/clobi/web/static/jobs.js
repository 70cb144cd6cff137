// Jobs: filter, sort, page; rows change as their jobs do, without reloading the page.
import { JOB_STATES, fill, flash, fmtAgo, getJSON, h, jobLink, live, postJSON, stateBadge, throttle } from "./common.js";

const form = document.getElementById("filters");
const body = document.querySelector("#jobs tbody");
const selected = new Set();
let cursors = [null]; // the cursor of each page up to the current one (null: the first)
let next = null;
let changed = new Set(); // ids of shown jobs whose rows must be read again

function filters() {
  const data = new FormData(form);
  const query = new URLSearchParams();
  for (const key of ["state", "tag", "user", "text", "sort", "limit"]) {
    const value = String(data.get(key) ?? "").trim();
    if (value) query.set(key, value);
  }
  query.set("desc", data.get("desc") ? "true" : "false");
  return query;
}

function restoreFilters() {
  const query = new URLSearchParams(location.search);
  for (const [key, value] of query) {
    const field = form.elements.namedItem(key);
    if (!field) continue;
    if (field.type === "checkbox") field.checked = value === "true";
    else field.value = value;
  }
}

function cells(job) {
  const check = h("input", { type: "checkbox", "aria-label": `select job ${job.id}`, onchange: (ev) => {
    if (ev.target.checked) selected.add(job.id); else selected.delete(job.id);
    updateButtons();
  } });
  check.checked = selected.has(job.id);
  return [
    h("td", {}, check), h("td", { className: "num" }, jobLink(job.id)),
    h("td", { className: "wrap name" }, job.name), h("td", { className: "state-cell" }, stateBadge(job.state)),
    h("td", {}, job.owner), h("td", { className: "num" }, String(job.priority)),
    h("td", {}, job.tags.join(", ")), h("td", { className: "num" }, String(job.attempts)),
    h("td", { className: "num" }, job.exit_code ?? ""), h("td", { title: new Date(job.updated_at * 1000).toISOString() }, fmtAgo(job.updated_at)),
    h("td", { className: "wrap" }, job.reason),
  ];
}

function row(job) {
  return h("tr", { dataset: { jobId: job.id, state: job.state } }, ...cells(job));
}

function rowOf(id) {
  return body.querySelector(`tr[data-job-id="${Number(id)}"]`);
}

function updateButtons() {
  const none = selected.size === 0;
  document.getElementById("kill-selected").disabled = none;
  document.getElementById("retry-selected").disabled = none;
}

async function load() {
  const query = filters();
  const cursor = cursors[cursors.length - 1];
  if (cursor) {
    query.set("after_id", cursor.after_id);
    if (cursor.after_value !== null) query.set("after_value", cursor.after_value);
  }
  const page = await getJSON(`/ui/api/jobs?${query}`);
  next = page.next;
  fill(body, page.jobs.length ? page.jobs.map(row)
    : [h("tr", {}, h("td", { colspan: 11, className: "muted" }, "no jobs"))]);
  document.getElementById("page-no").textContent = `page ${cursors.length}`;
  document.getElementById("next-page").disabled = !next;
  document.getElementById("prev-page").disabled = cursors.length < 2;
  document.getElementById("first-page").disabled = cursors.length < 2;
}

const reload = throttle(() => load().catch((err) => flash(err.message)), 300);

// Re-read only the shown jobs that changed (one request for all of them).
const refreshChanged = throttle(async () => {
  const ids = [...changed].slice(0, 200);
  changed = new Set([...changed].slice(200));
  if (!ids.length) return;
  const query = new URLSearchParams(ids.map((id) => ["id", id]));
  query.set("limit", "200");
  const page = await getJSON(`/ui/api/jobs?${query}`);
  for (const job of page.jobs) {
    const tr = rowOf(job.id);
    if (tr) tr.replaceWith(row(job));
  }
}, 250);

function onEvent(e) {
  if (!e.job_id) return;
  const tr = rowOf(e.job_id);
  if (e.kind === "submitted" && cursors.length === 1) {
    reload(); // a new job: the first page may show it
    return;
  }
  if (!tr) return;
  if (e.kind === "removed") {
    tr.remove();
    return;
  }
  if (JOB_STATES.includes(e.to_state)) {
    // The new state at once, the rest of the row right after.
    tr.dataset.state = e.to_state;
    tr.querySelector(".state-cell").replaceChildren(stateBadge(e.to_state));
  }
  changed.add(e.job_id);
  refreshChanged();
}

async function bulk(action) {
  const ids = [...selected];
  try {
    const done = await postJSON(`/ui/api/jobs/${action}`, { ids });
    flash(`${action}: ${done.ids.length} of ${ids.length} job(s)`, false);
    selected.clear();
    updateButtons();
  } catch (err) {
    flash(`${action}: ${err.message}`);
  }
  reload();
}

function refilter() {
  cursors = [null];
  history.replaceState(null, "", `?${filters()}`);
  reload();
}

restoreFilters();
form.addEventListener("change", refilter);
form.addEventListener("submit", (ev) => { ev.preventDefault(); refilter(); });
document.getElementById("next-page").addEventListener("click", () => {
  if (next) { cursors.push(next); reload(); }
});
document.getElementById("prev-page").addEventListener("click", () => {
  if (cursors.length > 1) { cursors.pop(); reload(); }
});
document.getElementById("first-page").addEventListener("click", () => { cursors = [null]; reload(); });
document.getElementById("select-all").addEventListener("change", (ev) => {
  for (const tr of body.querySelectorAll("tr[data-job-id]")) {
    const id = Number(tr.dataset.jobId);
    if (ev.target.checked) selected.add(id); else selected.delete(id);
    tr.querySelector("input[type=checkbox]").checked = ev.target.checked;
  }
  updateButtons();
});
document.getElementById("kill-selected").addEventListener("click", () => bulk("kill"));
document.getElementById("retry-selected").addEventListener("click", () => bulk("retry"));
load().catch((err) => flash(err.message));
live(onEvent, reload);
