// llmd's status page. Plain JavaScript, no build step, nothing fetched from elsewhere.
// It reads /llmd/status every few seconds (one request per page, not per model), follows
// /models/sse for state changes and load progress as they happen, and acts through the
// router's own POST /models/load and /models/unload, so API keys apply to it.
"use strict";

const POLL_MS = 2000;
const REFRESH_DEBOUNCE_MS = 300;
const EVENTS_KEPT = 40;
const STARTING = ["downloading", "estimating", "queued", "loading"];
const KEY_ITEM = "llmd-api-key"; // sessionStorage: this tab only, never a cookie or the URL

const page = {
  key: sessionStorage.getItem(KEY_ITEM) || "",
  keyRequired: false,
  models: new Map(), // id -> the model's last description
  cards: new Map(), // id -> its card's elements
  events: [],
  rate: null, // requests per second between the last two reads
  last: null, // the last /llmd/status
  refreshTimer: null,
  stream: null, // AbortController of the event stream
  log: null, // {id, abort} of the followed log
  started: false,
};

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  if (page.key) headers.Authorization = "Bearer " + page.key;
  return headers;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) throw new Unauthorized();
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || response.status + " " + response.statusText);
  }
  return data;
}

// ---- formatting ------------------------------------------------------------------

function size(mib) {
  if (mib === null || mib === undefined) return "–";
  return mib >= 1024 ? (mib / 1024).toFixed(1) + " GiB" : Math.round(mib) + " MiB";
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function ago(wall) {
  return wall ? duration(Date.now() / 1000 - wall) + " ago" : "never";
}

function exact(wall) {
  return wall ? new Date(wall * 1000).toLocaleString() : "";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function stateOf(model) {
  if (model.status && model.status.failed) return "failed";
  return model.state || (model.status && model.status.value) || "unloaded";
}

function stepText(load) {
  if (!load) return "";
  const d = load.download, q = load.queue, m = load.loading;
  if (load.state === "downloading" && d && d.total) {
    const eta = d.eta !== null && d.eta !== undefined ? ", " + duration(d.eta) + " left" : "";
    return "downloading " + size(d.done / 1048576) + " of " + size(d.total / 1048576) +
      " at " + size(d.rate / 1048576) + "/s" + eta;
  }
  if (load.state === "queued" && q) {
    const why = {turn: q.on ? "behind the load of " + q.on : "next in line",
                 drain: "waiting for " + q.on + " to finish its requests",
                 min_residency: "waiting for " + q.on + " to serve its clients first",
                 models_max: "waiting for a model to stop (models_max)",
                 room: "waiting for memory to free"}[q.waiting_for] || q.waiting_for;
    return "queued #" + q.position + ", " + why;
  }
  if (load.state === "loading" && m) {
    return "read in " + size(Math.min(m.resident_mib, m.expected_mib)) + " of " + size(m.expected_mib);
  }
  return load.state;
}

// ---- models ------------------------------------------------------------------------

function card(id) {
  let c = page.cards.get(id);
  if (c) return c;
  const button = (label, action, cls) => {
    const b = el("button", {type: "button", class: cls || ""}, label);
    b.addEventListener("click", () => act(action, id));
    return b;
  };
  c = {
    root: el("article", {class: "card", "data-model": id}),
    badge: el("span", {class: "badge"}),
    bar: el("progress", {max: "1", value: "0"}),
    step: el("p", {class: "step"}),
    fields: el("dl"),
    failure: el("div", {class: "failure error"}),
    load: button("Load", "load"),
    unload: button("Unload", "unload"),
    force: button("Force unload", "force", "danger"),
    logs: button("Log", "log"),
  };
  c.bar.setAttribute("aria-label", "load progress of " + id);
  c.root.append(el("div", {class: "card-head"}, el("h3", {}, id), c.badge), c.bar, c.step,
                c.fields, c.failure, el("div", {class: "actions"}, c.load, c.unload, c.force, c.logs));
  page.cards.set(id, c);
  return c;
}

function field(dl, name, value, title) {
  const dd = el("dd", {}, value);
  if (title) dd.title = title;
  dl.append(el("dt", {}, name), dd);
}

function memoryText(memory) {
  const est = memory.estimate_mib || {}, used = memory.measured_mib || {}, booked = memory.booked_mib || {};
  const devices = new Set([...Object.keys(est), ...Object.keys(used), ...Object.keys(booked)]);
  return [...devices].sort().map((d) =>
    d + ": est " + size(est[d]) + ", used " + size(used[d]) +
    (booked[d] !== undefined ? ", booked " + size(booked[d]) : "")).join("; ") || "–";
}

function renderModel(model) {
  const c = card(model.id);
  const state = stateOf(model);
  const load = STARTING.includes(model.state) ? model.load : null;
  c.badge.textContent = load ? model.state + " " + Math.floor(100 * load.progress) + " %" : state;
  c.badge.className = "badge " + (STARTING.includes(state) ? "starting" : state);
  c.bar.hidden = !load;
  if (load) c.bar.value = load.progress;
  c.step.hidden = !load;
  c.step.textContent = stepText(load);
  c.fields.replaceChildren();
  if (model.aliases && model.aliases.length) field(c.fields, "aliases", model.aliases.join(", "));
  field(c.fields, "pid / port", model.pid ? model.pid + " / " + model.port : "–");
  field(c.fields, "requests", model.leases + " in flight, " + model.waiters + " waiting");
  field(c.fields, "last used", ago(model.last_used), exact(model.last_used));
  field(c.fields, "TTL left", model.ttl_left !== null && model.ttl_left !== undefined
    ? duration(model.ttl_left) : (model.ttl ? duration(model.ttl) + " once idle" : "none"));
  field(c.fields, "pinned", model.pinned ? "yes (configuration)" : "no");
  field(c.fields, "memory", memoryText(model.memory || {}));
  const kept = model.prompt_cache;
  if (kept) {
    field(c.fields, "prompts kept", kept.tokens.toLocaleString() + " tokens in " + kept.slots +
          (kept.slots === 1 ? " slot, " : " slots, ") + kept.mib + " MiB, saved " +
          ago(kept.saved_at), exact(kept.saved_at));
  }
  c.failure.replaceChildren();
  if (model.status && model.status.failed) {
    c.failure.append(el("p", {}, "Failed: " + model.status.reason +
                          (model.status.exit_code !== null ? " (exit code " + model.status.exit_code + ")" : "")));
    if (model.status.tail && model.status.tail.length) {
      c.failure.append(el("details", {}, el("summary", {}, "last lines"),
                          el("pre", {}, model.status.tail.join("\n"))));
    }
  }
  const up = state === "loaded" || state === "draining";
  c.load.disabled = up || STARTING.includes(state);
  c.unload.disabled = !(up || STARTING.includes(state));
  c.force.disabled = !up;
}

function renderModels() {
  const box = $("models");
  if (!box.firstChild) box.append(el("div", {class: "cards"}));
  const grid = box.firstChild;
  for (const [id, c] of page.cards) {
    if (!page.models.has(id)) { c.root.remove(); page.cards.delete(id); }
  }
  for (const model of page.models.values()) {
    renderModel(model);
    const c = card(model.id);
    if (c.root.parentNode !== grid) grid.append(c.root);
  }
  if (!page.models.size) box.replaceChildren(el("p", {class: "muted"}, "No models are configured."));
}

// ---- devices and summary ------------------------------------------------------------

function renderDevices(devices) {
  const box = $("devices");
  box.replaceChildren();
  if (!devices.length) {
    box.append(el("p", {class: "muted"}, "Memory accounting is off (memory_margin_mib = 0)."));
    return;
  }
  for (const d of devices) {
    const pct = (mib) => (100 * Math.max(0, mib) / d.total_mib).toFixed(2) + "%";
    const seg = (cls, mib, label) => {
      const s = el("span", {class: cls, title: label + ": " + size(mib)});
      s.style.width = pct(mib);
      return s;
    };
    const bar = el("div", {class: "bar", role: "img", "data-device": d.id,
      "aria-label": d.name + ": models " + size(d.booked_mib) + ", others " + size(d.others_mib) +
        ", margin " + size(d.margin_mib) + ", free " + size(d.room_mib) + " of " + size(d.total_mib)},
      seg("seg-others", d.others_mib, "other programs"), seg("seg-models", d.booked_mib, "models"),
      seg("seg-margin", d.margin_mib, "margin"));
    const key = (cls, text) => el("span", {}, el("i", {class: cls}), text);
    box.append(el("div", {class: "device"},
      el("div", {class: "device-label"}, el("strong", {}, d.id + " · " + d.name),
         el("span", {}, size(d.total_mib) + " total, " + size(d.room_mib) + " free for models")),
      bar,
      el("div", {class: "legend"},
         key("seg-models", "models " + size(d.booked_mib) + " (est " + size(d.estimate_mib) +
                           ", used " + size(d.measured_mib) + ")"),
         key("seg-others", "others " + size(d.others_mib)),
         key("seg-margin", "margin " + size(d.margin_mib)),
         key("seg-free", "free " + size(d.room_mib)))));
  }
}

function renderSummary(status, connected) {
  const s = status || page.last;
  if (!s) return;
  const loaded = s.models.filter((m) => m.state === "loaded" || m.state === "draining").length;
  const rate = page.rate === null ? "–" : page.rate.toFixed(1);
  $("summary").textContent = loaded + " of " + s.models.length + " models loaded · " +
    s.in_flight + " requests in flight · " + s.waiting + " waiting · " + s.queue +
    " loads queued · " + rate + " model requests/s · " + (connected === false ? "events: reconnecting…" : "live");
}

// ---- events ---------------------------------------------------------------------------

function describeEvent(e) {
  const data = e.data || {};
  let what = e.event;
  if (data.load) what += ": " + data.load.state + " " + Math.floor(100 * data.load.progress) + " %";
  else if (data.status) what += ": " + data.status;
  if (data.status === "unloaded" && data.failed) what += " (failed: " + data.reason + ")";
  return (e.model === "*" ? "" : e.model + " · ") + what;
}

function addEvent(e) {
  const now = Date.now() / 1000;
  page.events.unshift({at: (e.data && e.data.load && e.data.load.at) || now, text: describeEvent(e)});
  page.events.length = Math.min(page.events.length, EVENTS_KEPT);
  renderEvents();
}

function renderEvents() {
  const list = $("events");
  list.replaceChildren(...page.events.map((ev) =>
    el("li", {}, el("time", {datetime: new Date(ev.at * 1000).toISOString(), title: exact(ev.at)},
                    ago(ev.at)), ev.text)));
}

function onEvent(e) {
  addEvent(e);
  const model = page.models.get(e.model);
  const data = e.data || {};
  if (model && data.load) {
    model.load = data.load;
    if (STARTING.includes(data.load.state)) model.state = data.load.state;
    renderModel(model);
  }
  // A change of state (not just progress) is worth a fresh read of everything.
  if (e.event !== "download_progress" && (data.args || e.event !== "status_change")) scheduleRefresh();
}

async function followEvents() {
  for (;;) {
    const abort = new AbortController();
    page.stream = abort;
    try {
      const response = await fetch("/models/sse", {headers: authHeaders(), signal: abort.signal});
      if (response.status === 401) return showLogin("The key was refused (401).");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      renderSummary(null, true);
      scheduleRefresh(); // whatever happened while the stream was down
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of block.split("\n")) {
            if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
          }
        }
      }
    } catch (err) {
      if (abort.signal.aborted) return;
    }
    renderSummary(null, false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- reading and acting ---------------------------------------------------------------

function scheduleRefresh() {
  if (page.refreshTimer === null) {
    page.refreshTimer = setTimeout(() => { page.refreshTimer = null; refresh(); }, REFRESH_DEBOUNCE_MS);
  }
}

async function refresh() {
  try {
    const status = await api("/llmd/status");
    if (page.last) {
      const dt = status.time - page.last.time;
      if (dt > 0) page.rate = Math.max(0, status.requests_total - page.last.requests_total) / dt;
    }
    page.last = status;
    page.models = new Map(status.models.map((m) => [m.id, m]));
    renderModels();
    renderDevices(status.devices);
    renderSummary(status);
  } catch (err) {
    if (err instanceof Unauthorized) showLogin("The key was refused (401).");
  }
}

function notice(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

async function act(action, id) {
  if (action === "log") return followLog(id);
  if (action === "force" && !confirm("Unload " + id + " now, cancelling its requests in flight?")) return;
  try {
    const path = action === "load" ? "/models/load" : "/models/unload";
    const body = {model: id};
    if (action === "force") body.force = true;
    await api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    notice("");
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin("The key was refused (401).");
    notice(action + " " + id + ": " + err.message);
  }
  scheduleRefresh();
}

async function followLog(id) {
  if (page.log) page.log.abort.abort();
  const abort = new AbortController();
  page.log = {id, abort};
  const out = $("log");
  out.textContent = "";
  $("log-title").textContent = "Log of " + id;
  $("log-panel").hidden = false;
  try {
    const response = await fetch("/llmd/logs?lines=200&model=" + encodeURIComponent(id),
                                 {headers: authHeaders(), signal: abort.signal});
    if (response.status === 401) return showLogin("The key was refused (401).");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      for (const line of lines) {
        if (line.startsWith("data: ")) out.append(JSON.parse(line.slice(6)).line + "\n");
      }
      if (atEnd) out.scrollTop = out.scrollHeight;
    }
  } catch (err) {
    if (!abort.signal.aborted) out.append("(the log stream ended)\n");
  }
}

function closeLog() {
  if (page.log) page.log.abort.abort();
  page.log = null;
  $("log-panel").hidden = true;
}

// ---- key prompt and start -----------------------------------------------------------

function showLogin(message) {
  if (page.stream) page.stream.abort();
  closeLog();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("summary").textContent = "an API key is needed";
  $("key").focus();
}

async function startApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  await refresh();
  if (!$("app").hidden && !page.started) {
    page.started = true;
    setInterval(() => { if (!$("app").hidden) refresh(); }, POLL_MS);
    // Relative times move on between reads.
    setInterval(() => {
      for (const m of page.models.values()) renderModel(m);
      renderEvents();
    }, 1000);
  }
  if (!$("app").hidden) followEvents();
}

async function main() {
  $("log-close").addEventListener("click", closeLog);
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    page.key = $("key").value.trim();
    sessionStorage.setItem(KEY_ITEM, page.key);
    $("key").value = "";
    startApp();
  });
  // Whether this llmd asks for a key, without a request that would be refused.
  const info = await fetch("/llmd/page").then((r) => r.json()).catch(() => ({}));
  page.keyRequired = !!info.key_required;
  if (page.keyRequired && !page.key) return showLogin("");
  startApp();
}

main();
