// SyncBridge operator console. Plain modern JavaScript, no library, no build step.
// Rules: the token lives in sessionStorage only and travels only as a Bearer
// header; everything from the server is put on the page with textContent (never
// innerHTML), so a state value like <img src=x onerror=...> shows as text.
"use strict";

const TOKEN_KEY = "syncbridge.console.token";
const MAX_CHANGES = 200;
const MAX_POINTS = 300;

const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let overviewAbort = null;
let sessionAbort = null;
const series = { connections: [], sessions: [], deliveries: [] };

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- small DOM helpers (text only) -------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    tr.append(td);
  }
  return tr;
}

function clock(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

function ago(unixSeconds) {
  if (!unixSeconds) return "–";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unixSeconds));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

const CLOSE_NAMES = { 4000: "slow consumer", 4402: "token revoked", 4403: "kicked", 4429: "rate limit" };

function closeText(code) {
  if (code === null || code === undefined) return "closed by the client";
  return `${code} ${CLOSE_NAMES[code] || ""}`.trim();
}

// --- HTTP with the Bearer token ----------------------------------------------

async function call(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    cache: "no-store",
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      // not JSON: keep the status
    }
    throw new HttpError(response.status, message);
  }
  return response;
}

// Server-sent events read from a fetch stream: EventSource cannot send a header.
async function stream(path, handlers, signal) {
  const response = await call(path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data && handlers[event]) handlers[event](JSON.parse(data));
    }
  }
}

// Keep a feed open: reconnect after a drop, stop on 401/403 or when aborted.
async function follow(path, handlers, controller, onRefused) {
  let delay = 500;
  while (!controller.signal.aborted) {
    try {
      await stream(path, handlers, controller.signal);
      delay = 500;
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
        onRefused(error);
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// --- sign-in -------------------------------------------------------------------

async function signIn(candidate) {
  token = candidate;
  const me = await (await call("/console/api/me")).json();
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("whoami").textContent = `${me.user_id} (${me.roles.join(", ")})`;
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  startOverview();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  for (const controller of [overviewAbort, sessionAbort]) if (controller) controller.abort();
  overviewAbort = sessionAbort = null;
  $("main").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("whoami").textContent = "";
  $("health-status").textContent = "signed out";
  $("health-status").className = "pill";
  $("signin-error").textContent = message || "";
}

// --- overview -----------------------------------------------------------------

function startOverview() {
  overviewAbort = new AbortController();
  follow(
    "/console/api/overview",
    { history: onHistory, overview: onOverview },
    overviewAbort,
    (error) => signOut(`Signed out: ${error.message}`),
  );
}

function onHistory(data) {
  for (const name of Object.keys(series)) series[name].length = 0;
  for (const sample of data.samples) addSample(sample);
  drawCharts();
}

function addSample(sample) {
  const last = series.connections[series.connections.length - 1];
  if (last && last.at >= sample.at) return;
  series.connections.push({ at: sample.at, v: sample.connections });
  series.sessions.push({ at: sample.at, v: sample.sessions });
  series.deliveries.push({ at: sample.at, v: sample.deliveries_per_s });
  for (const name of Object.keys(series)) {
    if (series[name].length > MAX_POINTS) series[name].shift();
  }
}

function onOverview(data) {
  const health = data.health;
  const pill = $("health-status");
  pill.textContent = health.status;
  pill.className = `pill ${health.status === "ok" ? "ok" : "bad"}`;
  $("health-detail").textContent =
    `${health.status}, version ${health.version}, up ${Math.round(health.uptime_seconds)} s, ` +
    `${health.authenticated_connections}/${health.active_connections} connections authenticated`;
  const store = health.store;
  $("store-detail").textContent =
    `${store.backend}${store.address ? ` at ${store.address}` : ""}: ${store.status}` +
    (store.latency_ms !== undefined ? `, ${store.latency_ms} ms` : "") +
    (store.error ? ` (${store.error})` : "");
  for (const sample of data.samples) addSample(sample);
  $("now-connections").textContent = `${health.active_connections} / ${data.connection_limit}`;
  $("now-sessions").textContent = health.sessions;
  const newest = series.deliveries[series.deliveries.length - 1];
  $("now-deliveries").textContent = newest ? newest.v : "–";
  drawCharts();

  const hot = $("hot").tBodies[0];
  hot.replaceChildren(
    ...data.hot.map((s) => {
      const open = el("button", s.session_id, "link");
      open.type = "button";
      open.addEventListener("click", () => openSession(s.session_id));
      return row([open, s.devices, s.version, s.rate]);
    }),
  );

  const refusals = [];
  for (const [kind, counts] of Object.entries(data.refusals)) {
    for (const [reason, count] of Object.entries(counts)) {
      if (count > 0) refusals.push(row([kind, kind === "closes" ? closeText(Number(reason)) : reason, count]));
    }
  }
  $("refusals").tBodies[0].replaceChildren(...refusals);

  $("closes").replaceChildren(
    ...data.closes.map((c) =>
      el("li", `${clock(c.at)} ${closeText(c.code)}: session ${c.session_id}, device ${c.device_id}`),
    ),
  );
}

const SVG = "http://www.w3.org/2000/svg";

function drawCharts() {
  draw($("chart-connections"), series.connections);
  draw($("chart-sessions"), series.sessions);
  draw($("chart-deliveries"), series.deliveries);
}

function draw(svg, points) {
  const width = 300;
  const height = 60;
  const max = Math.max(1, ...points.map((p) => p.v));
  const line = document.createElementNS(SVG, "polyline");
  const step = points.length > 1 ? width / (points.length - 1) : width;
  line.setAttribute(
    "points",
    points.map((p, i) => `${(i * step).toFixed(1)},${(height - (p.v / max) * (height - 4) - 2).toFixed(1)}`).join(" "),
  );
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "currentColor");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  const label = document.createElementNS(SVG, "title");
  label.textContent = `max ${max}`;
  svg.replaceChildren(label, line);
}

// --- one session ----------------------------------------------------------------

function openSession(sessionId) {
  if (sessionAbort) sessionAbort.abort();
  $("session-input").value = sessionId;
  $("session-error").textContent = "";
  $("session").hidden = false;
  $("session-title").textContent = sessionId;
  $("session-version").textContent = "–";
  $("devices").tBodies[0].replaceChildren();
  $("changes").tBodies[0].replaceChildren();
  $("session-closes").replaceChildren();
  $("state").textContent = "";
  sessionAbort = new AbortController();
  follow(
    `/console/api/session?session_id=${encodeURIComponent(sessionId)}`,
    {
      state: onState,
      changes: onChanges,
      gap: (d) => onChanges([{ version: d.version, device_id: "(history no longer reaches back)", key: "", operation: "", at: null }]),
      devices: (d) => onDevices(sessionId, d),
      closes: onSessionCloses,
      alive: (d) => ($("session-alive").textContent = `live at ${clock(d.at)}`),
      store: (d) => ($("session-error").textContent = `store: ${d.error}`),
    },
    sessionAbort,
    (error) => {
      $("session").hidden = true;
      $("session-error").textContent = error.message;
    },
  );
}

function onState(data) {
  $("session-version").textContent = data.version;
  $("state").textContent = JSON.stringify(data.state, null, 2);
}

function onChanges(changes) {
  const body = $("changes").tBodies[0];
  for (const c of changes) {
    body.prepend(row([c.version, c.device_id, c.key, c.operation, clock(c.at)]));
  }
  while (body.rows.length > MAX_CHANGES) body.deleteRow(-1);
}

function onDevices(sessionId, data) {
  $("session-rate").textContent = data.rate;
  $("devices").tBodies[0].replaceChildren(
    ...data.devices.map((d) => {
      const kick = el("button", "Kick", "danger");
      kick.type = "button";
      kick.dataset.device = d.device_id;
      kick.addEventListener("click", () => kickDevice(sessionId, d.device_id));
      const revoke = el("button", "Revoke", "danger");
      revoke.type = "button";
      revoke.dataset.device = d.device_id;
      revoke.dataset.action = "revoke";
      revoke.addEventListener("click", () => revokeDevice(sessionId, d.device_id));
      const buttons = el("span");
      buttons.append(kick, " ", revoke);
      const idle = d.connections.map((c) => `#${c.connection} idle ${c.idle_seconds} s`).join(", ");
      const kind = [d.device_type, d.device_name].filter(Boolean).join(" / ");
      const tr = row([d.device_id, d.user_id, kind || null, ago(d.last_seen), idle || "(other process)", buttons]);
      tr.dataset.device = d.device_id;
      return tr;
    }),
  );
}

function onSessionCloses(closes) {
  const list = $("session-closes");
  for (const c of closes) list.prepend(el("li", `${clock(c.at)} device ${c.device_id}: ${closeText(c.code)}`));
}

// --- actions ---------------------------------------------------------------------

// Resolves true only for the Confirm button; Cancel and Escape both close the dialog
// with another returnValue, so no answer is ever left pending.
function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function act(text, path, options) {
  if (!(await confirmAction(text))) return;
  const output = $("action-output");
  output.textContent = `${text.replace(/\?$/, "")}: running…`;
  try {
    const response = await call(path, options);
    output.textContent = await response.text();
  } catch (error) {
    output.textContent = `refused: ${error.message}`;
  }
}

function kickDevice(sessionId, deviceId) {
  const query = `session_id=${encodeURIComponent(sessionId)}&device_id=${encodeURIComponent(deviceId)}`;
  return act(`Kick device ${deviceId} of session ${sessionId} (close 4403)?`, `/admin/kick?${query}`, {
    method: "POST",
  });
}

function revokeDevice(sessionId, deviceId) {
  const query = `session_id=${encodeURIComponent(sessionId)}&device_id=${encodeURIComponent(deviceId)}`;
  return act(
    `Revoke every token of device ${deviceId} of session ${sessionId} issued until now, and close its sockets (4402)?`,
    `/admin/revoke?${query}`,
    { method: "POST" },
  );
}

// --- wiring ------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-error").textContent = "";
    try {
      await signIn($("token").value.trim());
      $("token").value = "";
    } catch (error) {
      token = null;
      $("signin-error").textContent =
        error.status === 403 ? `Refused: ${error.message} (not an operator token)` : `Refused: ${error.message}`;
    }
  });
  $("signout").addEventListener("click", () => signOut());
  $("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
  $("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
  $("session-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("session-input").value.trim();
    if (id) openSession(id);
  });
  $("dump-tasks").addEventListener("click", () => act("Dump the server's tasks?", "/debug/tasks"));
  $("profile").addEventListener("click", () => {
    const seconds = $("profile-seconds").value;
    act(`Profile the server's CPU for ${seconds} s?`, `/debug/profile?seconds=${encodeURIComponent(seconds)}`);
  });
  if (token) signIn(token).catch((error) => signOut(`Signed out: ${error.message}`));
});
