// The chat page: keeps the conversation (also in localStorage), streams replies from
// /v1/chat/completions with fetch and server-sent events, renders them as Markdown, and
// stops a reply with an AbortController (the server then cancels the generation).
import { render, escapeHTML } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const store = window.localStorage;
let history = JSON.parse(store.getItem("qwen-tune.history") || "[]");
let controller = null;

const fields = ["system", "temperature", "top_p", "max_tokens", "seed", "api_key"];
for (const f of fields) {
  $(f).value = store.getItem(`qwen-tune.${f}`) || "";
  $(f).addEventListener("change", () => store.setItem(`qwen-tune.${f}`, $(f).value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("api_key").value) h.Authorization = `Bearer ${$("api_key").value}`;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (role === "assistant") div.innerHTML = render(text);
  else div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function redraw() {
  $("messages").replaceChildren();
  for (const m of history) addMessage(m.role, m.content);
}

function save() { store.setItem("qwen-tune.history", JSON.stringify(history)); }

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("input").disabled = on;
}

async function send(text) {
  history.push({ role: "user", content: text });
  save();
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  // no model until /v1/models has named it: the server then answers with the one it serves
  const body = { stream: true, stream_options: { include_usage: true }, messages: [] };
  if ($("model").dataset.id) body.model = $("model").dataset.id;
  if ($("system").value.trim()) body.messages.push({ role: "system", content: $("system").value });
  body.messages.push(...history);
  for (const [f, parse] of [["temperature", parseFloat], ["top_p", parseFloat], ["max_tokens", (v) => parseInt(v, 10)], ["seed", (v) => parseInt(v, 10)]]) {
    if ($(f).value !== "") body[f] = parse($(f).value);
  }
  controller = new AbortController();
  busy(true);
  $("status").textContent = "generating...";
  let reply = "";
  let finish = "";
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) {
      const err = await res.json().catch(() => ({ error: { message: res.statusText } }));
      throw new Error(`${res.status}: ${err.error?.message || res.statusText}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const choice = chunk.choices?.[0];
          if (choice?.delta?.content) {
            reply += choice.delta.content;
            out.innerHTML = render(reply);
            out.scrollIntoView({ block: "end" });
          }
          if (choice?.finish_reason) finish = choice.finish_reason;
          if (chunk.usage) $("status").textContent = `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} reply tokens`;
        }
      }
    }
    if (finish === "length") $("status").textContent += " (cut at max tokens)";
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      out.classList.add("error");
      out.innerHTML = escapeHTML(String(e.message || e));
      $("status").textContent = "";
      history.pop();
      save();
      return;
    }
  } finally {
    out.classList.remove("streaming");
    controller = null;
    busy(false);
    $("input").focus();
  }
  history.push({ role: "assistant", content: reply });
  save();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller?.abort());
$("new").addEventListener("click", () => { controller?.abort(); history = []; save(); redraw(); $("status").textContent = ""; });
$("toggle-settings").addEventListener("click", () => {
  const s = $("settings");
  s.hidden = !s.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!s.hidden));
});

fetch("/v1/models", { headers: headers() })
  .then((r) => (r.ok ? r.json() : null))
  .then((m) => { if (m?.data?.[0]) { $("model").textContent = m.data[0].id; $("model").dataset.id = m.data[0].id; } })
  .catch(() => {});
redraw();
