// gpupool console: the little behaviour the server-rendered pages need — following a replica's logs over
// Server-Sent Events. No framework, no build step.
"use strict";

const RETRY_MS = 1000;  // how soon to ask again for the output of a replica that has not started yet

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

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-check]")) {
    button.addEventListener("click", () => check(document.getElementById(button.dataset.check)));
  }
  const pre = document.getElementById("logs");
  if (pre && pre.dataset.src && window.EventSource) followLogs(pre);
});
