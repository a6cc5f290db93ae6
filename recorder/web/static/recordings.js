// The Recordings page: this device's and peers' recordings, newest first, with search, a
// player (range requests), the waveform with bookmarks, Audio ID duplicates and papad state.
"use strict";

const rec = { page: 1, query: "", tag: "", origin: "", pages: 1 };
const byId = (id) => document.getElementById(id);

function readUrl() {
  const p = new URLSearchParams(location.search);
  rec.page = parseInt(p.get("page") || "1", 10) || 1;
  rec.query = p.get("q") || "";
  rec.tag = p.get("tag") || "";
  rec.origin = p.get("origin") || "";
  byId("q").value = rec.tag ? `#${rec.tag}` : rec.query;
  byId("origin").value = rec.origin;
}

function urlParams() {
  const p = new URLSearchParams();
  if (rec.page > 1) p.set("page", rec.page);
  if (rec.query) p.set("q", rec.query);
  if (rec.tag) p.set("tag", rec.tag);
  if (rec.origin) p.set("origin", rec.origin);
  return p.toString();
}

async function load() {
  const query = urlParams();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  try {
    show(await rp.api(`/api/recordings${query ? `?${query}` : ""}`, { noLogin: true }));
  } catch (e) {
    byId("summary").textContent = e.status === 401 ? "Log in to see the recordings." : e.message;
  }
}

function origin(item) {
  return item.origin === "own" ? "this device" : `from ${item.device_id}`;
}

// Where the audio came from: the button (no source), a phone call, an imported file.
function source(item) {
  if (item.source === "phone") return ` · phone call${item.caller ? ` from ${item.caller}` : ""}`;
  if (item.source === "import") return ` · imported${item.original_name ? ` from ${item.original_name}` : ""}`;
  return "";
}

function papadBadge(item) {
  const p = item.papad;
  if (!p) return rp.el("span", { class: "badge muted", text: "papad: not queued" });
  const badge = rp.el("span", { class: `badge papad-${p.state}`, text: `papad: ${p.state}` });
  if (p.state !== "parked") return badge;
  return rp.el("div", { class: "parked" }, badge,
    rp.el("span", { class: "reason", text: p.reason || "refused" }),
    rp.el("button", { class: "small retry", text: "Retry", onclick: async () => {
      try {
        await rp.api("/api/outbox/retry", { method: "POST", body: { id: p.id } });
        rp.toast("queued again");
        load();
      } catch (e) { rp.toast(e.message, true); }
    } }));
}

function card(item) {
  const audio = rp.el("audio", { controls: true, preload: "none", src: `/media/${item.recording_id}.ogg` });
  const canvas = rp.el("canvas", { class: "waveform", "aria-label": "waveform" });
  const seek = (at) => { audio.currentTime = at; audio.play().catch(() => {}); };
  const marks = (item.bookmarks || []).map((b) =>
    rp.el("button", { class: "chip mark", text: `⚑ ${rp.fmtDuration(b.at)}${b.label ? " " + b.label : ""}`,
      onclick: () => seek(b.at) }));
  const tags = (item.tags || []).map((t) =>
    rp.el("a", { class: "chip", href: `?tag=${encodeURIComponent(t)}`, text: `#${t}` }));
  const dup = [];
  if (item.duplicate_of) dup.push(rp.el("p", { class: "muted small" }, "Same audio as ",
    rp.el("a", { href: `#rec-${item.duplicate_of}`, text: item.duplicate_of.slice(-8) })));
  if (item.contains && item.contains.length) dup.push(rp.el("p", { class: "muted small" }, "Holds ",
    ...item.contains.flatMap((id, i) => [i ? ", " : "",
      rp.el("a", { href: `#rec-${id}`, text: id.slice(-8) })])));
  if (item.duplicates && item.duplicates.length) dup.push(rp.el("p", { class: "muted small",
    text: `${item.duplicates.length} other cop${item.duplicates.length === 1 ? "y" : "ies"} of this audio` }));
  const node = rp.el("article", { class: "card recording", id: `rec-${item.recording_id}`,
    dataset: { id: item.recording_id } },
    rp.el("div", { class: "row spread" },
      rp.el("h2", { text: item.title || "Untitled recording" }),
      rp.el("span", { class: "muted", text: rp.fmtDuration(item.duration) })),
    rp.el("p", { class: "muted small source", text: `${rp.fmtWhen(item.started_at)} · ${origin(item)}` +
      source(item) +
      (item.clock_synced === false ? " · clock was not synchronised" : "") }),
    canvas, audio,
    marks.length ? rp.el("div", { class: "chips" }, marks) : null,
    tags.length ? rp.el("div", { class: "chips" }, tags) : null,
    dup, papadBadge(item));
  lazyWaveform(canvas, audio, item.recording_id);
  return node;
}

function show(data) {
  if (!data) return;
  rec.pages = data.pages;
  rec.page = data.page;
  const what = rec.tag ? ` tagged #${rec.tag}` : rec.query ? ` matching “${rec.query}”` : "";
  byId("summary").textContent = data.note || `${data.total} recording${data.total === 1 ? "" : "s"}${what}`;
  byId("list").replaceChildren(...data.items.map(card));
  byId("pageno").textContent = `page ${data.page} of ${data.pages}`;
  byId("prev").disabled = data.page <= 1;
  byId("next").disabled = data.page >= data.pages;
}

byId("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = byId("q").value.trim();
  rec.tag = text.startsWith("#") ? text.slice(1) : "";
  rec.query = text.startsWith("#") ? "" : text;
  rec.origin = byId("origin").value;
  rec.page = 1;
  load();
});
byId("prev").addEventListener("click", () => { rec.page -= 1; load(); window.scrollTo(0, 0); });
byId("next").addEventListener("click", () => { rec.page += 1; load(); window.scrollTo(0, 0); });

readUrl();
const initial = JSON.parse(byId("initial").textContent || "null");
if (initial) show(initial); else load();
