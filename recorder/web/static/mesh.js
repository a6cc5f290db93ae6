// The Mesh page: peers (connected, last seen, how much of our folder they have), yggdrasil
// addresses, folders, and the peer files the bridge quarantined with its reasons.
"use strict";

const m$ = (id) => document.getElementById(id);

function showMesh(d) {
  m$("device").textContent = `This device: ${d.device_id}`;
  const y = d.yggdrasil;
  m$("ygg").textContent = !y ? "not configured" : y.error ? `unavailable: ${y.error}`
    : `${y.address} (${y.peers.length} yggdrasil link${y.peers.length === 1 ? "" : "s"})`;
  m$("syncthing").textContent = d.syncthing_error || d.syncthing || "";
  const counts = Object.entries(d.recordings || {}).map(([o, n]) => `${n} ${o === "own" ? "own" : o.replace("peer:", "from ")}`);
  m$("counts").textContent = counts.join(", ") || "none yet";
  const bridge = (d.bridge && d.bridge.peers) || {};
  const peers = (d.peers || []).map((p) => {
    const state = p.paused ? "paused" : p.connected ? "connected" : "disconnected";
    const held = p.peer_id && bridge[p.peer_id];
    return rp.el("article", { class: `peer ${state}` },
      rp.el("div", { class: "row spread" },
        rp.el("h3", { text: p.name || p.peer_id || p.syncthing_id.slice(0, 7) }),
        rp.el("span", { class: `badge ${state}`, text: state })),
      rp.el("p", { class: "muted small", text: p.connected ? `connected from ${p.address || "?"}`
        : `last seen ${rp.fmtAgo(p.last_seen)}` }),
      rp.el("p", { text: p.completion === null ? "does not share our folder"
        : `has ${Math.floor(p.completion)}% of our recordings` }),
      held ? rp.el("p", { class: "small", text: `${held.imported} imported, ${held.pending} waiting, ${held.quarantined} quarantined` }) : null,
      (p.yggdrasil || []).length ? rp.el("p", { class: "muted small mono", text: `yggdrasil ${p.yggdrasil.join(", ")}` }) : null);
  });
  m$("peers").replaceChildren(...(peers.length ? peers : [rp.el("p", { class: "muted", text: "No peers yet (recorder mesh add-peer)." })]));
  m$("folders").replaceChildren(...(d.folders || []).map((f) => rp.el("p", {},
    rp.el("strong", { text: f.own ? "ours" : f.owner }), ` ${f.type}, ${f.state}, ${Math.floor(f.completion || 0)}% complete` +
      (f.need_files ? `, ${f.need_files} files to come` : "") + (f.errors ? `, ${f.errors} errors` : ""))));
  const q = (d.bridge && d.bridge.quarantined) || [];
  m$("quarantine").replaceChildren(...(q.length ? q.map((item) => rp.el("li", {},
    rp.el("span", { class: "mono", text: `${item.peer}/${item.path}` }), rp.el("br"),
    rp.el("span", { class: "reason", text: item.reason || "" })))
    : [rp.el("li", { class: "muted", text: "nothing quarantined" })]));
}

async function refreshMesh() {
  try { showMesh(await rp.api("/api/mesh", { noLogin: true })); }
  catch (e) { m$("syncthing").textContent = e.status === 401 ? "Log in to see the mesh." : e.message; }
}

rp.every(10000, refreshMesh);
