// The chat page: conversation list, streamed replies, Stop, and the memory gauge.
// Text from users and titles is only ever set with textContent; assistant replies are
// set as HTML only when the server has rendered and sanitised them.
"use strict";

const app = document.getElementById("app");
const list = document.getElementById("conversation-list");
const messagesBox = document.getElementById("messages");
const input = document.getElementById("input");
const form = document.getElementById("composer");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const notice = document.getElementById("notice");

let current = app.dataset.current || null;
let streaming = null; // {controller, conversation}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

// Every state-changing request carries the page's CSRF token (checked by Flask-WTF).
const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;

async function api(method, path, body) {
  const options = { method, headers: { "X-CSRFToken": CSRF_TOKEN } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response.status === 204 ? null : response.json();
}

async function errorText(response) {
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) return data.error.message;
  } catch (e) { /* not JSON */ }
  return `The server answered ${response.status}; try again.`;
}

function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.dataset.id = message.id;
  const body = document.createElement("div");
  body.className = "body";
  element.appendChild(body);
  if (message.role === "assistant") body.innerHTML = message.html || "";
  else body.textContent = message.content;
  setStatus(element, message.status);
  return element;
}

function setStatus(element, status) {
  element.classList.toggle("streaming", status === "streaming");
  let label = element.querySelector(".status");
  const text = {
    stopped: "Stopped before the end.",
    interrupted: "Cut off when the server or the model server stopped; this is what was saved.",
    error: "The model failed on this reply.",
  }[status];
  if (!text) { if (label) label.remove(); return; }
  if (!label) { label = document.createElement("span"); label.className = "status"; element.appendChild(label); }
  label.textContent = text;
}

function showMessages(messages) {
  messagesBox.replaceChildren();
  if (!messages.length) {
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = "Ask anything. Enter sends, Shift+Enter makes a new line.";
    messagesBox.appendChild(hint);
  }
  for (const message of messages) messagesBox.appendChild(messageElement(message));
  scrollDown();
}

function scrollDown() { messagesBox.scrollTop = messagesBox.scrollHeight; }

function showGauge(memory) {
  const gauge = document.getElementById("gauge");
  if (!memory) { gauge.hidden = true; return; }
  gauge.hidden = false;
  document.getElementById("gauge-meter").value = memory.used / memory.budget;
  document.getElementById("gauge-text").textContent = `${memory.used} / ${memory.budget} tokens`;
  gauge.title = "Tokens the model reads for the next reply, of the prompt budget. " +
    "When a conversation outgrows it, the oldest turns are left out of memory (they stay stored here).";
  const n = memory.dropped;
  document.getElementById("gauge-dropped").textContent =
    n ? `${n} earlier message${n === 1 ? " is" : "s are"} outside memory` : "";
}

function sidebarItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  const link = document.createElement("a");
  link.className = "title";
  link.href = `/c/${conversation.id}`;
  link.textContent = conversation.title;
  const rename = document.createElement("button");
  rename.type = "button"; rename.className = "rename"; rename.title = "Rename"; rename.textContent = "✎";
  rename.setAttribute("aria-label", "Rename");
  const remove = document.createElement("button");
  remove.type = "button"; remove.className = "delete"; remove.title = "Delete"; remove.textContent = "×";
  remove.setAttribute("aria-label", "Delete");
  item.append(link, rename, remove);
  return item;
}

function markActive() {
  for (const item of list.children) item.classList.toggle("active", item.dataset.id === current);
}

async function open(id, push = true) {
  current = id;
  markActive();
  if (push) history.pushState({ id }, "", id ? `/c/${id}` : "/");
  showNotice("");
  if (!id) { showMessages([]); showGauge(null); return; }
  try {
    const data = await api("GET", `/api/conversations/${id}`);
    showMessages(data.messages);
    showGauge(data.memory);
  } catch (error) {
    showNotice(error.message);
  }
}

async function newConversation() {
  const conversation = await api("POST", "/api/conversations", {});
  list.prepend(sidebarItem(conversation));
  await open(conversation.id);
  input.focus();
  return conversation.id;
}

function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
}

// Reads a text/event-stream body and calls handle(event, data) for each event.
async function readEvents(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handle(event, JSON.parse(data));
    }
  }
}

async function send(text) {
  showNotice("");
  const conversation = current || await newConversation();
  const controller = new AbortController();
  let markFinished;
  streaming = { controller, conversation, finished: new Promise((resolve) => { markFinished = resolve; }) };
  setBusy(true);
  let reply = null, pending = null, full = "";
  try {
    const response = await fetch(`/api/conversations/${conversation}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF_TOKEN },
      body: JSON.stringify({ content: text }),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    input.value = "";
    await readEvents(response, (event, data) => {
      if (event === "start") {
        const hint = messagesBox.querySelector(".hint");
        if (hint) hint.remove();
        messagesBox.appendChild(messageElement(data.user));
        reply = messageElement({ id: data.reply_id, role: "assistant", html: "", status: "streaming" });
        pending = document.createElement("span");
        reply.querySelector(".body").appendChild(pending);
        messagesBox.appendChild(reply);
        showGauge(data.memory);
        const link = list.querySelector(`li[data-id="${conversation}"] .title`);
        if (link) link.textContent = data.title;
      } else if (event === "token") {
        full += data.text;
        if (data.html !== undefined) {
          const body = reply.querySelector(".body");
          body.innerHTML = data.html;
          pending = document.createElement("span");
          body.appendChild(pending);
        } else {
          pending.textContent += data.text;
        }
      } else if (event === "done") {
        reply.querySelector(".body").innerHTML = data.message.html;
        setStatus(reply, data.message.status);
        showGauge(data.memory);
      } else if (event === "error") {
        setStatus(reply, data.status || "error");
        showNotice(data.message);
      }
      scrollDown();
    });
  } catch (error) {
    if (error.name === "AbortError") {
      if (reply) setStatus(reply, "stopped");
    } else {
      showNotice(error.message);
    }
  } finally {
    streaming = null;
    setBusy(false);
    markFinished();
    input.focus();
  }
}

async function stop() {
  if (!streaming) return;
  const current = streaming;
  stopButton.disabled = true;
  // Ask the server to stop; the stream then ends with the stored partial reply. Closing the
  // connection stops it too, so that is the fallback when the server does not answer soon.
  const fallback = setTimeout(() => current.controller.abort(), 5000);
  try {
    await api("POST", `/api/conversations/${current.conversation}/stop`);
  } catch (e) {
    current.controller.abort();
  }
  await current.finished;
  clearTimeout(fallback);
  stopButton.disabled = false;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text.trim() || streaming) return;
  send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", stop);
document.getElementById("new-chat").addEventListener("click", () => newConversation().catch((e) => showNotice(e.message)));

list.addEventListener("click", async (event) => {
  const item = event.target.closest("li");
  if (!item) return;
  const id = item.dataset.id;
  if (event.target.closest(".title")) {
    event.preventDefault();
    if (!streaming) open(id);
  } else if (event.target.closest(".rename")) {
    const title = window.prompt("New title", item.querySelector(".title").textContent);
    if (!title || !title.trim()) return;
    try {
      const updated = await api("PATCH", `/api/conversations/${id}`, { title });
      item.querySelector(".title").textContent = updated.title;
    } catch (error) { showNotice(error.message); }
  } else if (event.target.closest(".delete")) {
    if (!window.confirm("Delete this conversation? This cannot be undone.")) return;
    try {
      await api("DELETE", `/api/conversations/${id}`);
      item.remove();
      if (id === current) open(null);
    } catch (error) { showNotice(error.message); }
  }
});

window.addEventListener("popstate", (event) => open((event.state && event.state.id) || null, false));

// Until the model is ready, say so (and why, if loading failed) instead of failing on send.
async function watchModel() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    if (response.ok) {
      if (notice.dataset.model) {
        delete notice.dataset.model;
        showNotice("");
        if (current) open(current, false); // now the memory gauge can be counted
      }
      return;
    }
    notice.dataset.model = "1";
    if (health.status === "error") {
      showNotice(health.error);
      return;
    }
    showNotice("The model is still loading; you can type, and send once it is ready.");
  } catch (error) {
    showNotice("The server is not answering; check that it is running.");
  }
  setTimeout(watchModel, 3000);
}

history.replaceState({ id: current }, "", current ? `/c/${current}` : "/");
if (current) open(current, false);
watchModel();
