// Shared helpers of the dashboard's pages.
//
// Every piece of data reaches the page as text: `h()` builds elements and adds strings as
// text nodes; nothing here (or in the pages) assigns innerHTML or builds markup from data.

export const csrf = document.querySelector('meta[name="csrf-token"]').content;
export const isAdmin = document.body.dataset.role === "admin";

const STATES = ["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "lost"];
export const JOB_STATES = STATES.slice(0, 6);

// h("td", {className: "num"}, "text", otherNode): an element with text and children.
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "href") node.setAttribute("href", safeHref(value));
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Links built from data only ever point into the dashboard.
function safeHref(value) {
  const text = String(value);
  return text.startsWith("/ui/") ? text : "#";
}

export function fill(parent, nodes) {
  parent.replaceChildren(...nodes);
}

export function stateBadge(state) {
  const known = STATES.includes(state) ? state : "other";
  return h("span", { className: `state state-${known}`, dataset: { state } }, state);
}

export function flash(message, isError = true) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = message;
  box.className = isError ? "flash error" : "flash";
  box.hidden = !message;
}

async function answer(response) {
  if (response.status === 401) {
    const next = encodeURIComponent(location.pathname + location.search);
    location.assign(`/ui/login?next=${next}`);
    throw new Error("logged out");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).message || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

export async function getJSON(path) {
  return answer(await fetch(path, { headers: { Accept: "application/json" } }));
}

export async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  return answer(response);
}

// Run `fn` at most once per `ms`, the last call winning (for refreshes driven by events).
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = () => {
    timer = null;
    if (again) {
      again = false;
      timer = setTimeout(run, ms);
      fn();
    }
  };
  return () => {
    again = true;
    if (timer === null) run();
  };
}

// Live updates: `onEvent(event)` for each store event, `onReset()` when the page should load
// afresh (first connection, or after missing too much). EventSource reconnects by itself and
// sends Last-Event-ID, so the server replays what was missed.
export function live(onEvent, onReset) {
  const badge = document.getElementById("live");
  const show = (on, title) => {
    if (!badge) return;
    badge.className = on ? "live on" : "live off";
    badge.title = title;
  };
  const source = new EventSource("/ui/events");
  source.onopen = () => show(true, "live updates: connected");
  source.onerror = () => show(false, "live updates: reconnecting");
  source.addEventListener("reset", () => onReset());
  source.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    onEvent(event);
  };
  return source;
}

// --- formatting -----------------------------------------------------------------------------
export function fmtTime(ts) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : `${d.toISOString().slice(0, 10)} ${time}`;
}

export function fmtAgo(ts) {
  if (!ts) return "";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function eventChange(e) {
  if (!e.from_state && !e.to_state) return "";
  return `${e.from_state || "·"} → ${e.to_state || "·"}`;
}

export function jobLink(id) {
  return id ? h("a", { href: `/ui/jobs/${Number(id)}` }, String(id)) : "";
}

// Decodes base64 log chunks into text, keeping multi-byte characters split between chunks.
export function logDecoder() {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  return (b64) => {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
    return decoder.decode(bytes, { stream: true });
  };
}
