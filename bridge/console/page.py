"""The console page: one HTML document with its CSS and JavaScript inline.

No build step and nothing fetched from elsewhere: the page loads ``/v1/console/state`` through
its event stream, applies ``update`` messages as they come, and fetches a call's timeline when
the operator clicks the call (again when that call changes, at most twice a second). A token
given as ``?token=`` in the page's address is passed on to those requests.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ari-bridge console</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{display:flex;gap:18px;align-items:center;padding:8px 16px;background:#1d2330;color:#fff}
header h1{font-size:15px;margin:0}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:5px}
.up{background:#2fbf71}.down{background:#e5484d}
main{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:12px;padding:12px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 10px;
 overflow:auto}
section h2{font-size:13px;margin:0 0 6px;color:#4a5568}
#live-section{max-height:46vh}#ended-section{max-height:26vh}
#timeline-section{grid-row:span 3;max-height:calc(100vh - 70px)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eef0f3;white-space:nowrap}
th{font-weight:600;color:#4a5568;position:sticky;top:0;background:#fff}
tbody tr{cursor:pointer}tbody tr:hover{background:#f0f6ff}
tr.selected{background:#dbeafe}
.mono{font-family:ui-monospace,monospace;font-size:12px}
.state-ringing{color:#b7791f}.state-running{color:#2f855a}.state-ending{color:#c05621}
.bad{color:#c53030}.ok{color:#2f855a}.muted{color:#8a94a6}
ol#timeline{list-style:none;margin:0;padding:0}
ol#timeline li{border-left:3px solid #cbd5e0;padding:3px 8px;margin:3px 0}
li.kind-webhook{border-color:#805ad5!important}li.kind-action{border-color:#3182ce!important}
li.kind-ari{border-color:#a0aec0!important}li.kind-state{border-color:#38a169!important}
li.kind-leg{border-color:#dd6b20!important}li.kind-note{border-color:#e53e3e!important}
.t{color:#718096;font-family:ui-monospace,monospace;font-size:11px;margin-right:6px}
pre{white-space:pre-wrap;word-break:break-all;background:#f7f8fa;margin:3px 0;padding:4px;
 font-size:11px;max-height:240px;overflow:auto}
</style></head>
<body>
<header><h1>ari-bridge console</h1>
<span id="ari"><span class="dot down"></span>ARI: connecting</span>
<span id="counts"></span><span id="feed" class="muted">live: connecting</span></header>
<main>
<section id="live-section"><h2>Live calls (<span id="live-count">0</span>)</h2>
<table id="live-calls"><thead><tr><th>uuid</th><th>from</th><th>to</th><th>application</th>
<th>state</th><th>action</th><th>duration</th><th>legs</th></tr></thead><tbody></tbody></table>
</section>
<section id="timeline-section"><h2 id="timeline-title">Timeline: click a call</h2>
<ol id="timeline"></ol></section>
<section id="ended-section"><h2>Recently ended</h2>
<table id="ended-calls"><thead><tr><th>uuid</th><th>from</th><th>to</th><th>application</th>
<th>status</th><th>why</th><th>cause</th><th>duration</th><th>ended</th></tr></thead>
<tbody></tbody></table>
</section>
<section><h2>Agents</h2>
<table id="agents"><thead><tr><th>agent</th><th>state</th><th>calls</th><th>sticky for</th>
<th>device</th></tr></thead><tbody></tbody></table></section>
<section><h2>Webhooks</h2>
<table id="webhooks"><thead><tr><th>url</th><th>kind</th><th>last status</th>
<th>latency ms</th><th>avg ms</th><th>requests</th><th>failures</th><th>last error</th>
</tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const S = {live: new Map(), ended: new Map(), agents: [], webhooks: new Map(), ari: {},
           counts: {}, skew: 0};
let selected = null, shownSeq = -1, fetching = false, dirty = false;
const esc = v => String(v ?? "").replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const now = () => Date.now() / 1000 + S.skew;
const dur = s => { s = Math.max(0, Math.round(s)); const m = Math.floor(s / 60);
  return m ? m + "m" + String(s % 60).padStart(2, "0") + "s" : s + "s"; };
const clock = t => new Date(t * 1000).toISOString().slice(11, 23);
const short = u => esc(String(u).slice(0, 8));

function upsertCall(c) {
  if (c.state === "ended") { S.live.delete(c.uuid); S.ended.set(c.uuid, c); }
  else S.live.set(c.uuid, c);
}
function applyState(s) {
  S.skew = s.now - Date.now() / 1000;
  S.live = new Map(); S.ended = new Map();
  s.calls.forEach(upsertCall);
  s.ended.slice().reverse().forEach(upsertCall);
  S.agents = s.agents; S.ari = s.ari; S.counts = s.counts;
  S.webhooks = new Map(s.webhooks.map(w => [w.url, w]));
  changed();
}
function applyUpdate(u) {
  if (u.now) S.skew = u.now - Date.now() / 1000;
  (u.calls || []).forEach(upsertCall);
  (u.removed || []).forEach(id => { S.live.delete(id); S.ended.delete(id); });
  (u.webhooks || []).forEach(w => S.webhooks.set(w.url, w));
  if (u.agents) S.agents = u.agents;
  if (u.ari) S.ari = u.ari;
  if (u.counts) S.counts = u.counts;
  changed();
}
function changed() {
  if (!dirty) { dirty = true; requestAnimationFrame(render); }
  const c = selected && (S.live.get(selected) || S.ended.get(selected));
  if (c && c.seq !== shownSeq) loadTimeline();
}
function legs(c) {
  return c.legs.map(l => esc(l.to) + " " + esc(l.status)).join(", ");
}
function render() {
  dirty = false;
  const a = S.ari;
  document.getElementById("ari").innerHTML = '<span class="dot ' + (a.connected ? "up" : "down")
    + '"></span>ARI: ' + (a.connected ? "connected" : "disconnected"
    + (a.last_error ? " (" + esc(a.last_error) + ")" : ""))
    + (a.links ? " &middot; " + a.links.map(l => esc(l.name) + (l.connected ? " up" : " down")
      + (l.adopted ? " (adopted)" : "")).join(", ") : "");
  document.getElementById("counts").textContent = "sessions: " + (S.counts.live_sessions ?? 0)
    + ", started: " + (S.counts.calls_started ?? 0);
  document.getElementById("live-count").textContent = S.live.size;
  const live = [...S.live.values()].sort((x, y) => x.started - y.started);
  document.querySelector("#live-calls tbody").innerHTML = live.map(c =>
    '<tr data-uuid="' + esc(c.uuid) + '"' + (c.uuid === selected ? ' class="selected"' : "")
    + '><td class="mono" title="' + esc(c.uuid) + '">' + short(c.uuid) + "</td><td>"
    + esc(c.from) + "</td><td>" + esc(c.to) + "</td><td>" + esc(c.application)
    + '</td><td class="state state-' + esc(c.state) + '">' + esc(c.state)
    + '</td><td class="action">' + esc(c.action ?? "") + '</td><td class="duration" data-start="'
    + c.started + '">' + dur(now() - c.started) + "</td><td>" + legs(c) + "</td></tr>").join("");
  const ended = [...S.ended.values()].sort((x, y) => y.ended - x.ended);
  document.querySelector("#ended-calls tbody").innerHTML = ended.map(c =>
    '<tr data-uuid="' + esc(c.uuid) + '"' + (c.uuid === selected ? ' class="selected"' : "")
    + '><td class="mono" title="' + esc(c.uuid) + '">' + short(c.uuid) + "</td><td>"
    + esc(c.from) + "</td><td>" + esc(c.to) + "</td><td>" + esc(c.application)
    + '</td><td class="status">' + esc(c.final_status) + '</td><td class="why">'
    + esc(c.end_reason) + "</td><td>" + esc(c.hangup_cause)
    + "</td><td>" + dur(c.duration_s) + "</td><td>" + clock(c.ended) + "</td></tr>").join("");
  document.querySelector("#agents tbody").innerHTML = S.agents.map(g =>
    '<tr><td class="mono">' + esc(g.agent) + '</td><td class="' + (g.busy ? "bad" : "ok") + '">'
    + (g.busy ? "busy" : "free") + "</td><td>" + g.calls.map(short).join(", ") + "</td><td>"
    + g.sticky_callers.map(esc).join(", ") + "</td><td>" + (g.device ? esc(g.device) + " "
    + (g.registered === "online" ? '<span class="ok">registered</span>'
       : '<span class="muted">' + esc(g.registered) + "</span>") : "") + "</td></tr>").join("");
  const hooks = [...S.webhooks.values()].sort((x, y) => (y.last_at || 0) - (x.last_at || 0));
  document.querySelector("#webhooks tbody").innerHTML = hooks.map(w =>
    '<tr><td class="mono">' + esc(w.url) + "</td><td>" + esc(w.kind) + '</td><td class="'
    + (w.last_status >= 200 && w.last_status < 300 ? "ok" : "bad") + '">'
    + esc(w.last_status ?? "none") + "</td><td>" + esc(w.last_latency_ms) + "</td><td>"
    + esc(w.avg_latency_ms) + "</td><td>" + w.requests + '</td><td class="'
    + (w.failures ? "bad" : "") + '">' + w.failures + "</td><td>" + esc(w.last_error ?? "")
    + "</td></tr>").join("");
}
function describe(e) {
  switch (e.kind) {
  case "state":
    return "state " + esc(e.from) + " &rarr; <b>" + esc(e.to) + "</b> (" + esc(e.why) + ")";
  case "action": return e.phase === "start"
    ? "action <b>" + esc(e.action) + "</b> #" + e.position + " started"
      + (e.ncco ? "<pre>" + esc(JSON.stringify(e.ncco, null, 1)) + "</pre>" : "")
    : "action <b>" + esc(e.action) + "</b> #" + e.position + " " + esc(e.outcome);
  case "webhook": { const r = e.response, ok = r.status >= 200 && r.status < 300 && !r.error;
    return "webhook <b>" + esc(e.webhook) + "</b> " + esc(e.method) + " " + esc(e.url)
      + ' &rarr; <span class="' + (ok ? "ok" : "bad") + '">' + esc(r.status ?? "no answer")
      + (r.error ? " " + esc(r.error) : "") + "</span> " + r.elapsed_ms + " ms"
      + (r.attempts > 1 ? " (" + r.attempts + " attempts)" : "")
      + "<details><summary>request / response</summary><pre>request: "
      + esc(JSON.stringify(e.request, null, 1)) + "</pre><pre>response ("
      + esc(r.content_type ?? "") + "): " + esc(r.body) + "</pre></details>"; }
  case "leg": return "leg " + short(e.leg) + " to " + esc(e.to) + ": <b>" + esc(e.status) + "</b>";
  case "note": return '<span class="bad">' + esc(e.level) + ": " + esc(e.text) + "</span>";
  case "ari": return "ARI <b>" + esc(e.type) + "</b> " + short(e.channel)
    + ["state", "dialstatus", "cause_txt", "digit", "playback", "recording", "bridge"]
      .filter(k => e[k] !== undefined).map(k => " " + k + "=" + esc(e[k])).join("");
  }
  return esc(JSON.stringify(e));
}
async function loadTimeline() {
  if (fetching || !selected) return;
  fetching = true;
  try {
    const r = await fetch("/v1/console/calls/" + encodeURIComponent(selected) + q);
    if (!r.ok) { document.getElementById("timeline").innerHTML = "<li>not kept</li>"; return; }
    const c = await r.json();
    if (c.uuid !== selected) return;
    shownSeq = c.seq;
    document.getElementById("timeline-title").textContent = "Timeline of " + c.uuid + " ("
      + c.from + " \\u2192 " + c.to + ", " + (c.final_status || c.state) + ")";
    document.getElementById("timeline").innerHTML = (c.entries_dropped
      ? '<li class="muted">' + c.entries_dropped + " older entries dropped</li>" : "")
      + c.timeline.map(e => '<li class="entry kind-' + esc(e.kind) + '"><span class="t">'
        + clock(e.t) + " +" + (e.t - c.started).toFixed(3) + "s</span>" + describe(e)
        + "</li>").join("");
  } finally {
    fetching = false;
    setTimeout(() => { const c = S.live.get(selected) || S.ended.get(selected);
      if (c && c.seq !== shownSeq) loadTimeline(); }, 500);
  }
}
document.addEventListener("click", ev => {
  const row = ev.target.closest("tr[data-uuid]");
  if (!row) return;
  selected = row.dataset.uuid; shownSeq = -1; render(); loadTimeline();
});
setInterval(() => document.querySelectorAll("td.duration").forEach(td =>
  td.textContent = dur(now() - Number(td.dataset.start))), 1000);
function connect() {
  const es = new EventSource("/v1/console/events" + q);
  const feed = document.getElementById("feed");
  es.addEventListener("state", e => { applyState(JSON.parse(e.data));
    feed.textContent = "live"; feed.className = "ok"; });
  es.addEventListener("update", e => applyUpdate(JSON.parse(e.data)));
  es.onerror = () => { feed.textContent = "live: reconnecting"; feed.className = "bad"; };
}
connect();
</script></body></html>
"""
