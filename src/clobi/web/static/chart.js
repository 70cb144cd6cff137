// A small line chart drawn as inline SVG: series of [ts, value] points over a shared time axis.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];
const W = 600;
const H = 180;
const PAD = { left: 54, right: 10, top: 10, bottom: 22 };

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
}

// series: {name: [[ts, value], ...]}; draws into `container` (replacing what was there).
export function lineChart(container, series, { since, until, unit = "" } = {}) {
  const names = Object.keys(series).filter((n) => series[n].length > 0);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const legend = document.createElement("div");
  legend.className = "legend";
  const all = names.flatMap((n) => series[n]);
  const t0 = since ?? Math.min(...all.map((p) => p[0]));
  const t1 = until ?? Math.max(...all.map((p) => p[0]));
  const top = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const x = (t) => PAD.left + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  root.append(svg("line", { class: "axis", x1: PAD.left, y1: y(0), x2: W - PAD.right, y2: y(0) }));
  for (const v of [0, top / 2, top]) {
    root.append(svg("text", { x: PAD.left - 4, y: y(v) + 3, "text-anchor": "end" }, `${+v.toPrecision(3)}${unit}`));
    root.append(svg("line", { class: "axis", x1: PAD.left, y1: y(v), x2: W - PAD.right, y2: y(v), "stroke-dasharray": "2 3" }));
  }
  for (const [t, anchor] of [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]]) {
    root.append(svg("text", { x: x(t), y: H - 6, "text-anchor": anchor }, clock(t)));
  }
  if (names.length === 0) {
    root.append(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
  }
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const points = series[name].filter((p) => p[0] >= t0 && p[0] <= t1);
    const d = points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    if (d) root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 1.6 }));
    const swatch = document.createElement("span");
    swatch.className = `swatch c${i % COLORS.length}`;
    const label = document.createElement("span");
    label.append(swatch, document.createTextNode(name));
    legend.append(label);
  });
  container.replaceChildren(root, legend);
}
