// The page: three tabs over the same server's OpenAI-compatible API. Plain JavaScript, no build step, nothing
// fetched from elsewhere, so it works offline.
"use strict";

const $ = (id) => document.getElementById(id);

// What each tab needs, and the command that loads a model for it when none is loaded.
const TABS = {
  chat: { capability: "chat", hint: "Chat needs a chat model: transformerkit serve smollm2" },
  translate: { capability: "translations", hint: "Translate needs a translator: transformerkit serve runs/de-en" },
  search: { capability: "embeddings", hint: "Search needs a sentence encoder: transformerkit serve all-minilm-l6-v2" },
};

// ------------------------------------------------------------------------------------------------ the API

let apiKey = sessionStorage.getItem("transformerkit-api-key");

async function call(path, body, signal) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, body === undefined ? { headers } :
    { method: "POST", headers, body: JSON.stringify(body), signal });
  if (response.status === 401) {
    const key = window.prompt("This server wants its API key:");
    if (key) {
      apiKey = key;
      sessionStorage.setItem("transformerkit-api-key", key);
      return call(path, body, signal);
    }
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not an API error body */ }
    throw new Error(message);
  }
  return response;
}

// Server-sent events: yields each `data:` payload, parsed, until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function status(text) { $("status").textContent = text; }

function fill(select, ids) {
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
}

// ------------------------------------------------------------------------------------------------ tabs

function show(panel) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.panel === panel;
    tab.setAttribute("aria-selected", String(selected));
    $(tab.dataset.panel).hidden = !selected;
  }
}

async function start() {
  let models = [];
  try {
    models = (await (await call("/v1/models")).json()).data;
  } catch (error) {
    status(`cannot list the models: ${error.message}`);
  }
  const hints = [];
  let first = null;
  for (const [panel, { capability, hint }] of Object.entries(TABS)) {
    const ids = models.filter((m) => (m.capabilities || []).includes(capability)).map((m) => m.id);
    const tab = $(`tab-${panel}`);
    fill($(`${panel}-model`), ids);
    tab.disabled = ids.length === 0;
    tab.title = ids.length ? `${ids.length} model(s): ${ids.join(", ")}` : hint;
    if (ids.length === 0) hints.push(hint);
    else first = first || panel;
    tab.addEventListener("click", () => show(panel));
  }
  $("hints").replaceChildren(...hints.map((text) => {
    const item = document.createElement("li");
    const [what, command] = text.split(": ");
    item.append(`${what}: `);
    const code = document.createElement("code");
    code.textContent = command;
    item.append(code);
    return item;
  }));
  if (first) show(first);
  else status("no model is loaded");
}

// ------------------------------------------------------------------------------------------------ chat

const conversation = [];
let stopper = null;

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

async function send(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || stopper) return;
  $("chat-input").value = "";
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant", "");
  reply.classList.add("streaming");
  stopper = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  let content = "";
  let failed = false;
  const request = { model: $("chat-model").value, messages: conversation, stream: true,
                    temperature: Number($("chat-temperature").value) };
  if ($("chat-max-tokens").value) request.max_tokens = Number($("chat-max-tokens").value);  // else the server's
  try {
    const response = await call("/v1/chat/completions", request, stopper.signal);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (delta) {
        content += delta;
        reply.textContent = content;
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      failed = !content;
      bubble("error", error.message);
    }
  } finally {
    if (failed) {  // nothing came back: the message was not heard, so it leaves the conversation
      conversation.pop();
      reply.remove();
    } else {
      conversation.push({ role: "assistant", content });  // a stopped reply stays as far as it got
    }
    reply.classList.remove("streaming");
    stopper = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

$("chat-form").addEventListener("submit", send);
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("chat-stop").addEventListener("click", () => stopper && stopper.abort());
$("chat-new").addEventListener("click", () => {
  conversation.length = 0;
  $("chat-log").replaceChildren();
});

// ------------------------------------------------------------------------------------------------ translate

let translations = [];

async function translate(event) {
  event.preventDefault();
  const sentences = $("translate-input").value.split("\n").filter((s) => s.trim());
  if (!sentences.length) return;
  status("translating...");
  try {
    const response = await call("/v1/translations/text", {
      model: $("translate-model").value, input: sentences, beam: Number($("translate-beam").value), attention: true,
    });
    translations = (await response.json()).data;
    $("translate-output").replaceChildren(...translations.map((item, i) => {
      const li = document.createElement("li");
      li.innerHTML = "<span class=source></span><span class=arrow> → </span><strong class=translation></strong>";
      li.querySelector(".source").textContent = sentences[i];
      li.querySelector(".translation").textContent = item.translation;
      return li;
    }));
    fill($("attention-sentence"), translations.map((_, i) => String(i + 1)));
    const layers = translations[0].attention.layers;
    fill($("attention-layer"), layers.map((_, i) => String(i + 1)));
    $("attention-layer").value = String(layers.length);  // the last layer aligns best, usually
    fill($("attention-head"), ["mean", ...layers[0].map((_, i) => String(i + 1))]);
    $("attention-controls").hidden = false;
    draw();
    status("");
  } catch (error) {
    status(`translation failed: ${error.message}`);
  }
}

// A colour from dark purple (0) to yellow (1), viridis-like.
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(value) {
  const x = Math.min(Math.max(value, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const t = x - i;
  const [a, b] = [STOPS[i], STOPS[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * t)).join(",")})`;
}

function draw() {
  const item = translations[Number($("attention-sentence").value) - 1];
  if (!item) return;
  const { source_tokens: source, target_tokens: target, layers } = item.attention;
  const heads = layers[Number($("attention-layer").value) - 1];
  const head = $("attention-head").value;
  const matrix = head === "mean"
    ? heads[0].map((row, q) => row.map((_, k) => heads.reduce((sum, h) => sum + h[q][k], 0) / heads.length))
    : heads[Number(head) - 1];  // (target tokens, source tokens)
  const canvas = $("attention-map");
  const context = canvas.getContext("2d");
  context.font = "13px sans-serif";
  const labelWidth = Math.max(...target.map((t) => context.measureText(t).width)) + 12;
  const labelHeight = Math.max(...source.map((t) => context.measureText(t).width)) + 12;
  const cell = Math.max(18, Math.min(40, Math.floor(640 / Math.max(source.length, target.length))));
  canvas.width = labelWidth + cell * source.length + 8;
  canvas.height = labelHeight + cell * target.length + 8;
  context.font = "13px sans-serif";
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(...matrix.flat()) || 1;  // the strongest weight is yellow, as in viz.plot_alignments
  matrix.forEach((row, q) => row.forEach((weight, k) => {
    context.fillStyle = colour(weight / top);
    context.fillRect(labelWidth + k * cell, labelHeight + q * cell, cell - 1, cell - 1);
  }));
  context.fillStyle = "#222";
  context.textBaseline = "middle";
  context.textAlign = "right";
  target.forEach((token, q) => context.fillText(token, labelWidth - 6, labelHeight + q * cell + cell / 2));
  source.forEach((token, k) => {
    context.save();
    context.translate(labelWidth + k * cell + cell / 2, labelHeight - 6);
    context.rotate(-Math.PI / 2);
    context.textAlign = "left";
    context.fillText(token, 0, 0);
    context.restore();
  });
  canvas.dataset.cells = String(source.length * target.length);
}

$("translate-form").addEventListener("submit", translate);
for (const id of ["attention-sentence", "attention-layer", "attention-head"]) $(id).addEventListener("change", draw);

// ------------------------------------------------------------------------------------------------ search

const vectors = new Map();  // model + sentence -> unit vector, so a corpus is embedded once

function unit(vector) {
  const norm = Math.hypot(...vector) || 1;
  return vector.map((v) => v / norm);
}

async function search(event) {
  event.preventDefault();
  const model = $("search-model").value;
  const corpus = [...new Set($("search-corpus").value.split("\n").map((s) => s.trim()).filter(Boolean))];
  const query = $("search-query").value.trim();
  if (!corpus.length || !query) return;
  const missing = [...corpus, query].filter((s) => !vectors.has(`${model}\n${s}`));
  status("embedding...");
  try {
    if (missing.length) {
      const response = await call("/v1/embeddings", { model, input: missing });
      for (const item of (await response.json()).data) vectors.set(`${model}\n${missing[item.index]}`, unit(item.embedding));
    }
    const q = vectors.get(`${model}\n${query}`);
    const ranked = corpus.map((sentence) => {
      const v = vectors.get(`${model}\n${sentence}`);
      return { sentence, score: v.reduce((sum, x, i) => sum + x * q[i], 0) };
    }).sort((a, b) => b.score - a.score).slice(0, Number($("search-k").value) || 5);
    $("search-results").replaceChildren(...ranked.map(({ sentence, score }) => {
      const li = document.createElement("li");
      li.innerHTML = "<span class=score></span> <span class=sentence></span>";
      li.querySelector(".score").textContent = score.toFixed(4);
      li.querySelector(".sentence").textContent = sentence;
      return li;
    }));
    status("");
  } catch (error) {
    status(`search failed: ${error.message}`);
  }
}

$("search-form").addEventListener("submit", search);
$("search-file").addEventListener("change", async () => {
  const file = $("search-file").files[0];
  if (file) $("search-corpus").value = await file.text();
});

start();
