// The playground: POST /v1/stream with fetch and read its SSE body (EventSource cannot POST).
// Everything the model or server says is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "llm-router-api-key";
let controller = null;

function authHeaders() {
  const key = $("apikey").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function usd(x) {
  if (x === null || x === undefined) return "—";
  return x < 0.01 ? "$" + x.toFixed(6) : "$" + x.toFixed(4);
}

function ms(x) {
  return x === null || x === undefined ? "—" : Math.round(x) + " ms";
}

let tasksLoad = 0;

async function loadTasks() {
  const select = $("task");
  const mine = ++tasksLoad;  // only the latest of overlapping loads fills the list
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() });
    if (mine !== tasksLoad) return;
    if (!res.ok) {
      setStatus(res.status === 401 ? "enter an API key to list tasks" : "could not list tasks", true);
      return;
    }
    const body = await res.json();
    if (mine !== tasksLoad) return;
    const chosen = select.value;
    select.length = 1;
    for (const m of body.data) {
      if (m.kind !== "task" && m.kind !== "deployment") continue;
      const opt = document.createElement("option");
      opt.value = (m.kind === "deployment" ? "model:" : "task:") + m.id;
      opt.textContent = m.kind === "deployment" ? "deployment · " + m.id : m.id;
      select.appendChild(opt);
    }
    select.value = chosen;
    if (select.selectedIndex < 0) select.selectedIndex = 0;
    setStatus("ready");
  } catch (err) {
    if (mine === tasksLoad) setStatus("could not list tasks: " + err, true);
  }
}

function numberField(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function requestBody() {
  const body = { input: $("prompt").value };
  const choice = $("task").value;
  if (choice.startsWith("task:")) body.task = choice.slice(5);
  if (choice.startsWith("model:")) body.model = choice.slice(6);
  if ($("prefer").value) body.prefer = $("prefer").value;
  for (const f of ["max_latency_ms", "max_cost_usd", "max_ttft_ms", "max_tokens"]) {
    const v = numberField(f);
    if (v !== undefined) body[f] = v;
  }
  return body;
}

function resetView() {
  $("route").tBodies[0].replaceChildren();
  $("route-reason").textContent = "—";
  $("output").textContent = "";
  $("reasoning").textContent = "";
  $("tools").textContent = "";
  $("timeline").replaceChildren();
  for (const id of ["m-deployment", "cost", "m-ttft", "latency", "m-tokens", "m-tps",
                    "m-attempts", "m-finish"]) $(id).textContent = "—";
}

function log(ev, cls, text) {
  const li = document.createElement("li");
  li.className = cls;
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = ev.elapsed_ms.toFixed(0) + " ms";
  const what = document.createElement("span");
  what.textContent = text;
  li.append(t, what);
  $("timeline").appendChild(li);
}

function showRoute(ev) {
  $("route-reason").textContent = ev.reason;
  const tbody = $("route").tBodies[0];
  tbody.replaceChildren();
  for (const c of ev.candidates) {
    const tr = document.createElement("tr");
    tr.className = c.deployment === ev.deployment ? "chosen" : (c.eligible ? "" : "ineligible");
    const cells = [c.deployment, c.eligible ? "yes" : "no", c.reason || "",
                   usd(c.estimated_cost_usd), ms(c.estimated_ttft_ms), ms(c.estimated_latency_ms)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      if (i >= 3) td.className = "num";
      if (i === 2) td.className = "reason";
      td.textContent = v;
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  }
}

const toolCalls = [];

function onEvent(ev) {
  switch (ev.type) {
    case "route":
      showRoute(ev);
      log(ev, "route", "route → " + (ev.deployment || "none") + " (" + ev.reason + ")");
      break;
    case "start":
      $("m-deployment").textContent = ev.deployment;
      log(ev, "start", "start " + ev.deployment + " (" + ev.provider + "/" + ev.model +
          "), attempt " + ev.attempt + (ev.hedge ? ", hedge" : ""));
      break;
    case "text":
      $("output").textContent += ev.delta;
      break;
    case "reasoning":
      $("reasoning").textContent += ev.delta;
      break;
    case "tool_call":
      if (!toolCalls[ev.index]) toolCalls[ev.index] = { name: ev.name, args: "" };
      toolCalls[ev.index].args += ev.arguments_delta;
      $("tools").textContent = toolCalls.map((c) => "tool " + c.name + "(" + c.args + ")").join("\n");
      break;
    case "retry":
      log(ev, "retry", "retry " + ev.deployment + " after " + ev.error + ", waiting " +
          Math.round(ev.delay_ms) + " ms (attempt " + ev.attempt + ")");
      break;
    case "fallback":
      log(ev, "fallback", "fallback " + ev.from_deployment + " → " + ev.to_deployment + " after " +
          ev.error + (ev.after_tokens ? ", " + ev.after_tokens + " tokens in, mode " + ev.mode : ""));
      if (ev.mode === "restart") { $("output").textContent = ""; $("reasoning").textContent = ""; }
      $("m-deployment").textContent = ev.to_deployment;
      break;
    case "budget":
      log(ev, "budget", "budget " + ev.scope + ": " + usd(ev.spent_usd) + " of " +
          usd(ev.limit_usd) + " (" + ev.level + ")");
      break;
    case "done":
      $("m-deployment").textContent = ev.deployment;
      $("cost").textContent = usd(ev.cost_usd);
      $("m-ttft").textContent = ms(ev.latency.ttft_ms);
      $("latency").textContent = ms(ev.latency.total_ms);
      $("m-tokens").textContent = ev.usage.input_tokens + " / " + ev.usage.output_tokens +
          (ev.usage.estimated ? " (est.)" : "");
      $("m-tps").textContent = ev.latency.tokens_per_s ? ev.latency.tokens_per_s.toFixed(0) : "—";
      $("m-attempts").textContent = String(ev.attempts);
      $("m-finish").textContent = ev.finish_reason;
      log(ev, "done", "done: " + ev.finish_reason + ", " + usd(ev.cost_usd) + ", " +
          ms(ev.latency.total_ms));
      break;
    case "error":
      log(ev, "error", "error " + ev.code + ": " + ev.message +
          (ev.suggestion ? " — " + ev.suggestion : ""));
      setStatus("error: " + ev.code, true);
      break;
  }
}

// A WHATWG server-sent-events parser over a fetch body: lines end in CRLF, LF or CR,
// `data` lines join with "\n", a blank line dispatches, lines starting with ":" are comments.
async function readEvents(body, dispatch) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "", data = [], type = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let m;
    while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
      // A CR at the very end may be the first half of a CRLF split across reads.
      if (m[0] === "\r" && m.index === buf.length - 1) break;
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length) dispatch(type || "message", data.join("\n"));
        data = []; type = "";
        continue;
      }
      if (line[0] === ":") continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let val = i < 0 ? "" : line.slice(i + 1);
      if (val[0] === " ") val = val.slice(1);
      if (field === "data") data.push(val);
      else if (field === "event") type = val;
    }
  }
}

async function send(e) {
  e.preventDefault();
  resetView();
  toolCalls.length = 0;
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("streaming…");
  let ended = false;
  try {
    const res = await fetch("/v1/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!res.ok) {
      let detail = res.statusText;
      try { const b = await res.json(); detail = (b.error && (b.error.message || b.error)) || JSON.stringify(b); } catch (_) {}
      setStatus(res.status + ": " + detail, true);
      return;
    }
    await readEvents(res.body, (type, data) => {
      const ev = JSON.parse(data);
      onEvent(ev);
      if (ev.type === "done" || ev.type === "error") ended = true;
    });
    if (ended && $("status").className !== "error") setStatus("done");
    else if (!ended) setStatus("stream ended early", true);
  } catch (err) {
    setStatus(err.name === "AbortError" ? "stopped" : "failed: " + err, err.name !== "AbortError");
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("apikey").value = sessionStorage.getItem(KEY_STORE) || "";
$("apikey").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("apikey").value.trim());
  loadTasks();
});
$("form").addEventListener("submit", send);
$("stop").addEventListener("click", () => controller && controller.abort());
loadTasks();
