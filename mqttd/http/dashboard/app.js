// The mqttd dashboard: plain JavaScript on the REST API (docs/http-api.md), no build step.
// The session cookie is HttpOnly, so this script never sees it; what it keeps is the CSRF token
// the login (or /whoami) answered, sent with every change in X-CSRF-Token.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 5000;
let csrf = null;
let refreshTimer = null;

const $ = (selector) => document.querySelector(selector);

function element(tag, text, className) {
  const made = document.createElement(tag);
  if (text !== undefined && text !== null) made.textContent = String(text);
  if (className) made.className = className;
  return made;
}

function button(text, onClick, className) {
  const made = element("button", text, className);
  made.type = "button";
  made.addEventListener("click", onClick);
  return made;
}

function say(text, isError) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== "/login") {
    showLogin();
    throw new ApiError(401, parsed);
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// Run an action from a button or form, reporting its outcome.
async function act(action, done) {
  try {
    await action();
    if (done) say(done, false);
  } catch (e) {
    say(e.message, true);
  }
  await refresh();
}

function enc(part) {
  return encodeURIComponent(part);
}

// Logging in and out

function showLogin() {
  csrf = null;
  $("#nav").hidden = true;
  $("#who").hidden = true;
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "login"; });
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

function loggedIn(name, token) {
  csrf = token;
  $("#who-name").textContent = name;
  $("#who").hidden = false;
  $("#nav").hidden = false;
  $("#message").hidden = true;
  show(location.hash.slice(1) || "overview");
  if (!refreshTimer) refreshTimer = setInterval(refresh, REFRESH_MS);
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const answer = await api("POST", "/login", {
      username: $("#login-user").value,
      password: $("#login-password").value,
    });
    $("#login-password").value = "";
    loggedIn(answer.username, answer.csrf);
  } catch (e) {
    say(e.message, true);
  }
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "/logout"); } finally { showLogin(); }
});

// Views

const views = {
  overview: loadOverview,
  clients: loadClients,
  subscriptions: loadSubscriptions,
  retained: loadRetained,
  groups: loadGroups,
  users: loadUsers,
  publish: async () => {},
};
let current = "overview";

function show(name) {
  if (!(name in views)) name = "overview";
  current = name;
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== name; });
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === name);
  });
  refresh();
}

window.addEventListener("hashchange", () => { if (csrf) show(location.hash.slice(1)); });

async function refresh() {
  if (!csrf) return;
  try {
    await views[current]();
  } catch (e) {
    if (e.status !== 401) say(e.message, true);
  }
}

// Overview

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

async function loadOverview() {
  const stats = await api("GET", "/stats");
  $("#ov-connections").textContent = stats.connections;
  $("#ov-sessions").textContent = stats.sessions;
  $("#ov-subscriptions").textContent = stats.subscriptions;
  $("#ov-retained").textContent = stats.retained;
  $("#ov-memory").textContent = megabytes(stats.memory_rss);
  $("#ov-uptime").textContent = duration(stats.uptime);
  const history = await api("GET", "/stats/history");
  drawChart(history.samples);
}

const SVG = "http://www.w3.org/2000/svg";

function drawChart(samples) {
  const chart = $("#chart");
  chart.replaceChildren();
  // Drawn at the chart's own size, so that the labels are not stretched.
  const width = chart.clientWidth || 600, height = 180, pad = 16;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const series = { received: [], sent: [], dropped: [] };
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].time - samples[i - 1].time || 1;
    for (const name of Object.keys(series)) {
      const key = `messages_${name}`;
      series[name].push(Math.max(0, (samples[i][key] - samples[i - 1][key]) / dt));
    }
  }
  const points = series.received.length;
  const top = Math.max(1, ...series.received, ...series.sent, ...series.dropped);
  for (const fraction of [0, 0.5, 1]) {
    const y = pad + (height - 2 * pad) * (1 - fraction);
    const rule = document.createElementNS(SVG, "line");
    rule.setAttribute("x1", 0); rule.setAttribute("x2", width);
    rule.setAttribute("y1", y); rule.setAttribute("y2", y);
    chart.appendChild(rule);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 4); label.setAttribute("y", y - 2);
    label.textContent = (top * fraction).toFixed(top < 10 ? 1 : 0);
    chart.appendChild(label);
  }
  if (points < 1) return;
  for (const [name, values] of Object.entries(series)) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", name);
    line.setAttribute("points", values.map((v, i) => {
      const x = points === 1 ? width : (i / (points - 1)) * width;
      return `${x.toFixed(1)},${(pad + (height - 2 * pad) * (1 - v / top)).toFixed(1)}`;
    }).join(" "));
    chart.appendChild(line);
  }
}

// Clients

async function loadClients() {
  let query = "?limit=200";
  const like = $("#clients-filter").value.trim(), user = $("#clients-user").value.trim();
  if (like) query += `&clientid=${enc(like)}`;
  if (user) query += `&username=${enc(user)}`;
  const page = await api("GET", `/clients${query}`);
  const rows = page.data.map((c) => {
    const row = element("tr");
    row.dataset.clientid = c.clientid;
    for (const value of [c.clientid, c.username ?? "", c.address, c.protocol, c.subscriptions, c.queued]) {
      row.appendChild(element("td", value));
    }
    const cell = element("td");
    cell.appendChild(button("Kick", () => act(
      () => api("DELETE", `/clients/${enc(c.clientid)}`), `${c.clientid} disconnected`), "danger kick"));
    row.appendChild(cell);
    return row;
  });
  $("#clients-rows").replaceChildren(...rows);
  $("#clients-count").textContent = `${page.meta.count} connected`;
}

$("#clients-search").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });

// Subscriptions

async function loadSubscriptions() {
  const page = await api("GET", "/subscriptions?limit=500");
  $("#subscriptions-rows").replaceChildren(...page.data.map((s) => {
    const row = element("tr");
    row.appendChild(element("td", s.clientid));
    row.appendChild(element("td", s.topic));
    row.appendChild(element("td", s.qos));
    const cell = element("td");
    cell.appendChild(button("Unsubscribe", () => act(
      () => api("DELETE", `/clients/${enc(s.clientid)}/subscriptions/${enc(s.topic)}`),
      `${s.clientid} unsubscribed from ${s.topic}`), "danger"));
    row.appendChild(cell);
    return row;
  }));
}

$("#subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const client = $("#subscribe-client").value.trim();
  const topic = $("#subscribe-topic").value;
  act(() => api("POST", `/clients/${enc(client)}/subscriptions`,
    { topic, qos: Number($("#subscribe-qos").value) }), `${client} subscribed to ${topic}`);
});

// Retained messages

async function loadRetained() {
  const filter = $("#retained-filter").value || "#";
  const page = await api("GET", `/retained?limit=500&filter=${enc(filter)}`);
  $("#retained-rows").replaceChildren(...page.data.map((m) => {
    const row = element("tr");
    row.appendChild(element("td", m.topic));
    row.appendChild(element("td", m.qos));
    row.appendChild(element("td", m.encoding === "base64" ? `(base64) ${m.payload}` : m.payload, "payload"));
    const cell = element("td");
    cell.appendChild(button("Delete", () => act(
      () => api("DELETE", `/retained/${m.topic.split("/").map(enc).join("/")}`),
      `retained message on ${m.topic} deleted`), "danger"));
    row.appendChild(cell);
    return row;
  }));
}

$("#retained-search").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });

// Groups

function memberList(text) {
  return text.split(",").map((m) => m.trim()).filter((m) => m);
}

async function loadGroups() {
  let page;
  try {
    page = await api("GET", "/groups?limit=1000");
  } catch (e) {
    if (e.status === 404) {
      $("#groups-list").replaceChildren(element("p", e.message, "muted"));
      return;
    }
    throw e;
  }
  $("#groups-list").replaceChildren(...page.data.map((g) => {
    const box = element("div", null, "group");
    box.dataset.group = g.group;
    const title = element("h3", g.group);
    title.appendChild(button("Delete group", () => act(
      () => api("DELETE", `/groups/${enc(g.group)}`), `group ${g.group} deleted`), "danger"));
    box.appendChild(title);
    const settings = [`by ${g.by}`, `${g.publish || "members"} publish`];
    if (g.topic) settings.push(`delivered to ${g.topic}`);
    if (g.events) settings.push("membership events");
    if (g.inbox) settings.push(`inbox${g.history ? `, history ${g.history}` : ""}`);
    box.appendChild(element("p", settings.join(" · "), "muted"));
    const list = element("ul");
    const owners = new Set(g.owners || []);
    for (const [member, qos] of Object.entries(g.members)) {
      const owner = owners.has(member);
      const item = element("li", `${member} (QoS ${qos}${owner ? ", owner" : ""})`);
      item.dataset.member = member;
      item.dataset.role = owner ? "owner" : "member";
      item.appendChild(button(owner ? "make member" : "make owner", () => act(
        () => api("PUT", `/groups/${enc(g.group)}/members/${enc(member)}`,
          { role: owner ? "member" : "owner" }),
        `${member} is now ${owner ? "a member" : "an owner"} of ${g.group}`), "role"));
      item.appendChild(button("×", () => act(
        () => api("DELETE", `/groups/${enc(g.group)}/members/${enc(member)}`),
        `${member} removed from ${g.group}`), "danger"));
      list.appendChild(item);
    }
    box.appendChild(list);
    const form = element("form", null, "inline");
    const input = element("input");
    input.placeholder = "add members: carol, dave:1";
    input.className = "add-member";
    form.appendChild(input);
    form.appendChild(element("button", "Add"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(() => api("POST", `/groups/${enc(g.group)}/members`, { members: memberList(input.value) }),
        `members added to ${g.group}`);
    });
    box.appendChild(form);
    return box;
  }));
}

$("#group-create").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("#group-name").value.trim();
  act(() => api("POST", "/groups", { name, members: memberList($("#group-members").value) }),
    `group ${name} created`);
});

// Users

async function loadUsers() {
  let page;
  try {
    page = await api("GET", "/users?limit=1000");
  } catch (e) {
    if (e.status === 404) {
      $("#users-rows").replaceChildren();
      say(e.message, true);
      return;
    }
    throw e;
  }
  $("#users-rows").replaceChildren(...page.data.map((u) => {
    const row = element("tr");
    row.dataset.username = u.username;
    row.appendChild(element("td", u.username));
    row.appendChild(element("td", u.plugins.join(", ")));
    row.appendChild(element("td", u.admin ? "yes" : ""));
    const passwordCell = element("td");
    const password = element("input");
    password.type = "password";
    password.autocomplete = "new-password";
    password.setAttribute("aria-label", `new password for ${u.username}`);
    passwordCell.appendChild(password);
    passwordCell.appendChild(button("Reset", () => act(
      () => api("PUT", `/users/${enc(u.username)}`, { password: password.value }),
      `password of ${u.username} changed`)));
    row.appendChild(passwordCell);
    const cell = element("td");
    cell.appendChild(button("Delete", () => act(
      () => api("DELETE", `/users/${enc(u.username)}`), `user ${u.username} deleted`), "danger"));
    row.appendChild(cell);
    return row;
  }));
}

$("#user-create").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("#user-name").value.trim();
  act(async () => {
    await api("POST", "/users", { username, password: $("#user-password").value });
    $("#user-password").value = "";
  }, `user ${username} added`);
});

// Publishing

$("#publish-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const topic = $("#publish-topic").value;
  act(() => api("POST", "/publish", {
    topic,
    payload: $("#publish-payload").value,
    qos: Number($("#publish-qos").value),
    retain: $("#publish-retain").checked,
  }), `published to ${topic}`);
});

// Start: a session still alive (a reload) goes straight in.

api("GET", "/whoami").then((me) => {
  if (me.csrf) loggedIn(me.name, me.csrf); else showLogin();
}).catch(() => showLogin());
