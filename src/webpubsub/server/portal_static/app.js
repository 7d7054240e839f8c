// The Web PubSub portal: plain DOM, no framework, no build step.
//
// Rules this file keeps: data reaches the page only through textContent / value /
// attributes (never innerHTML); no inline scripts or handlers (a strict CSP works);
// the access key lives only in the login field until it is posted, never in storage
// or a URL; every write carries the X-Portal-CSRF header; every list is bounded.

const API = "/portal/api";
const TRACE_KEEP = 5000; // records kept in the page (and exported)
const HUBS_LISTED = 200; // hubs the trace's hub filter offers (the first seen)
const CONN_DETAIL_RECENT = 50;
const TC_LOG_KEEP = 1000;
const TC_CONNECT_SECONDS = 10;
const HUBS_REFRESH_MS = 5000;
const CONN_REFRESH_MS = 3000;

const state = {
  csrf: null,
  session: null,
  tab: null,
  hubs: [],
  timers: { hubs: null, conns: null },
  trace: {
    source: null,
    records: [], // oldest first, at most TRACE_KEEP
    keys: new Set(), // recordKey of each record kept (a reconnected stream resends what it keeps)
    hideBefore: 0, // records up to this time were cleared: a resent one stays hidden
    paused: false,
    unseen: 0,
    selected: null, // key of the record in #record-detail
    hubs: new Set(),
    renderQueued: false,
    pending: [], // records received since the last render
  },
  conns: { hub: null, selected: null, list: [] },
  replay: { record: null },
  tc: { ws: null, protocol: "", ackId: 0, lastSeq: 0, acked: 0, ackScheduled: false },
};

// ---------------------------------------------------------------------------- helpers

const $ = (selector) => document.querySelector(selector);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("data-")) node.setAttribute(name, String(value));
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function clear(node) {
  node.replaceChildren();
  return node;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

/** HH:MM:SS.mmm in local time. */
function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function dateTime(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(epochSeconds)}`;
}

function since(epochSeconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - epochSeconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function ms(value) {
  if (typeof value !== "number") return "? ms";
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function csv(text) {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function headerValue(headers, name) {
  const lower = name.toLowerCase();
  for (const [k, v] of headers || []) if (k.toLowerCase() === lower) return v;
  return null;
}

/** A body for display: pretty JSON when it parses, else as sent. */
function formatBody(body, encoding, contentType) {
  if (body === null || body === undefined || body === "") return "(empty)";
  if (encoding === "base64") return `(binary, base64) ${body}`;
  const looksJson = (contentType || "").includes("json") || /^\s*[[{]/.test(body);
  if (looksJson) {
    try {
      return JSON.stringify(JSON.parse(body), null, 2);
    } catch {
      /* not JSON after all: shown as is */
    }
  }
  return body;
}

/** A table row that opens something: by click, or Enter / Space when it has the focus. */
function clickable(row, open) {
  const action = guarded(open);
  row.tabIndex = 0;
  row.addEventListener("click", action);
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      action();
    }
  });
}

let noticeTimer = null;

function notify(message, kind = "error") {
  const box = $("#notice");
  $("#notice-text").textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(noticeTimer);
  if (kind === "info") noticeTimer = setTimeout(() => (box.hidden = true), 4000);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A call to the portal's API; writes carry the CSRF header; a 401 shows the login. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET" && method !== "HEAD") {
    if (state.csrf) headers["X-Portal-CSRF"] = state.csrf;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  const res = await fetch(API + path, init);
  if (res.status === 401 && path !== "/login") {
    loggedOut("Your session ended: log in again.");
    throw new ApiError(401, "Unauthorized", "not logged in");
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!res.ok) {
    const message = (data && data.message) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, data && data.code, message);
  }
  if (method === "GET" && SURVEYED.test(path)) showPartial(data);
  return data;
}

/** The API paths answered by every node (``partial`` when by this node alone). */
const SURVEYED = /^\/(session|hubs|trace)(\?|$)|^\/hubs\/[^/]+\/connections(\?|$)/;

/** Shows or hides the notice that an answer came from this node alone. */
function showPartial(data) {
  $("#partial-notice").hidden = !(data && data.partial === true);
}

/** Runs an action started by the user; its failure becomes a notice, not a console error. */
function guarded(action) {
  return async (event) => {
    if (event && event.type === "submit") event.preventDefault();
    try {
      await action(event);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      notify(err instanceof Error ? err.message : String(err));
    }
  };
}

// ---------------------------------------------------------------------------- session

async function start() {
  bindStatic();
  let session;
  try {
    const res = await fetch(`${API}/session`, { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401) {
      showLogin();
      return;
    }
    if (!res.ok) throw new Error(`the portal's API answered ${res.status}`);
    session = await res.json();
  } catch (err) {
    $("#loading").textContent = `The portal cannot reach its API: ${err.message}`;
    return;
  }
  enter(session);
}

function showLogin(message) {
  $("#loading").hidden = true;
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#session-info").hidden = true;
  $("#login").hidden = false;
  const error = $("#login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("#login-key").focus();
}

async function login(event) {
  event.preventDefault();
  const input = $("#login-key");
  const key = input.value;
  const button = $("#login-submit");
  button.disabled = true;
  try {
    const res = await fetch(`${API}/login`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key }),
    });
    if (!res.ok) {
      let message = `login failed (${res.status})`;
      try {
        message = (await res.json()).message || message;
      } catch {
        /* no JSON body */
      }
      showLogin(message);
      return;
    }
    input.value = "";
    const session = await api("GET", "/session");
    enter(session);
  } catch (err) {
    showLogin(err.message);
  } finally {
    button.disabled = false;
  }
}

function enter(session) {
  showPartial(session);
  state.session = session;
  state.csrf = session.csrf;
  $("#loading").hidden = true;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  const info = $("#session-info");
  const nodes = session.nodes && session.nodes.length > 1 ? ` · ${session.nodes.length} nodes` : "";
  info.textContent = `${session.endpoint || location.origin} · node ${session.node}${nodes}`;
  info.hidden = false;
  startTrace();
  const tab = tabFromHash() || "hubs";
  showTab(tab);
  if (tab !== "hubs" && tab !== "connections") loadHubs().catch(() => {}); // the hub choices
}

async function logout() {
  try {
    await api("POST", "/logout");
  } finally {
    loggedOut();
  }
}

/** Forgets everything of the session (nothing it showed stays in the page) and shows the
 * login form. */
function loggedOut(message) {
  stopTrace();
  tcDisconnect();
  clearInterval(state.timers.hubs);
  clearInterval(state.timers.conns);
  state.csrf = null;
  state.session = null;
  clearTrace();
  state.trace.keys.clear();
  state.trace.hideBefore = 0;
  state.trace.hubs.clear();
  for (const option of [...$("#trace-filter-hub").options]) if (option.value) option.remove();
  state.hubs = [];
  state.conns = { hub: null, selected: null, list: [] };
  state.replay.record = null;
  for (const id of ["#hubs-list", "#conn-list", "#tc-log", "#replay-original", "#replay-new", "#rest-response-body"]) clear($(id));
  for (const id of ["#conn-detail", "#replay-editor", "#replay-result", "#rest-result", "#partial-notice"]) $(id).hidden = true;
  $("#replay-empty").hidden = false;
  $("#replay-headers").value = "";
  $("#replay-body").value = "";
  showLogin(message);
}

// ---------------------------------------------------------------------------- tabs

const TABS = ["hubs", "connections", "trace", "debugger", "client", "rest"];

function tabFromHash() {
  const name = location.hash.replace(/^#/, "");
  return TABS.includes(name) ? name : null;
}

function showTab(name) {
  state.tab = name;
  for (const tab of TABS) {
    $(`#tab-${tab}`).hidden = tab !== name;
    $(`#tab-btn-${tab}`).setAttribute("aria-selected", String(tab === name));
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  clearInterval(state.timers.hubs);
  clearInterval(state.timers.conns);
  if (name === "hubs") {
    loadHubs().catch(() => {});
    state.timers.hubs = setInterval(() => loadHubs().catch(() => {}), HUBS_REFRESH_MS);
  } else if (name === "connections") {
    loadHubs()
      .then(loadConnections)
      .catch(() => {});
    state.timers.conns = setInterval(() => loadConnections().catch(() => {}), CONN_REFRESH_MS);
  } else if (name === "trace") {
    scheduleRender();
  }
}

// ---------------------------------------------------------------------------- hubs

async function loadHubs() {
  if (!state.csrf) return;
  const data = await api("GET", "/hubs");
  state.hubs = data.hubs || [];
  renderHubs();
  fillHubChoices();
}

function fillHubChoices() {
  const names = state.hubs.map((h) => h.name);
  const list = clear($("#hub-names"));
  for (const name of names) list.append(el("option", { value: name }));
  const select = $("#conn-hub");
  const current = select.value || state.conns.hub || names[0] || "";
  clear(select);
  for (const name of names) select.append(el("option", { value: name, text: name }));
  if (names.includes(current)) select.value = current;
  state.conns.hub = select.value || null;
  for (const input of [$("#tc-hub"), $("#rest-hub")]) {
    if (!input.value && names.length) input.value = names[0];
  }
  updateRestRequest();
}

function renderHubs() {
  const box = clear($("#hubs-list"));
  if (!state.hubs.length) {
    box.append(el("p", { class: "muted", text: "No hub is configured and none has connections." }));
  }
  for (const hub of state.hubs) box.append(hubCard(hub));
  $("#hubs-updated").textContent = `updated ${clock(Date.now() / 1000)}`;
}

function hubCard(hub) {
  const s = hub.settings || {};
  const c = hub.counts || {};
  const perNode = "summed over the nodes: one with connections on two nodes counts twice";
  const count = (label, value) =>
    el(
      "div",
      { title: label === "connections" ? null : perNode },
      el("strong", { "data-count": label, text: String(value ?? 0) }),
      el("span", { class: "muted", text: label }),
    );
  const card = el(
    "article",
    { class: "card hub-card", "data-hub": hub.name },
    el(
      "h3",
      {},
      hub.name,
      el("span", { class: "badge muted", text: hub.configured ? "configured" : "not configured (defaults)" }),
    ),
    el("div", { class: "counts" }, count("connections", c.connections), count("users", c.users), count("groups", c.groups)),
  );
  const limits = [
    ["Anonymous connect", s.anonymousConnect ? "allowed" : "refused (token needed)"],
    ["Keep-alive", s.keepaliveSeconds ? `${s.keepaliveSeconds} s` : "—"],
    ["Max groups per connection", s.maxGroupsPerConnection ?? "—"],
    ["Client messages per second", s.clientMessagesPerSecond || "unlimited"],
    ["Client bytes per second", s.clientBytesPerSecond ? bytes(s.clientBytesPerSecond) : "unlimited"],
  ];
  const dl = el("dl", { class: "fields" });
  for (const [k, v] of limits) dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
  card.append(dl);
  const handlers = s.eventHandlers || [];
  card.append(el("h4", { text: `Event handlers (${handlers.length})` }));
  if (!handlers.length) {
    card.append(el("p", { class: "muted", text: "None: no event of this hub goes to an app server." }));
  } else {
    const table = el(
      "table",
      { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", { text: "URL template" }), el("th", { text: "User events" }), el("th", { text: "System events" }), el("th", { text: "Group presence" }), el("th", { text: "Timeout" }))),
    );
    const body = el("tbody");
    for (const h of handlers) {
      body.append(
        el(
          "tr",
          {},
          el("td", { class: "ids", text: h.urlTemplate }),
          el("td", { class: "mono", text: h.userEventPattern || "(none)" }),
          el("td", { class: "mono", text: (h.systemEvents || []).join(", ") || "(none)" }),
          el("td", { class: "mono", text: presenceText(h.groupPresenceEvents) }),
          el("td", { text: h.timeoutSeconds ? `${h.timeoutSeconds} s` : "" }),
        ),
      );
    }
    table.append(body);
    card.append(table);
  }
  return card;
}

function presenceText(p) {
  if (!p || !(p.eventNames || []).length) return "(none)";
  const groups = (p.groupFilters || []).length ? p.groupFilters.join(", ") : "every group";
  return `${p.eventNames.join(", ")} of ${groups}`;
}

// ---------------------------------------------------------------------------- connections

let searchTimer = null;

async function loadConnections() {
  const hub = $("#conn-hub").value;
  state.conns.hub = hub || null;
  if (!hub) {
    clear($("#conn-list"));
    $("#conn-count").textContent = "no hub";
    return;
  }
  const q = $("#conn-search").value.trim();
  const query = q ? `?q=${encodeURIComponent(q)}` : "";
  const data = await api("GET", `/hubs/${encodeURIComponent(hub)}/connections${query}`);
  if (hub !== $("#conn-hub").value) return; // the user switched hubs meanwhile
  state.conns.list = data.connections || [];
  renderConnections(data.truncated);
  const selected = state.conns.selected;
  if (selected && state.conns.list.some((c) => c.connectionId === selected)) {
    loadConnectionDetail(selected, false).catch(() => {});
  } else if (selected && !q) {
    $("#conn-detail-status").textContent = "This connection is gone.";
  }
}

function renderConnections(truncated) {
  const body = clear($("#conn-list"));
  for (const c of state.conns.list) {
    const row = el(
      "tr",
      { "data-id": c.connectionId, "aria-selected": String(c.connectionId === state.conns.selected) },
      el("td", { class: "ids", text: c.connectionId }),
      el("td", { text: c.userId ?? "" }),
      el("td", { text: c.subprotocol || c.protocol || "" }, c.detached ? el("span", { class: "badge t-detached", text: "detached" }) : null),
      el("td", { text: (c.groups || []).join(", ") + (c.groupsTruncated ? ", …" : "") }),
      el("td", { class: "mono", text: c.node || "" }),
      el("td", { title: dateTime(c.connectedAt), text: `${since(c.connectedAt)} ago` }),
      el("td", { class: "num", text: String(c.messagesIn ?? 0) }),
      el("td", { class: "num", text: String(c.messagesOut ?? 0) }),
    );
    clickable(row, () => loadConnectionDetail(c.connectionId, true));
    body.append(row);
  }
  const n = state.conns.list.length;
  $("#conn-count").textContent = `${n} connection${n === 1 ? "" : "s"}${truncated ? " (truncated: refine the search)" : ""}`;
}

async function loadConnectionDetail(id, userAction) {
  const hub = state.conns.hub;
  let c;
  try {
    c = await api("GET", `/hubs/${encodeURIComponent(hub)}/connections/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      $("#conn-detail-status").textContent = "This connection is gone.";
      if (userAction) throw err;
      return;
    }
    throw err;
  }
  state.conns.selected = id;
  for (const row of $("#conn-list").children) row.setAttribute("aria-selected", String(row.dataset.id === id));
  $("#conn-detail").hidden = false;
  $("#conn-detail-title").textContent = `Connection ${c.connectionId}`;
  const fields = clear($("#conn-detail-fields"));
  const rows = [
    ["User", c.userId ?? "(anonymous)"],
    ["Protocol", c.subprotocol || c.protocol],
    ["Node", c.node],
    ["Connected", `${dateTime(c.connectedAt)} (${since(c.connectedAt)} ago)`],
    ["Groups", ((c.groups || []).join(", ") || "(none)") + (c.groupsTruncated ? " … (more, cut)" : "")],
    ["Messages in / out", `${c.messagesIn ?? 0} / ${c.messagesOut ?? 0}`],
    ["State", c.stateBytes ? bytes(c.stateBytes) : "none"],
    ["Detached", c.detached ? "yes (waiting for its client)" : "no"],
  ];
  for (const [k, v] of rows) fields.append(el("dt", { text: k }), el("dd", { text: String(v ?? "") }));
  const perms = clear($("#conn-detail-perms"));
  for (const [perm, group] of c.permissions || []) {
    perms.append(el("li", { class: "mono", text: group ? `${perm} (group ${group})` : `${perm} (every group)` }));
  }
  if (!perms.children.length) perms.append(el("li", { class: "muted", text: "none" }));
  if (c.permissionsTruncated) perms.append(el("li", { class: "muted", text: "… more (the list was cut)" }));
  const recent = clear($("#conn-detail-recent"));
  for (const r of (c.recent || []).slice(-CONN_DETAIL_RECENT)) {
    const item = el("li", {}, el("span", { class: "mono", text: `${clock(r.time)} ` }), typeBadge(r), " ", summary(r));
    recent.append(item);
  }
  if (!recent.children.length) recent.append(el("li", { class: "muted", text: "nothing in the trace" }));
  if (userAction) $("#conn-detail-status").textContent = "";
}

async function closeSelectedConnection() {
  const id = state.conns.selected;
  if (!id) return;
  const reason = $("#conn-close-reason").value;
  await api("POST", `/hubs/${encodeURIComponent(state.conns.hub)}/connections/${encodeURIComponent(id)}/close`, { reason });
  state.conns.selected = null;
  $("#conn-detail").hidden = true;
  notify(`Closed ${id}.`, "info");
  await loadConnections();
}

async function sendToSelectedConnection() {
  const id = state.conns.selected;
  if (!id) return;
  const data = $("#conn-send-data").value;
  const contentType = $("#conn-send-type").value;
  await api("POST", `/hubs/${encodeURIComponent(state.conns.hub)}/connections/${encodeURIComponent(id)}/send`, { data, contentType });
  $("#conn-detail-status").textContent = `Sent ${bytes(new TextEncoder().encode(data).length)}.`;
}

// ---------------------------------------------------------------------------- live trace

function startTrace() {
  stopTrace();
  const source = new EventSource(`${API}/trace/stream`, { withCredentials: true });
  state.trace.source = source;
  setTraceStatus("connecting", "connecting…");
  source.addEventListener("open", () => setTraceStatus(state.trace.paused ? "paused" : "live", state.trace.paused ? "paused" : "live"));
  source.addEventListener("record", (event) => {
    let record;
    try {
      record = JSON.parse(event.data);
    } catch {
      return;
    }
    addRecord(record);
  });
  source.addEventListener("gap", (event) => {
    let gap;
    try {
      gap = JSON.parse(event.data);
    } catch {
      return;
    }
    addRecord({ type: "gap", node: gap.node, missed: gap.missed, time: Date.now() / 1000, seq: null });
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setTraceStatus("closed", "disconnected");
      // Why? A lapsed session answers 401: find out without leaving the page broken.
      fetch(`${API}/session`, { credentials: "same-origin", cache: "no-store" })
        .then((res) => {
          if (res.status === 401) loggedOut("Your session ended: log in again.");
          else if (state.trace.source === source) setTimeout(() => state.csrf && startTrace(), 2000);
        })
        .catch(() => {});
    } else {
      setTraceStatus("connecting", "reconnecting…");
    }
  });
}

function stopTrace() {
  if (state.trace.source) state.trace.source.close();
  state.trace.source = null;
}

function setTraceStatus(stateName, text) {
  const status = $("#trace-status");
  status.dataset.state = stateName;
  status.textContent = text;
}

function recordKey(r) {
  // A node that restarts under the same id counts its seq from 1 again: the time tells.
  return `${r.node}/${r.seq}/${r.time}`;
}

function addRecord(record) {
  const t = state.trace;
  if (record.type !== "gap") {
    const key = recordKey(record);
    if (t.keys.has(key) || record.time <= t.hideBefore) return; // resent after a reconnect
    t.keys.add(key);
  }
  // Several nodes' records merge by time (another node's come up to half a second late).
  let at = t.records.length;
  while (at > 0 && t.records[at - 1].time > record.time) at -= 1;
  t.records.splice(at, 0, record);
  if (t.records.length > TRACE_KEEP) {
    for (const old of t.records.splice(0, t.records.length - TRACE_KEEP)) t.keys.delete(recordKey(old));
  }
  if (record.hub && !t.hubs.has(record.hub) && t.hubs.size < HUBS_LISTED) {
    t.hubs.add(record.hub);
    $("#trace-filter-hub").append(el("option", { value: record.hub, text: record.hub }));
  }
  if (t.paused) {
    t.unseen += 1;
    $("#trace-count").textContent = `${t.records.length} kept · ${t.unseen} new while paused`;
    return;
  }
  t.pending.push(record);
  scheduleRender();
}

function scheduleRender() {
  const t = state.trace;
  if (t.renderQueued) return;
  t.renderQueued = true;
  requestAnimationFrame(() => {
    t.renderQueued = false;
    renderPending();
  });
}

function filters() {
  return {
    hub: $("#trace-filter-hub").value,
    type: $("#trace-filter-type").value,
    user: $("#trace-filter-user").value.trim().toLowerCase(),
    connection: $("#trace-filter-connection").value.trim().toLowerCase(),
    group: $("#trace-filter-group").value.trim().toLowerCase(),
    text: $("#trace-filter-text").value.trim().toLowerCase(),
  };
}

const searchable = new WeakMap();
/** The records of a connection's life (the type filter "connects / disconnects"). */
const LIFECYCLE = ["connected", "disconnected", "detached", "recovered", "moved", "adopted", "refused"];

function groupsOf(r) {
  const groups = [];
  if (r.group) groups.push(r.group);
  if (r.groups) groups.push(...r.groups);
  if (r.target && r.target.scope === "group" && r.target.id) groups.push(r.target.id);
  if (r.type === "cloudevent" && r.request) {
    const g = headerValue(r.request.headers, "ce-group");
    if (g) groups.push(g);
  }
  return groups;
}

function matches(r, f) {
  if (r.type === "gap") return true;
  if (f.hub && r.hub !== f.hub) return false;
  if (f.type) {
    if (f.type === "connection") {
      if (!LIFECYCLE.includes(r.type)) return false;
    } else if (r.type !== f.type) return false;
  }
  if (f.user && ![r.userId, r.fromUserId].some((u) => (u || "").toLowerCase().includes(f.user))) return false;
  if (f.connection && !(r.connectionId || "").toLowerCase().includes(f.connection)) return false;
  if (f.group && !groupsOf(r).some((g) => g.toLowerCase().includes(f.group))) return false;
  if (f.text) {
    let text = searchable.get(r);
    if (text === undefined) {
      text = JSON.stringify(r).toLowerCase();
      searchable.set(r, text);
    }
    if (!text.includes(f.text)) return false;
  }
  return true;
}

function renderPending() {
  const t = state.trace;
  if (state.tab !== "trace" && t.pending.length < 200) {
    // Off screen: render in bulk when the tab is shown (or when enough piled up).
    updateTraceCount();
    return;
  }
  const f = filters();
  const body = $("#trace-list");
  const scroller = $("#trace-scroll");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  for (const r of t.pending) {
    if (!matches(r, f)) continue;
    const row = traceRow(r);
    let before = body.lastElementChild;
    while (before && Number(before.dataset.time) > r.time) before = before.previousElementSibling;
    if (before) before.after(row);
    else body.prepend(row);
  }
  t.pending = [];
  while (body.children.length > TRACE_KEEP) body.firstElementChild.remove();
  if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  updateTraceCount();
}

function rerenderTrace() {
  const t = state.trace;
  clear($("#trace-list"));
  t.pending = t.records.slice();
  t.unseen = 0;
  renderPending();
}

function updateTraceCount() {
  const t = state.trace;
  const shown = $("#trace-list").children.length;
  $("#trace-count").textContent = `${shown} shown · ${t.records.length} kept (last ${TRACE_KEEP})`;
}

function typeBadge(r) {
  let label = r.type;
  if (r.type === "cloudevent") label = "CloudEvent";
  return el("span", { class: `badge t-${r.type}`, text: label });
}

/** The one-line summary of a record, as a node (text only). */
function summary(r) {
  const span = el("span", { class: "summary-text" });
  const add = (...parts) => span.append(...parts.filter((p) => p !== null && p !== undefined && p !== ""));
  switch (r.type) {
    case "connected":
      add(`${r.subprotocol || r.protocol || "simple"}`, r.groups && r.groups.length ? ` · groups ${r.groups.join(", ")}` : "");
      break;
    case "disconnected":
      add(`code ${r.code ?? "none"}`, r.reason ? ` · ${r.reason}` : "");
      break;
    case "detached":
      add(r.reason || "transport lost");
      break;
    case "recovered":
      add("transport back");
      break;
    case "moved":
      add(`handed over to node ${r.toNode ?? "?"} (it goes on there)`);
      break;
    case "adopted":
      add(r.fromNode ? `taken over from node ${r.fromNode}` : "taken over", " · detached until its client resumes it");
      break;
    case "refused":
      add(`handshake refused → ${r.status}`, r.reason ? ` · ${r.reason}` : "");
      break;
    case "message-in":
      add(`${r.kind} · ${bytes(r.size)} ${r.frame || ""}`, r.preview ? ` · ${r.preview}` : "");
      break;
    case "message-out": {
      const target = r.target ? `${r.target.scope}${r.target.id ? ` ${r.target.id}` : ""}` : "";
      add(
        r.reply ? "reply → " : "→ ",
        target,
        ` · ${r.recipients} recipient${r.recipients === 1 ? "" : "s"} · ${r.dataType} ${bytes(r.size)}`,
        r.fromUserId ? ` · from ${r.fromUserId}` : "",
        r.preview ? ` · ${r.preview}` : "",
      );
      break;
    }
    case "rest":
      add(`${r.method} ${r.operation} → ${r.status} · ${ms(r.durationMs)}`, r.caller ? ` · ${r.caller}` : "");
      break;
    case "cloudevent": {
      const status = r.response ? r.response.status : r.error || "no answer";
      add(
        `${r.eventType} → ${status} `,
        el("span", { class: `badge o-${r.outcome}`, text: r.outcome }),
        ` · ${ms(r.durationMs)}`,
        r.attempt > 1 ? ` · attempt ${r.attempt}` : "",
        r.replay ? " " : "",
        r.replay ? el("span", { class: "badge b-replay", text: "replay" }) : "",
      );
      break;
    }
    case "gap":
      add(`${r.missed} record${r.missed === 1 ? "" : "s"} of node ${r.node} skipped: the page could not keep up`);
      break;
    default:
      add(JSON.stringify(r));
  }
  return span;
}

function traceRow(r) {
  if (r.type === "gap") {
    return el("tr", { class: "gap", "data-time": r.time }, el("td", { text: clock(r.time) }), el("td", { text: r.node }), el("td", { text: "gap" }), el("td"), el("td"), el("td", {}, summary(r)));
  }
  const key = recordKey(r);
  const ids = [];
  if (r.connectionId) ids.push(r.connectionId);
  if (r.userId) ids.push(`user ${r.userId}`);
  const row = el(
    "tr",
    { "data-key": key, "data-type": r.type, "data-time": r.time, "aria-selected": String(key === state.trace.selected) },
    el("td", { title: dateTime(r.time), text: clock(r.time) }),
    el("td", { text: r.node }),
    el("td", {}, typeBadge(r)),
    el("td", { text: r.hub ?? "" }),
    el("td", { class: "ids", text: ids.join(" · ") }),
    el("td", { class: "summary" }, summary(r)),
  );
  clickable(row, () => openRecord(r));
  return row;
}

function kvTable(pairs) {
  const table = el("table", { class: "kv" });
  for (const [k, v] of pairs) table.append(el("tr", {}, el("td", { text: k }), el("td", { text: v === null || v === undefined ? "" : String(v) })));
  return table;
}

function httpPart(title, part, extra) {
  const box = el("section", { class: "http-part" }, el("h4", { text: title }));
  if (extra) box.append(extra);
  box.append(kvTable(part.headers || []));
  const ct = headerValue(part.headers, "content-type");
  box.append(el("pre", { class: "body", text: formatBody(part.body, part.bodyEncoding, ct) }));
  if (part.truncated) box.append(el("p", { class: "muted", text: "The body was cut: the trace keeps its first 16 KiB at most." }));
  return box;
}

/** The response of a CloudEvent record (or why there is none), as a node. */
function responseView(r, title = "Response") {
  if (!r.response) {
    return el("section", { class: "http-part" }, el("h4", { text: title }), el("p", { class: "error", text: r.error || "no answer" }));
  }
  const line = el("p", { class: "mono" }, `HTTP ${r.response.status} `, el("span", { class: `badge o-${r.outcome}`, text: r.outcome }), ` · ${ms(r.durationMs)}`);
  return httpPart(title, r.response, line);
}

async function openRecord(r) {
  const t = state.trace;
  t.selected = recordKey(r);
  for (const row of $("#trace-list").children) row.setAttribute("aria-selected", String(row.dataset.key === t.selected));
  let record = r;
  if (r.type === "cloudevent") {
    // The ring's own copy, in case the streamed one was abridged; the kept one if gone.
    try {
      record = await api("GET", `/trace/${encodeURIComponent(r.node)}/${r.seq}`);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
    }
  }
  renderRecordDetail(record);
}

function renderRecordDetail(r) {
  const box = clear($("#record-detail"));
  box.hidden = false;
  box.dataset.key = recordKey(r);
  box.dataset.type = r.type;
  const close = el("button", { type: "button", class: "link", "aria-label": "Close the detail", text: "×" });
  close.addEventListener("click", () => {
    box.hidden = true;
    state.trace.selected = null;
  });
  box.append(el("div", { class: "row" }, el("h3", {}, typeBadge(r), ` ${r.type === "cloudevent" ? r.eventType : r.type}`), close));
  const common = [
    ["time", dateTime(r.time)],
    ["node", r.node],
    ["seq", r.seq],
    ["hub", r.hub],
    ["connectionId", r.connectionId],
    ["userId", r.userId],
  ];
  box.append(kvTable(common.filter(([, v]) => v !== null && v !== undefined)));
  if (r.truncated) {
    box.append(el("p", { class: "muted", text: "This record was too large to keep whole: only its common fields are left." }));
  }
  if (r.type === "cloudevent") {
    box.append(
      el("p", { class: "mono" }, `${r.method} ${r.url}`, r.replay ? " " : "", r.replay ? el("span", { class: "badge b-replay", text: "replay" }) : ""),
      el("div", { class: "actions" }, replayButton(r)),
      httpPart("Request", r.request || {}),
      responseView(r),
    );
  } else if (r.type === "message-in" || r.type === "message-out") {
    const binary = r.frame === "binary" || r.dataType === "binary" || r.dataType === "protobuf";
    const title = binary ? "First bytes (base64)" : "First characters";
    box.append(el("h4", { text: title }), el("pre", { text: r.preview || "(empty)" }));
  }
  if (r.type === "disconnected") {
    box.append(el("p", {}, `Close code ${r.code ?? "none"}: `, el("strong", { text: r.reason || "(no reason)" })));
  }
  box.append(el("details", {}, el("summary", { text: "The whole record (JSON)" }), el("pre", { text: JSON.stringify(r, null, 2) })));
}

function replayButton(r) {
  const button = el("button", { type: "button", id: "record-replay", text: "Replay…" });
  button.addEventListener("click", () => openReplay(r));
  return button;
}

function exportTrace() {
  const f = filters();
  const lines = state.trace.records.filter((r) => r.type !== "gap" && matches(r, f)).map((r) => JSON.stringify(r));
  const blob = new Blob([lines.join("\n") + (lines.length ? "\n" : "")], { type: "application/x-ndjson" });
  const url = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const link = el("a", { href: url, download: `webpubsub-trace-${stamp}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  notify(`Exported ${lines.length} record${lines.length === 1 ? "" : "s"}.`, "info");
}

function togglePause() {
  const t = state.trace;
  t.paused = !t.paused;
  const button = $("#trace-pause");
  button.setAttribute("aria-pressed", String(t.paused));
  button.textContent = t.paused ? "Resume" : "Pause";
  if (t.paused) {
    renderPending(); // what came before the pause is shown; nothing after it
    setTraceStatus("paused", "paused");
  } else {
    setTraceStatus(state.trace.source && state.trace.source.readyState === EventSource.OPEN ? "live" : "connecting", "live");
    rerenderTrace();
  }
}

function clearTrace() {
  const t = state.trace;
  for (const r of t.records) if (r.type !== "gap") t.hideBefore = Math.max(t.hideBefore, r.time);
  t.keys.clear();
  t.records = [];
  t.pending = [];
  t.unseen = 0;
  t.selected = null;
  clear($("#trace-list"));
  $("#record-detail").hidden = true;
  updateTraceCount();
}

// ---------------------------------------------------------------------------- webhook debugger

function openReplay(r) {
  state.replay.record = r;
  $("#replay-empty").hidden = true;
  $("#replay-editor").hidden = false;
  $("#replay-result").hidden = true;
  const source = clear($("#replay-source"));
  source.append(
    el("strong", { text: r.eventType }),
    ` of ${r.connectionId || "?"} (hub ${r.hub ?? "?"}), traced ${dateTime(r.time)} on node ${r.node} · `,
    el("code", { text: `${r.method} ${r.url}` }),
  );
  resetReplay();
  showTab("debugger");
}

function resetReplay() {
  const r = state.replay.record;
  if (!r) return;
  const request = r.request || {};
  $("#replay-headers").value = (request.headers || []).map(([k, v]) => `${k}: ${v}`).join("\n");
  $("#replay-body").value = request.body || "";
  $("#replay-base64").checked = request.bodyEncoding === "base64";
  $("#replay-status").textContent = request.truncated ? "The body was cut in the trace: sent back unchanged, the original is sent whole." : "";
}

function parseHeaders(text) {
  const headers = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`header line ${i + 1} has no "name: value"`);
    headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
  }
  return headers;
}

async function sendReplay() {
  const r = state.replay.record;
  if (!r) return;
  const headers = parseHeaders($("#replay-headers").value);
  const button = $("#replay-send");
  button.disabled = true;
  $("#replay-status").textContent = "sending…";
  try {
    const request = { node: r.node, seq: r.seq, headers, body: $("#replay-body").value };
    if ($("#replay-base64").checked) request.bodyEncoding = "base64";
    const answer = await api("POST", "/replay", request);
    $("#replay-status").textContent = `answered in ${ms(answer.replay.durationMs)}`;
    const result = $("#replay-result");
    clear($("#replay-original")).append(responseView(answer.original, `${answer.original.eventType} · traced`));
    clear($("#replay-new")).append(responseView(answer.replay, `${answer.replay.eventType} · replayed`));
    result.hidden = false;
  } catch (err) {
    $("#replay-status").textContent = "";
    throw err;
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------- test client

function tcLog(direction, text, cls) {
  const log = $("#tc-log");
  const item = el("li", { class: cls || direction }, el("span", { class: "dir", text: { in: "←", out: "→", info: "·", error: "!" }[cls || direction] || direction }), `${clock(Date.now() / 1000)}  ${text}`);
  log.append(item);
  while (log.children.length > TC_LOG_KEEP) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function tcSetState(connected, text) {
  const status = $("#tc-status");
  status.dataset.state = connected === null ? "connecting" : connected ? "connected" : "disconnected";
  status.textContent = text;
  const json = connected && state.tc.protocol !== "";
  $("#tc-connect").disabled = connected !== false;
  $("#tc-disconnect").disabled = connected === false;
  for (const id of ["#tc-join", "#tc-leave", "#tc-send-event", "#tc-send-group"]) $(id).disabled = !json;
  $("#tc-send-raw").disabled = !connected;
  for (const id of ["#tc-hub", "#tc-user", "#tc-roles", "#tc-groups", "#tc-protocol"]) $(id).disabled = connected !== false;
}

async function tcConnect() {
  if (state.tc.ws) return;
  const hub = $("#tc-hub").value.trim();
  const userId = $("#tc-user").value.trim();
  const protocol = $("#tc-protocol").value;
  const request = { hub, roles: csv($("#tc-roles").value), groups: csv($("#tc-groups").value) };
  if (userId) request.userId = userId;
  tcSetState(null, "getting a token…");
  let token;
  try {
    token = await api("POST", "/token", request);
  } catch (err) {
    tcSetState(false, "disconnected");
    throw err;
  }
  tcSetState(null, "connecting…");
  const where = tcWhere(token.url); // never the token itself
  tcLog("info", `connecting to ${where} as ${userId || "(anonymous)"}${protocol ? ` with ${protocol}` : ""}`);
  let ws;
  try {
    ws = protocol ? new WebSocket(token.url, protocol) : new WebSocket(token.url);
  } catch (err) {
    // (Its message may quote the URL, token included: only its name is shown.)
    tcLog("error", `cannot connect to ${where}: ${err && err.name ? err.name : "refused by the browser"}`);
    tcSetState(false, "disconnected (could not connect)");
    return;
  }
  ws.binaryType = "arraybuffer";
  state.tc = { ws, protocol, ackId: 0, lastSeq: 0, acked: 0, ackScheduled: false };
  let opened = false;
  const failed = (why) => {
    clearTimeout(timer);
    if (state.tc.ws !== ws) return;
    state.tc.ws = null;
    tcLog("error", `could not connect to ${where}: ${why}`);
    tcSetState(false, "disconnected (could not connect)");
    ws.close();
  };
  const timer = setTimeout(() => failed(`no answer within ${TC_CONNECT_SECONDS} s`), TC_CONNECT_SECONDS * 1000);
  ws.addEventListener("open", () => {
    opened = true;
    clearTimeout(timer);
    if (state.tc.ws !== ws) return;
    tcSetState(true, `connected${protocol ? ` · ${ws.protocol || "no subprotocol"}` : ""}`);
  });
  ws.addEventListener("error", () => {
    if (!opened) failed("the service refused the connection (see the live trace) or it could not be reached");
  });
  ws.addEventListener("message", (event) => tcReceive(ws, event.data));
  ws.addEventListener("close", (event) => {
    if (!opened) return failed(`closed before it opened (code ${event.code})`);
    if (state.tc.ws !== ws) return;
    state.tc.ws = null;
    tcLog("info", `closed: code ${event.code}${event.reason ? ` · ${event.reason}` : ""}`);
    tcSetState(false, `disconnected (${event.code})`);
  });
}

/** ``host/path`` of a client URL: what the log may show of it (no query: no token). */
function tcWhere(url) {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}`;
  } catch {
    return "the service";
  }
}

function tcReceive(ws, data) {
  if (typeof data !== "string") {
    const view = new Uint8Array(data);
    const hex = Array.from(view.slice(0, 32), (b) => b.toString(16).padStart(2, "0")).join(" ");
    tcLog("in", `binary ${bytes(view.length)}: ${hex}${view.length > 32 ? " …" : ""}`);
    return;
  }
  if (!state.tc.protocol) {
    tcLog("in", data);
    return;
  }
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    tcLog("in", data);
    return;
  }
  tcLog("in", JSON.stringify(message));
  // The reliable subprotocol: acknowledge what arrived (cumulatively, once per turn).
  if (typeof message.sequenceId === "number" && state.tc.protocol.includes(".reliable.")) {
    state.tc.lastSeq = Math.max(state.tc.lastSeq, message.sequenceId);
    if (!state.tc.ackScheduled && state.tc.lastSeq > state.tc.acked) {
      state.tc.ackScheduled = true;
      setTimeout(() => {
        state.tc.ackScheduled = false;
        if (state.tc.ws === ws && ws.readyState === WebSocket.OPEN && state.tc.lastSeq > state.tc.acked) {
          state.tc.acked = state.tc.lastSeq;
          ws.send(JSON.stringify({ type: "sequenceAck", sequenceId: state.tc.acked }));
        }
      }, 0);
    }
  }
}

function tcSend(message) {
  const ws = state.tc.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error("the test client is not connected");
  const text = typeof message === "string" ? message : JSON.stringify(message);
  ws.send(text);
  tcLog("out", text);
}

function tcPayload() {
  const dataType = $("#tc-datatype").value;
  const raw = $("#tc-data").value;
  if (dataType === "json") {
    try {
      return { dataType, data: JSON.parse(raw) };
    } catch {
      throw new Error("the data is not valid JSON (choose the data type text to send it as it is)");
    }
  }
  return { dataType, data: raw };
}

function tcGroup() {
  const group = $("#tc-group").value.trim();
  if (!group) throw new Error("name a group first");
  return group;
}

function tcNextAck() {
  state.tc.ackId += 1;
  return state.tc.ackId;
}

function tcDisconnect() {
  const ws = state.tc.ws;
  if (!ws) return;
  state.tc.ws = null;
  ws.close(1000, "closed from the portal");
  tcLog("info", "closed by you");
  tcSetState(false, "disconnected");
}

// ---------------------------------------------------------------------------- REST console

const REST_OPS = {
  sendToAll: { method: "POST", path: (p) => `/api/hubs/${p.hub}/:send`, needs: ["body"] },
  sendToGroup: { method: "POST", path: (p) => `/api/hubs/${p.hub}/groups/${p.group}/:send`, needs: ["group", "body"] },
  sendToUser: { method: "POST", path: (p) => `/api/hubs/${p.hub}/users/${p.user}/:send`, needs: ["user", "body"] },
  sendToConnection: { method: "POST", path: (p) => `/api/hubs/${p.hub}/connections/${p.connection}/:send`, needs: ["connection", "body"] },
  addConnectionToGroup: { method: "PUT", path: (p) => `/api/hubs/${p.hub}/groups/${p.group}/connections/${p.connection}`, needs: ["group", "connection"] },
  removeConnectionFromGroup: { method: "DELETE", path: (p) => `/api/hubs/${p.hub}/groups/${p.group}/connections/${p.connection}`, needs: ["group", "connection"] },
  addUserToGroup: { method: "PUT", path: (p) => `/api/hubs/${p.hub}/users/${p.user}/groups/${p.group}`, needs: ["group", "user"] },
  removeUserFromGroup: { method: "DELETE", path: (p) => `/api/hubs/${p.hub}/users/${p.user}/groups/${p.group}`, needs: ["group", "user"] },
  closeConnection: { method: "DELETE", path: (p) => `/api/hubs/${p.hub}/connections/${p.connection}`, needs: ["connection"] },
};
const REST_API_VERSION = "2024-12-01";

function restRequest() {
  const op = REST_OPS[$("#rest-op").value];
  const part = (id) => encodeURIComponent($(id).value.trim());
  const params = { hub: part("#rest-hub"), group: part("#rest-group"), user: part("#rest-user"), connection: part("#rest-connection") };
  return { op, method: op.method, path: `${op.path(params)}?api-version=${REST_API_VERSION}` };
}

function updateRestRequest() {
  const { op, method, path } = restRequest();
  for (const node of document.querySelectorAll("#rest-form [data-for]")) node.hidden = !op.needs.includes(node.dataset.for);
  $("#rest-request").textContent = `${method} ${path}`;
}

async function restSend() {
  const { op, method, path } = restRequest();
  for (const need of op.needs) {
    if (need !== "body" && !$(`#rest-${need}`).value.trim()) throw new Error(`the ${need} is needed`);
  }
  if (!$("#rest-hub").value.trim()) throw new Error("the hub is needed");
  $("#rest-state").textContent = "sending…";
  const { token, url } = await api("POST", "/rest-token", { method, path });
  const headers = { Authorization: `Bearer ${token}` };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (op.needs.includes("body")) {
    headers["Content-Type"] = $("#rest-content-type").value;
    init.body = $("#rest-body").value;
  }
  const started = performance.now();
  const res = await fetch(url, init);
  const text = await res.text();
  const ms = Math.round(performance.now() - started);
  $("#rest-state").textContent = "";
  $("#rest-status").textContent = `${res.status} ${res.statusText} · ${ms} ms`;
  $("#rest-status").className = res.ok ? "o-success" : "o-failed";
  const pairs = [];
  res.headers.forEach((value, name) => pairs.push([name, value]));
  $("#rest-headers").replaceWith(Object.assign(kvTable(pairs), { id: "rest-headers" }));
  $("#rest-response-body").textContent = formatBody(text, null, res.headers.get("content-type"));
  $("#rest-result").hidden = false;
}

// ---------------------------------------------------------------------------- wiring

function bindStatic() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", guarded(logout));
  $("#notice-close").addEventListener("click", () => ($("#notice").hidden = true));
  for (const tab of TABS) $(`#tab-btn-${tab}`).addEventListener("click", () => showTab(tab));
  window.addEventListener("hashchange", () => {
    const tab = tabFromHash();
    if (tab && state.csrf && tab !== state.tab) showTab(tab);
  });

  $("#hubs-refresh").addEventListener("click", guarded(loadHubs));

  $("#conn-hub").addEventListener("change", guarded(() => {
    state.conns.selected = null;
    $("#conn-detail").hidden = true;
    return loadConnections();
  }));
  $("#conn-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadConnections().catch((err) => notify(err.message)), 250);
  });
  $("#conn-refresh").addEventListener("click", guarded(loadConnections));
  $("#conn-close").addEventListener("click", guarded(closeSelectedConnection));
  $("#conn-send").addEventListener("click", guarded(sendToSelectedConnection));
  $("#conn-trace").addEventListener("click", () => {
    $("#trace-filter-connection").value = state.conns.selected || "";
    showTab("trace");
    rerenderTrace();
  });

  for (const id of ["hub", "type"]) $(`#trace-filter-${id}`).addEventListener("change", rerenderTrace);
  for (const id of ["user", "connection", "group", "text"]) $(`#trace-filter-${id}`).addEventListener("input", rerenderTrace);
  $("#trace-pause").addEventListener("click", togglePause);
  $("#trace-clear").addEventListener("click", clearTrace);
  $("#trace-export").addEventListener("click", exportTrace);

  $("#replay-send").addEventListener("click", guarded(sendReplay));
  $("#replay-reset").addEventListener("click", resetReplay);

  $("#tc-form").addEventListener("submit", guarded(tcConnect));
  $("#tc-disconnect").addEventListener("click", tcDisconnect);
  $("#tc-clear").addEventListener("click", () => clear($("#tc-log")));
  $("#tc-join").addEventListener("click", guarded(() => tcSend({ type: "joinGroup", group: tcGroup(), ackId: tcNextAck() })));
  $("#tc-leave").addEventListener("click", guarded(() => tcSend({ type: "leaveGroup", group: tcGroup(), ackId: tcNextAck() })));
  $("#tc-send-event").addEventListener("click", guarded(() => {
    const event = $("#tc-event").value.trim();
    if (!event) throw new Error("name the event first");
    tcSend({ type: "event", event, ...tcPayload(), ackId: tcNextAck() });
  }));
  $("#tc-send-group").addEventListener("click", guarded(() => tcSend({ type: "sendToGroup", group: tcGroup(), ...tcPayload(), ackId: tcNextAck() })));
  $("#tc-send-raw").addEventListener("click", guarded(() => tcSend($("#tc-data").value)));

  $("#rest-form").addEventListener("submit", guarded(restSend));
  for (const id of ["#rest-op", "#rest-hub", "#rest-group", "#rest-user", "#rest-connection"]) {
    $(id).addEventListener("input", updateRestRequest);
  }
  tcSetState(false, "disconnected");
  updateRestRequest();
}

start();
