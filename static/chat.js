// The chat page's core: the shown conversation, streamed replies (send, edit, regenerate, continue), Stop,
// switching between versions of a message, the memory gauge, reconnecting after a dropped connection,
// and the queue position while a reply waits.
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
let streaming = null; // {controller, conversation, finished}
let shown = null; // the open conversation as GET /api/conversations/<id> returned it

const HINT = "Ask anything. Enter sends, Shift+Enter makes a new line.";
const STATUS_TEXT = {
  stopped: "Stopped before the end.",
  length: "Cut off at the reply length limit.",
  interrupted: "Cut off when the server or the model server stopped; this is what was saved.",
  error: "The model failed on this reply.",
};
const CONTINUABLE = ["length", "stopped", "interrupted"];

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
    options.body = typeof body === "string" ? body : JSON.stringify(body);
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

function toolButton(className, text, label, title) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  if (title) button.title = title;
  return button;
}

// The "‹ 2/3 ›" switch between the versions of a message (edits and regenerated replies).
function versionSwitch(message) {
  const versions = message.versions || [message.id];
  const box = document.createElement("span");
  box.className = "versions";
  if (versions.length < 2) return box;
  const at = versions.indexOf(message.id);
  const previous = toolButton("previous-version", "‹", "Previous version");
  const next = toolButton("next-version", "›", "Next version");
  previous.disabled = at === 0;
  next.disabled = at === versions.length - 1;
  previous.dataset.target = versions[at - 1] || "";
  next.dataset.target = versions[at + 1] || "";
  const label = document.createElement("span");
  label.className = "version-label";
  label.textContent = `${at + 1}/${versions.length}`;
  box.append(previous, label, next);
  return box;
}

function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.dataset.id = message.id;
  element.dataset.content = message.content || "";
  const body = document.createElement("div");
  body.className = "body";
  element.appendChild(body);
  if (message.role === "assistant") {
    body.innerHTML = message.html || "";
    if (message.status !== "streaming") enrich(body);
  } else {
    body.textContent = message.content;
  }
  const tools = document.createElement("div");
  tools.className = "message-tools";
  tools.appendChild(versionSwitch(message));
  tools.appendChild(toolButton("copy", "Copy", `Copy this ${message.role === "user" ? "message" : "reply"}`));
  if (message.role === "user") tools.appendChild(toolButton("edit", "Edit", "Edit and resend this message"));
  else tools.appendChild(toolButton("regenerate", "Regenerate", "Write this reply again", "Ctrl+Shift+Enter"));
  if (message.role === "assistant" && CONTINUABLE.includes(message.status) && message.content) {
    tools.appendChild(toolButton("continue", "Continue", "Continue this reply"));
  }
  element.appendChild(tools);
  setStatus(element, message.status);
  return element;
}

function setStatus(element, status) {
  element.classList.toggle("streaming", status === "streaming");
  element.setAttribute("aria-busy", status === "streaming" ? "true" : "false");
  let label = element.querySelector(".status");
  const text = STATUS_TEXT[status];
  if (!text) { if (label) label.remove(); return; }
  if (!label) { label = document.createElement("span"); label.className = "status"; element.appendChild(label); }
  label.textContent = text;
}

function setWaiting(element, text) {
  let line = element.querySelector(".waiting");
  if (!text) { if (line) line.remove(); return; }
  if (!line) { line = document.createElement("span"); line.className = "waiting"; element.appendChild(line); }
  line.textContent = text;
}

function showMessages(messages) {
  messagesBox.replaceChildren();
  if (!messages.length) {
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = HINT;
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

function showExportLinks(id) {
  document.getElementById("export-one").hidden = !id;
  if (!id) return;
  document.getElementById("export-json").href = `/api/conversations/${id}/export?format=json`;
  document.getElementById("export-markdown").href = `/api/conversations/${id}/export?format=markdown`;
}

function showConversation(data) {
  shown = data;
  showMessages(data.messages);
  showGauge(data.memory);
}

async function open(id, push = true) {
  current = id;
  shown = null;
  if (typeof markActive === "function") markActive();
  if (push) history.pushState({ id }, "", id ? `/c/${id}` : "/");
  showNotice("");
  showExportLinks(id);
  if (!id) { showMessages([]); showGauge(null); return; }
  try {
    const data = await api("GET", `/api/conversations/${id}`);
    if (current !== id) return;
    showConversation(data);
    if (data.generating && !streaming) followStoredReply(id); // written for a tab that lost its connection
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

function queueText(data) {
  if (!data.position) return "";
  const ahead = data.position - 1;
  const writing = data.running ? `${data.running} repl${data.running === 1 ? "y is" : "ies are"} being written` : "";
  return `Waiting for the model: yours is number ${data.position} in the queue` +
    (ahead || writing ? ` (${[writing, ahead ? `${ahead} waiting before it` : ""].filter(Boolean).join(", ")})` : "") +
    ".";
}

// Streams one reply. `path` is the route that writes it; `place(start)` puts its elements on the page and
// returns the reply element (and how much text it already holds, when continuing).
async function streamReply(conversation, path, body, place) {
  showNotice("");
  const controller = new AbortController();
  let markFinished;
  streaming = { controller, conversation, finished: new Promise((resolve) => { markFinished = resolve; }) };
  setBusy(true);
  let reply = null, pending = null, prefix = "", started = false, dropped = false;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF_TOKEN },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event, data) => {
      if (event === "start") {
        started = true;
        const hint = messagesBox.querySelector(".hint");
        if (hint) hint.remove();
        ({ reply, prefix } = place(data));
        pending = document.createElement("span");
        reply.querySelector(".body").appendChild(pending);
        setStatus(reply, "streaming");
        showGauge(data.memory);
        const link = list.querySelector(`li[data-id="${conversation}"] .title`);
        if (link && data.title) link.textContent = data.title;
      } else if (event === "queue") {
        setWaiting(reply, queueText(data));
      } else if (event === "token") {
        setWaiting(reply, "");
        if (data.html !== undefined) {
          const replyBody = reply.querySelector(".body");
          replyBody.innerHTML = data.html;
          pending = document.createElement("span");
          replyBody.appendChild(pending);
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
    } else if (started) {
      dropped = true; // the connection broke mid-reply: the server goes on while we look for it
    } else {
      showNotice(error.message);
    }
  } finally {
    streaming = null;
    setBusy(false);
    markFinished();
  }
  if (dropped) {
    await followStoredReply(conversation);
  } else if (started && current === conversation) {
    await refresh(conversation); // versions, tools and highlighting from the stored state
  }
  if (current === conversation) input.focus();
  return started;
}

async function refresh(conversation) {
  try {
    const data = await api("GET", `/api/conversations/${conversation}`);
    if (current === conversation) showConversation(data);
    return data;
  } catch (error) {
    return null;
  }
}

// After a dropped connection: poll the stored conversation (which keeps the reply going on the
// server) and show the reply as it is saved, until it is finished.
async function followStoredReply(conversation) {
  showNotice("");
  setBusy(true);
  let delay = 1000, lastText = null;
  const banner = document.createElement("p");
  banner.className = "reconnecting";
  banner.setAttribute("role", "status");
  banner.textContent = "The connection dropped; reconnecting to show the rest of the reply…";
  messagesBox.after(banner);
  try {
    for (let tries = 0; tries < 600 && current === conversation; tries++) {
      let data = null;
      try {
        data = await api("GET", `/api/conversations/${conversation}`);
      } catch (error) {
        banner.textContent = "The connection dropped; trying again…";
      }
      if (data) {
        delay = 1000;
        banner.textContent = data.generating ? "Reconnected; the reply is still being written…" : "";
        const last = data.messages[data.messages.length - 1];
        if (!data.generating) { showConversation(data); break; }
        if (last && last.content !== lastText) { lastText = last.content; showConversation(data); }
      } else {
        delay = Math.min(delay * 2, 8000);
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  } finally {
    banner.remove();
    setBusy(false);
  }
}

async function send(text) {
  const conversation = current || await newConversation();
  const firstExchange = !shown || shown.messages.length === 0;
  const started = await streamReply(conversation, `/api/conversations/${conversation}/messages`,
    { content: text }, (data) => {
      input.value = "";
      messagesBox.appendChild(messageElement(data.user));
      const reply = messageElement({ ...data.reply, html: "" });
      messagesBox.appendChild(reply);
      return { reply, prefix: "" };
    });
  if (started && firstExchange && app.dataset.titles === "on") nameConversation(conversation);
}

// After the first exchange the model names the conversation (unless it was renamed meanwhile).
async function nameConversation(conversation) {
  try {
    const data = await api("POST", `/api/conversations/${conversation}/title`);
    const link = list.querySelector(`li[data-id="${conversation}"] .title`);
    if (link) link.textContent = data.conversation.title;
  } catch (error) { /* the first message stays the title */ }
}

function removeFrom(element) {
  while (element.nextSibling) element.nextSibling.remove();
  element.remove();
}

async function regenerate(messageElementToReplace) {
  if (streaming || !current) return;
  const id = messageElementToReplace.dataset.id;
  await streamReply(current, `/api/conversations/${current}/messages/${id}/regenerate`, {}, (data) => {
    const reply = messageElement({ ...data.reply, html: "" });
    messagesBox.insertBefore(reply, messageElementToReplace);
    removeFrom(messageElementToReplace);
    return { reply, prefix: "" };
  });
}

async function continueReply(element) {
  if (streaming || !current) return;
  await streamReply(current, `/api/conversations/${current}/messages/${element.dataset.id}/continue`, {}, () => {
    const continueButton = element.querySelector(".continue");
    if (continueButton) continueButton.remove();
    setStatus(element, "streaming");
    return { reply: element, prefix: element.dataset.content };
  });
}

function startEditing(element) {
  if (element.querySelector(".edit-box")) return;
  const body = element.querySelector(".body");
  const box = document.createElement("div");
  box.className = "edit-box";
  const area = document.createElement("textarea");
  area.value = element.dataset.content;
  area.setAttribute("aria-label", "Edited message");
  area.rows = Math.min(10, area.value.split("\n").length + 1);
  const save = toolButton("primary save-edit", "Send", "Send the edited message");
  const cancel = toolButton("cancel-edit", "Cancel", "Keep the message as it was");
  box.append(area, save, cancel);
  body.hidden = true;
  element.insertBefore(box, body.nextSibling);
  area.focus();
  const close = () => { box.remove(); body.hidden = false; };
  cancel.addEventListener("click", close);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); close(); }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); save.click(); }
  });
  save.addEventListener("click", async () => {
    const text = area.value;
    if (!text.trim() || streaming) return;
    await streamReply(current, `/api/conversations/${current}/messages/${element.dataset.id}/edit`,
      { content: text }, (data) => {
        const user = messageElement(data.user);
        messagesBox.insertBefore(user, element);
        removeFrom(element);
        const reply = messageElement({ ...data.reply, html: "" });
        messagesBox.appendChild(reply);
        return { reply, prefix: "" };
      });
  });
}

async function showVersion(target) {
  if (streaming || !current || !target) return;
  try {
    showConversation(await api("POST", `/api/conversations/${current}/branch`, { message_id: Number(target) }));
  } catch (error) { showNotice(error.message); }
}

function lastReply() {
  const replies = messagesBox.querySelectorAll(".message.assistant");
  return replies.length ? replies[replies.length - 1] : null;
}

async function stop() {
  if (!streaming) return;
  const running = streaming;
  stopButton.disabled = true;
  // Ask the server to stop; the stream then ends with the stored partial reply. Closing the
  // connection stops it too, so that is the fallback when the server does not answer soon.
  const fallback = setTimeout(() => running.controller.abort(), 5000);
  try {
    await api("POST", `/api/conversations/${running.conversation}/stop`);
  } catch (e) {
    running.controller.abort();
  }
  await running.finished;
  clearTimeout(fallback);
  stopButton.disabled = false;
}

messagesBox.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  const element = event.target.closest(".message");
  if (!button || !element) return;
  if (button.classList.contains("copy")) copyText(element.dataset.content, button);
  else if (button.classList.contains("edit")) startEditing(element);
  else if (button.classList.contains("regenerate")) regenerate(element);
  else if (button.classList.contains("continue")) continueReply(element);
  else if (button.classList.contains("previous-version") || button.classList.contains("next-version")) {
    showVersion(button.dataset.target);
  }
});

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
showExportLinks(current);
if (current) open(current, false);
watchModel();
