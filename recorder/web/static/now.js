// The Now page: the recorder's state at a glance, the live meter (Server-Sent Events) and the
// controls (start/stop, bookmark, live radio), which ask for the password once.
"use strict";

const now = { status: null, recording: false };
const $ = (id) => document.getElementById(id);

function showStatus(s) {
  now.status = s;
  now.recording = s.state === "recording";
  $("state").textContent = s.headline || s.state;
  $("state-card").dataset.state = s.state || "";
  showLed(s.led);
  if (!now.recording) $("elapsed").textContent = "";
  $("free").textContent = rp.fmtMB(s.free_mb) + (s.reserve_mb ? ` (${rp.fmtMB(s.reserve_mb)} kept in reserve)` : "");
  $("hours").textContent = s.hours_left === null ? "unknown" : `about ${s.hours_left} hours`;
  const b = s.storage;
  $("space").textContent = !b || b.own_mb === undefined ? "not measured yet"
    : `own ${rp.fmtMB(b.own_mb)} (${b.own_not_safe} not yet safe elsewhere), others' ` +
      `${rp.fmtMB(b.peers_mb)}, staging ${rp.fmtMB(b.staging_mb)}` +
      (b.days_left === null ? "" : `; about ${Math.round(b.days_left)} days left`);
  $("space").className = b && b.short_mb ? "warn" : "";
  $("clock").textContent = s.clock_synced ? "synchronised" : "NOT synchronised: times may be wrong";
  $("clock").className = s.clock_synced ? "" : "warn";
  $("radio").textContent = s.radio === null ? "not configured"
    : s.radio.on_air ? "ON AIR" : `off (${s.radio.state})`;
  $("radio").className = s.radio && s.radio.on_air ? "onair" : "";
  const p = s.papad;
  $("papad").textContent = !p ? "not configured"
    : `${p.delivered} registered, ${p.pending} pending, ${p.parked} parked`;
  if (p && p.parked) {
    $("papad").append(" ", rp.el("button", { id: "retry-all", class: "small", text: "Retry parked",
      onclick: () => control("/api/outbox/retry", { all: true }, "retrying parked registrations") }));
  }
  const last = s.latest;
  $("last").textContent = !last ? "none yet"
    : `${last.title || "untitled"}, ${rp.fmtWhen(last.started_at)}, ${rp.fmtDuration(last.duration)}` +
      (last.papad ? ` · papad: ${last.papad.state}` : "");
  $("source").textContent = s.source || "none";
  const problems = s.problems || [];
  $("problems-card").hidden = problems.length === 0;
  $("problems").replaceChildren(...problems.map((t) => rp.el("li", { text: t })));
  const armed = s.state === "idle" || s.state === "recording";
  $("toggle").disabled = !armed;
  $("toggle").textContent = now.recording ? "Stop" : "Start recording";
  $("toggle").className = now.recording ? "danger" : "primary";
  $("mark").disabled = !now.recording;
  $("live").hidden = s.radio === null;
  $("live").disabled = s.radio === null;
  $("live").textContent = s.radio && s.radio.on_air ? "Stop radio" : "Go live on radio";
}

function showLed(led) {
  $("led").dataset.led = led || "";
  $("led").title = `LED: ${led || "unknown"}`;
}

async function refresh() {
  try {
    showStatus(await rp.api("/api/status", { noLogin: true }));
  } catch (e) {
    $("state").textContent = e.status === 401 ? "Log in to see the recorder" : `Recorder not answering (${e.message})`;
    $("state-card").dataset.state = "unknown";
  }
}

function showLevel(level) {
  if (level.error) return;
  const db = Math.max(-60, Math.min(0, level.rms_dbfs));
  $("meter").dataset.level = String(level.rms_dbfs);
  $("meter").dataset.frames = String(level.frames);
  $("meter").setAttribute("aria-valuenow", String(Math.round(db)));
  $("meter-fill").style.width = `${((db + 60) / 60) * 100}%`;
  $("meter-fill").className = level.clipping ? "meter-fill clip" : "meter-fill";
  $("meter-text").textContent = level.clipping ? "CLIPPING: lower the gain" : `${db.toFixed(0)} dBFS`;
  if (level.state === "recording" && level.recording_seconds !== null) {
    $("elapsed").textContent = rp.fmtDuration(level.recording_seconds);
  }
  if (now.status && level.state !== now.status.state) refresh();  // started or stopped elsewhere
  showLed(level.led);
}

// The meter streams only while the page is on screen: a hidden tab gives its stream back.
function meter() {
  let source = null;
  const open = () => {
    if (source) return;
    source = new EventSource("/api/levels/stream");
    source.onmessage = (event) => showLevel(JSON.parse(event.data));
    source.onerror = () => { $("meter-text").textContent = "meter reconnecting…"; };
  };
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && source) { source.close(); source = null; } else if (!document.hidden) open();
  });
  open();
}

async function control(path, body, done) {
  try {
    const res = await rp.api(path, { method: "POST", body });
    rp.toast((res && res.message) || done);
  } catch (e) {
    rp.toast(e.message, true);
  }
  refresh();
}

$("toggle").addEventListener("click", () =>
  control(now.recording ? "/api/control/stop" : "/api/control/start", {}, now.recording ? "stopped" : "recording"));
$("mark").addEventListener("click", () => control("/api/control/mark", {}, "bookmarked"));
$("live").addEventListener("click", () =>
  control("/api/control/live", { on: !(now.status.radio && now.status.radio.on_air) }, "radio switched"));

rp.every(3000, refresh);
meter();
