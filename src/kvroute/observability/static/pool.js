// kvroute live pool page. Every value is written with textContent (never innerHTML), so a
// model name, adapter or header that contains markup shows as text.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function renderEndpoints(eps) {
  const body = document.querySelector("#endpoints tbody");
  const rows = [];
  for (const e of eps) {
    const tr = el("tr");
    tr.dataset.endpoint = e.name;
    tr.appendChild(el("td", e.name, "text name"));
    tr.appendChild(el("td", e.address, "text"));
    tr.appendChild(el("td", e.waiting, "waiting"));
    tr.appendChild(el("td", e.running, "running"));
    const kv = el("td", pct(e.kv_cache_usage), "kv");
    const bar = el("span", null, "bar");
    bar.style.width = Math.round(60 * Math.min(1, e.kv_cache_usage)) + "px";
    kv.appendChild(bar);
    tr.appendChild(kv);
    const adapters = (e.active_adapters.join(", ") || "–") + " / " + (e.waiting_adapters.join(", ") || "–");
    tr.appendChild(el("td", adapters, "text adapters"));
    tr.appendChild(el("td", e.inflight, "inflight"));
    tr.appendChild(el("td", e.inflight_tokens, "inflight-tokens"));
    tr.appendChild(el("td", e.prefix_blocks === null ? "–" : e.prefix_blocks, "prefix-blocks"));
    tr.appendChild(el("td", e.scraped_ago_s === null ? "never" : e.scraped_ago_s.toFixed(2) + " s ago"));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function chart(id, values, label) {
  const c = document.getElementById(id);
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const v = values.filter((x) => typeof x === "number");
  const lab = document.getElementById(id + "-label");
  if (!v.length) { lab.textContent = "no data yet"; return; }
  const max = Math.max(...v) || 1;
  g.strokeStyle = "#4a7bd0";
  g.beginPath();
  v.forEach((x, i) => {
    const px = v.length === 1 ? 0 : (i / (v.length - 1)) * (c.width - 4) + 2;
    const py = c.height - 2 - (x / max) * (c.height - 4);
    if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
  });
  g.stroke();
  const sorted = [...v].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  lab.textContent = label + ": p50 " + (1000 * q(0.5)).toFixed(1) + " ms, p90 " +
    (1000 * q(0.9)).toFixed(1) + " ms, max " + (1000 * max).toFixed(1) + " ms (" + v.length + " requests)";
}

function renderDecisions(ds) {
  const list = document.getElementById("decisions");
  const items = [];
  for (const d of ds) {
    const li = el("li", null, "decision");
    const head = d.model + (d.target_model !== d.model ? " → " + d.target_model : "") +
      " (priority " + d.priority + ", " + d.fairness_id + ") → " + d.pick +
      (d.winning_score === null ? "" : " score " + d.winning_score) +
      (d.fallbacks.length ? "; fallbacks " + d.fallbacks.join(", ") : "");
    li.appendChild(el("div", head, "head"));
    for (const [profile, steps] of Object.entries(d.profiles)) {
      for (const s of steps) {
        let text = profile + " · " + s.kind + " " + s.plugin;
        if (s.weight !== undefined) text += " ×" + s.weight;
        if (s.survivors) text += ": kept " + s.survivors.join(", ");
        if (s.scores) text += ": " + Object.entries(s.scores).map(([k, v]) => k + "=" + v).join(", ");
        if (s.picked) text += ": picked " + s.picked.join(", ");
        if (s.notes) text += " (" + s.notes.join("; ") + ")";
        li.appendChild(el("div", text, "steps"));
      }
    }
    for (const n of d.notes) li.appendChild(el("div", n, "steps"));
    items.push(li);
  }
  list.replaceChildren(...items);
}

function render(state) {
  document.getElementById("pool").textContent = state.pool;
  renderEndpoints(state.endpoints);
  renderDecisions(state.decisions);
  chart("ttft", state.completions.map((c) => c.ttft_s), "TTFT");
  chart("tpot", state.completions.map((c) => c.tpot_s), "TPOT");
}

const status = document.getElementById("status");
const source = new EventSource("/pool/events");
source.onmessage = (ev) => {
  render(JSON.parse(ev.data));
  status.textContent = "live · " + new Date().toLocaleTimeString();
  status.className = "status live";
};
source.onerror = () => { status.textContent = "disconnected, retrying…"; status.className = "status"; };
