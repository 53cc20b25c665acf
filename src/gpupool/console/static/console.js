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

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("logs");
  if (pre && pre.dataset.src && window.EventSource) followLogs(pre);
});
