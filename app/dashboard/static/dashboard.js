// The netsync dashboard: signs in through the API, then reads the administrators' endpoints
// every few seconds and redraws the tables in place. Every value from the server reaches the
// page through textContent (never innerHTML), so job names, errors and ids cannot inject markup.
"use strict";

const TOKEN_KEY = "netsync.dashboard.token";
const REFRESH_MS = 3000;
const RECENT = 25;
// Fetched per state, so that hiding the periodic ticks still leaves RECENT other jobs to show.
const FETCHED = 200;

let timer = null;

// -- the API -------------------------------------------------------------------------------

class SignedOut extends Error {}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new SignedOut();
  const response = await fetch(path, {
    ...options,
    headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
  });
  if (response.status === 401) {
    signOut("Your session ended; sign in again.");
    throw new SignedOut();
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function signIn(username, password) {
  const response = await fetch("/api/v1/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ username, password }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.detail) || "sign-in failed");
  sessionStorage.setItem(TOKEN_KEY, body.access_token);
  const me = await api("/api/v1/users/me");
  if (me.role !== "admin") {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error("the dashboard is for administrators only");
  }
}

// -- DOM helpers ---------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value == null ? "" : String(value);
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function cell(value, className = "") {
  return el("td", { text: value == null ? "" : value, className });
}

function fillTable(section, rows, empty) {
  const body = section.querySelector("tbody");
  const columns = section.querySelectorAll("thead th").length;
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: columns, className: "empty", text: empty })));
  } else {
    body.replaceChildren(...rows);
  }
}

function field(section, name, value) {
  section.querySelector(`[data-field="${name}"]`).textContent = value;
}

function showError(section, error) {
  section.querySelector("[data-error]").textContent = error ? String(error.message || error) : "";
}

function notice(text) {
  const node = document.getElementById("notice");
  node.textContent = text;
  node.hidden = !text;
}

// -- formatting ----------------------------------------------------------------------------

function seconds(s) {
  if (s == null) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const delta = (date.getTime() - Date.now()) / 1000;
  const relative = delta >= 0 ? `in ${seconds(delta)}` : `${seconds(-delta)} ago`;
  return `${date.toLocaleString()} (${relative})`;
}

function duration(job) {
  if (!job.started_at || !job.finished_at) return "";
  return seconds((new Date(job.finished_at) - new Date(job.started_at)) / 1000);
}

function stateCell(state, kind = state) {
  return cell(state, `state state-${kind}`);
}

// -- the sections --------------------------------------------------------------------------

function renderQueues(queues) {
  const rows = queues.map((q) =>
    el("tr", { "data-queue": q.name },
      cell(q.name), cell(q.key, "id"), cell(q.jobs, "num"), cell(q.dead, "num")));
  fillTable(document.getElementById("queues"), rows, "no queues");
}

function renderOutbox(outbox) {
  const section = document.getElementById("outbox");
  field(section, "pending", outbox.pending);
  field(section, "age", outbox.pending ? seconds(outbox.oldest_pending_age_s) : "nothing waiting");
}

function renderSync(status) {
  const section = document.getElementById("sync");
  let state = "reachable";
  if (!status.configured) state = "not configured (NETSYNC_REQUEST_API_URL)";
  else if (!status.reachable) state = `unreachable: ${status.error || "no answer"}`;
  const line = section.querySelector('[data-field="state"]');
  line.textContent = state;
  line.className = status.reachable ? "state state-ok" : "state state-bad";
  const rows = (status.streams || []).map((s) =>
    el("tr", { "data-stream": s.stream },
      cell(s.stream), cell(s.published_seq, "num"), cell(s.applied_seq, "num"),
      cell(s.files_behind, "num"), cell(seconds(s.lag_s), "num")));
  fillTable(section, rows, status.reachable ? "no files published yet" : "–");
  const remote = status.request_status;
  field(section, "extra", remote
    ? `open gaps: ${remote.open_gaps.length} · files quarantined: ${remote.files_quarantined}`
    : "");
}

function renderRunning(listing) {
  const rows = listing.items.map((j) =>
    el("tr", { "data-job-id": j.job_id },
      cell(j.job_id, "id"), cell(j.function), cell(j.queue), cell(when(j.enqueued_at)),
      cell(j.tries, "num")));
  fillTable(document.getElementById("running"), rows, "nothing running");
}

function renderRecent(complete, failed) {
  // The outbox sweeper ticks every few seconds: its runs would push everything else out.
  const ticks = document.getElementById("show-ticks").checked;
  const jobs = [...complete.items, ...failed.items]
    .filter((j) => ticks || !j.job_id.startsWith("cron:"))
    .sort((a, b) => (b.finished_at || "").localeCompare(a.finished_at || ""))
    .slice(0, RECENT);
  const rows = jobs.map((j) =>
    el("tr", { "data-job-id": j.job_id, "data-state": j.state },
      cell(when(j.finished_at)), stateCell(j.state), cell(j.job_id, "id"), cell(j.function),
      cell(j.queue), cell(duration(j), "num"), cell(j.tries, "num"), cell(j.error, "wrap")));
  fillTable(document.getElementById("recent"), rows, "no finished jobs kept");
}

async function act(button, request, done) {
  button.disabled = true;
  try {
    done(await request());
  } catch (error) {
    if (!(error instanceof SignedOut)) notice(`Failed: ${error.message}`);
  }
  await refresh();
}

function deadButtons(job) {
  const path = `/api/v1/jobs/dead/${encodeURIComponent(job.job_id)}`;
  const retry = el("button", {
    type: "button",
    "data-action": "retry",
    onclick: () => act(retry, () => api(`${path}/retry`, { method: "POST" }),
      (accepted) => notice(`Retried ${job.job_id} as ${accepted.job_id}.`)),
  });
  retry.textContent = "Retry";
  const discard = el("button", {
    type: "button",
    className: "danger",
    "data-action": "discard",
    onclick: () => {
      if (!window.confirm(`Discard dead job ${job.job_id} for good?`)) return;
      act(discard, () => api(path, { method: "DELETE" }),
        () => notice(`Discarded ${job.job_id}.`));
    },
  });
  discard.textContent = "Discard";
  return el("td", {}, retry, discard);
}

function renderDead(dead) {
  const rows = dead.map((j) =>
    el("tr", { "data-job-id": j.job_id },
      cell(when(j.failed_at)), cell(j.job_id, "id"), cell(j.function), cell(j.queue),
      cell(j.tries, "num"), cell(j.error, "wrap"), deadButtons(j)));
  fillTable(document.getElementById("dead"), rows, "no dead jobs");
}

function renderSchedule(entries) {
  const rows = entries.map((e) =>
    el("tr", { "data-entry": e.name },
      cell(e.name), cell(e.queue), cell(e.crontab, "id"), cell(e.timezone),
      cell(e.next_run ? when(e.next_run) : "off"), cell(when(e.last_run_at) || "never")));
  fillTable(document.getElementById("schedule"), rows, "no periodic jobs");
}

// -- trends (uPlot, vendored: nothing loaded from elsewhere) -------------------------------

const CHARTS = {
  "trend-lag": [["lag", "lag_s", "#c0392b"]],
  "trend-rate": [["exported", "exported_per_s", "#2471a3"], ["applied", "applied_per_s", "#229954"]],
  "trend-queues": [["sync", "sync_queue", "#7d3c98"], ["bulk", "bulk_queue", "#b9770e"],
    ["outbox", "outbox_pending", "#566573"]],
  "trend-failures": [["dead", "dead", "#c0392b"], ["quarantined", "quarantined", "#873600"]],
};
const plots = {};

function renderTrends(trends) {
  const section = document.getElementById("trends");
  const points = trends.points;
  section.dataset.points = String(points.length);
  section.querySelector('[data-field="trend-interval"]').textContent =
    `one point per ${trends.interval_s} s`;
  const times = points.map((p) => p.t);
  for (const [id, series] of Object.entries(CHARTS)) {
    const figure = document.getElementById(id);
    // null (the Request Network unknown at that moment) leaves a gap in the line
    const data = [times, ...series.map(([, field]) => points.map((p) => p[field]))];
    const values = data.slice(1).flat().filter((v) => typeof v === "number");
    figure.dataset.max = String(values.length ? Math.max(...values) : 0);
    if (!plots[id]) {
      plots[id] = new uPlot({
        width: Math.max(280, figure.clientWidth || 300),
        height: 150,
        legend: { show: true },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
        series: [{}, ...series.map(([label, , stroke]) => ({ label, stroke, width: 1.5 }))],
      }, data, figure);
    } else {
      plots[id].setData(data);
    }
  }
}

function dropTrends() {
  for (const id of Object.keys(plots)) {
    plots[id].destroy();
    delete plots[id];
  }
  document.getElementById("trends").dataset.points = "0";
}

// -- refreshing ----------------------------------------------------------------------------

const SECTIONS = [
  ["queues", () => api("/api/v1/queues").then(renderQueues)],
  ["outbox", () => api("/api/v1/outbox").then(renderOutbox)],
  ["sync", () => api("/api/v1/sync/status").then(renderSync)],
  ["running", () => api("/api/v1/jobs?status=in_progress&limit=50").then(renderRunning)],
  ["recent", () => Promise.all([
    api(`/api/v1/jobs?status=complete&limit=${FETCHED}`),
    api(`/api/v1/jobs?status=failed&limit=${FETCHED}`),
  ]).then(([complete, failed]) => renderRecent(complete, failed))],
  ["dead", () => api("/api/v1/jobs/dead?limit=100").then(renderDead)],
  ["schedule", () => api("/api/v1/schedule").then(renderSchedule)],
  ["trends", () => api("/api/v1/trends").then(renderTrends)],
];

async function refresh() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  await Promise.all(SECTIONS.map(async ([id, load]) => {
    const section = document.getElementById(id);
    try {
      await load();
      showError(section, null);
    } catch (error) {
      if (!(error instanceof SignedOut)) showError(section, error);
    }
  }));
  document.getElementById("refreshed").textContent =
    `updated ${new Date().toLocaleTimeString()}`;
}

// -- signing in and out --------------------------------------------------------------------

function show(signedIn) {
  document.getElementById("sign-in").hidden = signedIn;
  document.getElementById("board").hidden = !signedIn;
  document.getElementById("session").hidden = !signedIn;
}

function start() {
  show(true);
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  timer = null;
  // Nothing read with the token stays on the page.
  for (const body of document.querySelectorAll("#board tbody")) body.replaceChildren();
  for (const node of document.querySelectorAll("#board [data-field]")) node.textContent = "–";
  dropTrends();
  notice("");
  show(false);
  document.getElementById("sign-in-error").textContent = message;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const error = document.getElementById("sign-in-error");
    error.textContent = "";
    try {
      await signIn(form.username.value, form.password.value);
      form.password.value = "";
      start();
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  document.getElementById("show-ticks").addEventListener("change", () => refresh());
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else show(false);
});
