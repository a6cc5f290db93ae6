// recorderpi web page: what every page shares (navigation, API calls, login, formatting).
// Plain browser JavaScript, no build step, nothing loaded from the internet. Text that comes
// from recordings (titles, tags, peers' names) is only ever set with textContent.
"use strict";

const rp = {
  session: { logged_in: false, csrf: null, controls: false, open_read: true },
  loginWaiters: [],
};

rp.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

rp.fmtDuration = function (seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
};

rp.fmtWhen = function (iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
};

rp.fmtAgo = function (iso) {
  const d = new Date(iso);
  if (!iso || isNaN(d) || d.getFullYear() < 2000) return "never";
  const s = (Date.now() - d.getTime()) / 1000;
  if (s < 90) return "just now";
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
};

rp.fmtMB = function (mb) {
  if (mb === null || mb === undefined || mb < 0) return "unknown";
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${mb} MB`;
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// One API call; controls (method POST) carry the session's CSRF token and ask for the
// password once when the session is missing.
rp.api = async function (path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json" };
  let body;
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (rp.session.csrf) headers["X-CSRF-Token"] = rp.session.csrf;
    body = JSON.stringify(options.body || {});
  }
  const res = await fetch(path, { method, headers, body, credentials: "same-origin" });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.ok) return data;
  const message = (data && data.error) || `${res.status} ${res.statusText}`;
  if (res.status === 401 && !options.noLogin) {
    await rp.askLogin(message);
    return rp.api(path, { ...options, noLogin: true });
  }
  throw new ApiError(res.status, message);
};

rp.loadSession = async function () {
  try { rp.session = await rp.api("/api/session", { noLogin: true }); } catch (e) { /* offline */ }
  rp.showSession();
};

rp.showSession = function () {
  const who = document.getElementById("who");
  if (!who) return;
  who.replaceChildren();
  if (rp.session.logged_in) {
    who.append(rp.el("button", { class: "link", id: "logout", text: "Log out", onclick: async () => {
      try { await rp.api("/api/logout", { method: "POST", noLogin: true }); } catch (e) { /* gone */ }
      rp.session.logged_in = false; rp.session.csrf = null; rp.showSession();
    } }));
  } else if (rp.session.controls) {
    who.append(rp.el("button", { class: "link", id: "login-open", text: "Log in",
      onclick: () => rp.askLogin("").catch(() => {}) }));
  }
};

// The password dialog; resolves once logged in, rejects when cancelled.
rp.askLogin = function (why) {
  const dialog = document.getElementById("login");
  const note = document.getElementById("login-note");
  note.textContent = why && !/log in/i.test(why) ? why : "";
  document.getElementById("login-error").textContent = "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("password").focus();
  return new Promise((resolve, reject) => rp.loginWaiters.push({ resolve, reject }));
};

rp.buildChrome = function () {
  const page = document.body.dataset.page;
  const link = (href, name, label) =>
    rp.el("a", { href, class: page === name ? "here" : null, "aria-current": page === name ? "page" : null }, label);
  document.body.prepend(rp.el("header", {},
    rp.el("nav", {}, link("/", "now", "Now"), link("/recordings", "recordings", "Recordings"),
      link("/mesh", "mesh", "Mesh")),
    rp.el("span", { id: "who" })));
  const form = rp.el("form", { method: "dialog", id: "login-form" },
    rp.el("h2", { text: "Password" }),
    rp.el("p", { id: "login-note", class: "muted" }),
    rp.el("p", { class: "muted", text: "The controls need the device's web password." }),
    rp.el("input", { type: "password", id: "password", name: "password", autocomplete: "current-password",
      required: true, "aria-label": "password" }),
    rp.el("p", { id: "login-error", class: "error", role: "alert" }),
    rp.el("div", { class: "row" },
      rp.el("button", { type: "submit", id: "login-submit", class: "primary", text: "Log in" }),
      rp.el("button", { type: "button", id: "login-cancel", text: "Cancel" })));
  const dialog = rp.el("dialog", { id: "login" }, form);
  document.body.append(dialog);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("password");
    try {
      const res = await rp.api("/api/login", { method: "POST", body: { password: input.value }, noLogin: true });
      rp.session.logged_in = true; rp.session.csrf = res.csrf;
      input.value = "";
      dialog.close();
      rp.showSession();
      rp.loginWaiters.splice(0).forEach((w) => w.resolve());
    } catch (e) {
      document.getElementById("login-error").textContent =
        e.status === 401 ? "Wrong password." : e.message;
    }
  });
  document.getElementById("login-cancel").addEventListener("click", () => {
    dialog.close();
    rp.loginWaiters.splice(0).forEach((w) => w.reject(new ApiError(401, "not logged in")));
  });
};

// A short message at the bottom of the screen (what a control did, or why it failed).
rp.toast = function (text, isError) {
  let box = document.getElementById("toast");
  if (!box) { box = rp.el("div", { id: "toast", role: "status" }); document.body.append(box); }
  box.textContent = text;
  box.className = isError ? "error show" : "show";
  clearTimeout(rp.toastTimer);
  rp.toastTimer = setTimeout(() => { box.className = ""; }, 4000);
};

// Run `fn` every `ms` while the page is visible (phones keep hidden tabs cheap).
rp.every = function (ms, fn) {
  let timer = null;
  const run = () => { if (!document.hidden) fn(); };
  const start = () => { clearInterval(timer); timer = setInterval(run, ms); };
  document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
  run();
  start();
};

rp.buildChrome();
rp.ready = rp.loadSession();
