// gpupool console: the little behaviour the server-rendered pages need — following a replica's logs over
// Server-Sent Events, the dry-run check, and live updates of a page's [data-live] parts. No framework, no
// build step; every page works without it.
"use strict";

const RETRY_MS = 1000;  // how soon to ask again for the output of a replica that has not started yet
// How often a live page asks for itself again: a state change shows within seconds, and a page left open costs
// the server one render every 5 s (none while its tab is hidden or paused).
const LIVE_MS = 5000;

function followLogs(pre) {
  const state = document.getElementById("logs-state");
  const source = new EventSource(pre.dataset.src);
  let lines = 0;
  source.onmessage = (event) => {
    pre.textContent += JSON.parse(event.data) + "\n";  // textContent: output is shown, never interpreted
    lines += 1;
    pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("wait", (event) => {
    if (state) state.textContent = JSON.parse(event.data);
    source.close();
    setTimeout(() => followLogs(pre), RETRY_MS);
  });
  source.addEventListener("end", (event) => {
    const reason = JSON.parse(event.data);
    if (state) state.textContent = reason || (lines ? "The replica ended." : "No output.");
    source.close();
  });
  source.onerror = () => {
    if (state) state.textContent = "Log stream interrupted; reload to follow again.";
    source.close();
  };
}

function describe(result) {
  const where = (result.placements || []).map((p) =>
    p.node + (p.gpus.length ? " (" + p.gpus.map((g) => "GPU " + g.index + (g.milli < 1000 ? " " + g.milli / 1000 : "")).join(", ") + ")" : ""));
  if (result.verdict === "now") return "Can run now on " + (where.join("; ") || "a node") + ".";
  if (result.verdict === "preempting") return "Can run now after preempting " + result.preempts + " workload(s).";
  if (result.verdict === "never") return "Can never run as asked: " + result.reason;
  let text = "Would wait: " + result.reason;
  if (result.position) text += " (position " + result.position + " in queue " + result.queue + ")";
  if (result.expected_start) text += "; expected to start by " + new Date(result.expected_start * 1000).toISOString();
  return text + ".";
}

async function check(form) {
  const out = document.getElementById("check-result");
  out.textContent = "Checking…";
  const body = new URLSearchParams(new FormData(form));
  const response = await fetch("/new/check", {method: "POST", body: body, credentials: "same-origin"});
  const result = await response.json().catch(() => ({error: "the server answered " + response.status}));
  out.className = "check-result " + (result.error || result.verdict === "never" ? "bad" : result.verdict === "waits" ? "warn" : "ok");
  out.textContent = result.error ? (result.field ? result.field + ": " : "") + result.error : describe(result);
}

// Live updates: every LIVE_MS the page is fetched again and each element marked data-live (with an id) is
// replaced by its fresh copy, unless the keyboard focus is inside it. Paused by the button this adds, and off
// while the tab is hidden. A fresh copy without data-live (the workload ended) ends the updates.
function live() {
  if (!document.querySelector("[data-live][id]") || !window.fetch || !window.DOMParser) return;
  let paused = false;
  let timer = null;
  const bar = document.createElement("p");
  bar.className = "live-bar";
  const button = document.createElement("button");
  button.type = "button";
  button.id = "live-toggle";
  button.setAttribute("aria-pressed", "false");
  button.textContent = "Pause live updates";
  const state = document.createElement("span");
  state.id = "live-state-text";
  state.setAttribute("role", "status");
  state.textContent = "Live: updates every " + LIVE_MS / 1000 + " s.";
  bar.append(button, " ", state);
  document.querySelector("main").prepend(bar);

  const stop = () => { if (timer !== null) { clearTimeout(timer); timer = null; } };
  const schedule = () => { if (!paused && !document.hidden && timer === null) timer = setTimeout(refresh, LIVE_MS); };

  async function refresh() {
    timer = null;
    if (paused || document.hidden) return;
    let response;
    try {
      response = await fetch(location.href, {credentials: "same-origin", redirect: "manual"});
    } catch (error) {
      state.textContent = "Live update failed (network); trying again.";
      schedule();
      return;
    }
    if (!response.ok) {  // signed out, gone, or refused: stop rather than show a sign-in page in a fragment
      state.textContent = "Live updates stopped (the server answered " + (response.status || "a redirect") + "); reload the page.";
      return;
    }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const part of document.querySelectorAll("[data-live][id]")) {
      const next = fresh.getElementById(part.id);
      if (next && !part.contains(document.activeElement)) part.replaceWith(document.importNode(next, true));
    }
    if (!document.querySelector("[data-live][id]")) {
      state.textContent = "Live updates ended: nothing on this page changes any more.";
      button.hidden = true;
      return;
    }
    state.textContent = "Live: updated at " + new Date().toLocaleTimeString() + ".";
    schedule();
  }

  button.addEventListener("click", () => {
    paused = !paused;
    button.setAttribute("aria-pressed", String(paused));
    button.textContent = paused ? "Resume live updates" : "Pause live updates";
    state.textContent = paused ? "Live updates paused." : "Live: updates every " + LIVE_MS / 1000 + " s.";
    if (paused) stop(); else schedule();
  });
  document.addEventListener("visibilitychange", () => { if (document.hidden) stop(); else schedule(); });
  schedule();
}

document.addEventListener("DOMContentLoaded", () => {
  live();
  for (const button of document.querySelectorAll("button[data-check]")) {
    button.addEventListener("click", () => check(document.getElementById(button.dataset.check)));
  }
  const pre = document.getElementById("logs");
  if (pre && pre.dataset.src && window.EventSource) followLogs(pre);
});
