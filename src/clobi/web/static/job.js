// One job: summary, attempts timeline, live log tail, spec; kill, retry, download.
import { fill, flash, fmtBytes, fmtDuration, fmtTime, getJSON, h, live, logDecoder, postJSON, stateBadge, throttle } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const LOG_POLL_MS = 1000;
const LOG_MAX_CHARS = 2_000_000;
const id = Number(document.getElementById("job").dataset.jobId);
const logBox = document.getElementById("log");
const note = document.getElementById("log-note");
const streamPick = document.getElementById("stream");
let job = null;
let log = { attempt: null, offset: 0, stream: "stdout", decode: logDecoder(), final: false };

function summary(view) {
  const j = view.job;
  const rows = [
    ["owner", j.owner], ["priority", j.priority], ["tags", j.tags.join(", ") || "—"],
    ["array index", j.array_index ?? "—"], ["created", fmtTime(j.created_at)], ["updated", fmtTime(j.updated_at)],
    ["attempts", `${j.attempts} (retries left ${j.retries_left}, lost ${j.lost_count})`],
    ["exit code", j.exit_code ?? "—"], ["reason", j.reason || "—"],
    ["kill requested", j.cancel_requested ? "yes" : "no"],
    ["output", view.output ? `${fmtBytes(view.output.size)} (attempt ${view.output.attempt_id})` : "none yet"],
  ];
  return rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]);
}

function attemptRow(a) {
  const took = a.ended_at ? fmtDuration(a.ended_at - a.started_at) : "";
  return h("tr", { dataset: { attemptId: a.id } },
    h("td", { className: "num" }, String(a.id)), h("td", {}, `${a.agent_name} (${a.agent_id})`),
    h("td", {}, stateBadge(a.state)), h("td", {}, fmtTime(a.started_at)), h("td", {}, fmtTime(a.ended_at)),
    h("td", { className: "num" }, took), h("td", { className: "num" }, a.exit_code ?? ""),
    h("td", { className: "wrap" }, a.reason));
}

// One bar per attempt on a shared time axis, from start to end (or now).
function timeline(attempts) {
  const box = document.getElementById("timeline");
  if (!attempts.length) {
    box.replaceChildren();
    return;
  }
  const now = Date.now() / 1000;
  const t0 = Math.min(...attempts.map((a) => a.started_at));
  const t1 = Math.max(now, ...attempts.map((a) => a.ended_at ?? now));
  const width = 1000;
  const rowH = 18;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${attempts.length * rowH + 6}`);
  const colors = { succeeded: "#16a34a", running: "#2563eb", failed: "#dc2626", timed_out: "#dc2626", lost: "#d97706", cancelled: "#9ca3af" };
  attempts.forEach((a, i) => {
    const x = (t) => 160 + ((t - t0) / Math.max(1, t1 - t0)) * (width - 170);
    const rect = document.createElementNS(SVG, "rect");
    const end = a.ended_at ?? now;
    rect.setAttribute("x", x(a.started_at).toFixed(1));
    rect.setAttribute("y", String(i * rowH + 4));
    rect.setAttribute("width", Math.max(2, x(end) - x(a.started_at)).toFixed(1));
    rect.setAttribute("height", String(rowH - 6));
    rect.setAttribute("fill", colors[a.state] ?? "#6b7280");
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "4");
    label.setAttribute("y", String(i * rowH + 15));
    label.textContent = `#${a.id} ${a.agent_name}`.slice(0, 28);
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `${a.state} ${fmtTime(a.started_at)} – ${fmtTime(a.ended_at)} ${a.reason}`;
    rect.append(tip);
    svg.append(label, rect);
  });
  box.replaceChildren(svg);
}

function show(view) {
  job = view.job;
  document.getElementById("job-name").textContent = job.name;
  document.getElementById("job-state").replaceChildren(stateBadge(job.state));
  document.title = `Job ${id}: ${job.name} · Clobi`;
  fill(document.getElementById("summary"), summary(view));
  fill(document.querySelector("#attempts tbody"), view.attempts.map(attemptRow));
  timeline(view.attempts);
  document.getElementById("spec").textContent = JSON.stringify(view.spec, null, 2);
  const live = job.state === "queued" || job.state === "running";
  document.getElementById("kill").disabled = !live || job.cancel_requested;
  document.getElementById("retry").disabled = !["failed", "timed_out", "cancelled"].includes(job.state);
  document.getElementById("download").hidden = !view.output;
}

async function load() {
  try {
    show(await getJSON(`/ui/api/jobs/${id}`));
  } catch (err) {
    flash(err.message);
    return;
  }
  followLog();
}

function resetLog(stream) {
  log = { attempt: null, offset: 0, stream, decode: logDecoder(), final: false };
  logBox.textContent = "";
}

function append(text) {
  if (!text) return;
  const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
  logBox.append(document.createTextNode(text));
  if (logBox.textContent.length > LOG_MAX_CHARS) {
    logBox.textContent = logBox.textContent.slice(-LOG_MAX_CHARS / 2);
  }
  if (atEnd) logBox.scrollTop = logBox.scrollHeight;
}

async function readTail() {
  const tail = await getJSON(`/ui/api/jobs/${id}/log?stream=${log.stream}&offset=${log.offset}`);
  if (!tail) return;
  if (tail.attempt_id !== log.attempt) {
    resetLog(log.stream);
    log.attempt = tail.attempt_id;
  }
  if (tail.offset > log.offset) append(`\n[… ${tail.offset - log.offset} bytes not kept …]\n`);
  const text = log.decode(tail.data);
  log.offset = tail.offset + atob(tail.data).length;
  append(text);
}

async function readFinal() {
  const found = await getJSON(`/ui/api/jobs/${id}/final-log?stream=${log.stream}`);
  resetLog(log.stream);
  log.final = true;
  if (!found) {
    note.textContent = "(no output)";
    return;
  }
  append(log.decode(found.data));
  note.textContent = found.truncated ? "(the start of the log; download the output for all of it)" : "(from the output)";
}

let following = false;
async function followLog() {
  if (following || !job) return;
  following = true;
  try {
    while (job) {
      if (job.state === "running") {
        note.textContent = "(live)";
        if (document.visibilityState === "visible") await readTail().catch(() => {});
      } else if (job.state === "queued") {
        note.textContent = "(waiting to start)";
      } else {
        if (!log.final) await readFinal().catch((err) => { note.textContent = `(${err.message})`; });
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, LOG_POLL_MS));
    }
  } finally {
    following = false;
  }
}

async function action(what) {
  try {
    const done = await postJSON(`/ui/api/jobs/${what}`, { ids: [id] });
    flash(done.ids.length ? `${what}: done` : `${what}: nothing to do in state ${job.state}`, false);
  } catch (err) {
    flash(`${what}: ${err.message}`);
  }
  reload();
}

const reload = throttle(load, 200);
document.getElementById("kill").addEventListener("click", () => action("kill"));
document.getElementById("retry").addEventListener("click", () => {
  resetLog(log.stream);
  action("retry");
});
streamPick.addEventListener("change", () => {
  resetLog(streamPick.value);
  followLog();
});
load();
live((e) => {
  if (e.job_id !== id) return;
  if (["queued", "running"].includes(e.to_state) && log.final) resetLog(log.stream);
  if (job && e.to_state) {
    job = { ...job, state: e.to_state }; // at once; the reload fills in the rest
    document.getElementById("job-state").replaceChildren(stateBadge(e.to_state));
  }
  reload();
}, reload);
