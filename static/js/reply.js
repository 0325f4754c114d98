// One reply streaming in: its events (start, queue, token, done, error), the busy state of the message box,
// and, when the connection drops mid-reply, following the stored reply until it is whole.
import { CSRF_TOKEN, api, errorText, reach, readEvents } from "./api.js";
import { input, messagesBox, sendButton, showNotice, state, stopButton } from "./page.js";
import { writeNotes } from "./notes.js";
import { messageElement, scrollDown, setStatus, setWaiting, showConversation, showGauge } from "./render.js";

// The finished reply is announced once (the message list is not a live region: it would read every token).
const ANNOUNCED_CHARS = 300;
function announce(text) {
  document.getElementById("announcer").textContent = text;
}

export function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
}

function queueText(data) {
  if (!data.position) return "";
  const ahead = data.position - 1;
  const writing = data.running ? `${data.running} repl${data.running === 1 ? "y is" : "ies are"} being written` : "";
  return `Waiting for the model: yours is number ${data.position} in the queue` +
    (ahead || writing ? ` (${[writing, ahead ? `${ahead} waiting before it` : ""].filter(Boolean).join(", ")})` : "") +
    ".";
}

// Where the words not yet rendered go, so the text grows in place: inside the last paragraph, list item, cell,
// heading or code block of the HTML so far; on a line of their own only when the text just began a new paragraph.
const CONTAINERS = new Set(["P", "UL", "OL", "LI", "BLOCKQUOTE", "PRE", "CODE", "TABLE", "THEAD", "TBODY", "TR",
  "TD", "TH", "H1", "H2", "H3", "H4", "H5", "H6", "DIV"]);

export function placePending(body, text) {
  const pending = document.createElement("span");
  pending.className = "pending";
  let at = body;
  if (!/\n\s*\n\s*$/.test(text)) {
    while (at.lastElementChild && CONTAINERS.has(at.lastElementChild.tagName)) at = at.lastElementChild;
  }
  at.appendChild(pending);
  return pending;
}

// Streams one reply. `path` is the route that writes it; `place(start)` puts its elements on the page and
// returns the reply element (and how much text it already holds, when continuing).
// `retry`, when given, is offered as Try again if the reply is refused for a passing reason (busy, too many,
// unreachable).
export async function streamReply(conversation, path, body, place, retry) {
  showNotice("");
  const controller = new AbortController();
  let markFinished;
  const record = { controller, conversation, finished: new Promise((resolve) => { markFinished = resolve; }) };
  const passing = (error) => !error.status || error.status >= 500 || error.status === 429 || error.status === 409;
  state.streaming = record;
  setBusy(true);
  let reply = null, pending = null, prefix = "", started = false, dropped = false, text = "";
  // Whether this reply's chat is the one on the screen: the person may open another while it is written (it goes
  // on in the background; see moveToBackground), and only the open chat's page, gauge and voice follow it.
  const here = () => state.current === conversation;
  // Auto-read and Talk mode hear the reply's text as it grows (speak.js).
  const told = (done) => reply && here() && document.dispatchEvent(new CustomEvent("reply-text",
    { detail: { element: reply, text, from: prefix.length, done } }));
  try {
    const response = await reach(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF_TOKEN },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw Object.assign(new Error(await errorText(response)), { status: response.status });
    await readEvents(response, (event, data) => {
      if (event === "start") {
        started = true;
        if (here()) {
          const hint = messagesBox.querySelector(".hint");
          if (hint) hint.remove();
          ({ reply, prefix } = place(data));
          scrollDown(true); // the person just sent this: show it, and follow the reply
          showGauge(data.memory);
        } else { // left before the reply started: it is written off screen
          reply = messageElement({ ...data.reply, html: "" });
        }
        record.reply = reply;
        text = prefix;
        pending = placePending(reply.querySelector(".body"), text);
        setStatus(reply, "streaming");
        if (data.title) {
          document.dispatchEvent(new CustomEvent("conversation-titled", { detail: { id: conversation, title: data.title } }));
        }
      } else if (event === "queue") {
        setWaiting(reply, queueText(data));
      } else if (event === "token") {
        setWaiting(reply, "");
        text += data.text;
        told(false);
        if (data.html !== undefined) {
          const replyBody = reply.querySelector(".body");
          replyBody.innerHTML = data.html;
          pending = placePending(replyBody, text);
        } else {
          pending.textContent += data.text;
        }
      } else if (event === "done") {
        text = data.message.content;
        reply.querySelector(".body").innerHTML = data.message.html;
        setStatus(reply, data.message.status);
        if (here()) {
          showGauge(data.memory);
          announce(`The reply is written: ${text.slice(0, ANNOUNCED_CHARS)}`);
        }
        writeNotes(conversation, data.memory);
      } else if (event === "error") {
        setStatus(reply, data.status || "error");
        if (here()) showNotice(data.message);
      }
      if (here()) scrollDown();
    });
  } catch (error) {
    if (error.name === "AbortError") {
      if (reply) setStatus(reply, "stopped");
    } else if (started) {
      dropped = true; // the connection broke mid-reply: the server goes on while we look for it
    } else if (here()) {
      showNotice(error.message, retry && passing(error) ? retry : undefined); // refused before it began
    }
  } finally {
    if (reply && !dropped) told(true); // done, stopped or failed: what is whole is spoken, then reading ends
    if (state.streaming === record) {
      state.streaming = null;
      setBusy(false);
    }
    state.background.delete(conversation);
    document.dispatchEvent(new CustomEvent("reply-writing", { detail: { id: conversation, writing: false } }));
    markFinished();
  }
  if (dropped && here()) {
    await followStoredReply(conversation);
  } else if (started && here()) {
    await refresh(conversation); // versions, tools and highlighting from the stored state
  }
  if (here()) input.focus();
  return started;
}

// The person opens another chat while a reply is written: it goes on, off screen, and its row says so.
export function moveToBackground() {
  const record = state.streaming;
  if (!record) return;
  state.streaming = null;
  setBusy(false);
  state.background.set(record.conversation, record);
  document.dispatchEvent(new CustomEvent("reply-writing", { detail: { id: record.conversation, writing: true } }));
}

// Back in a chat whose reply is still being written: the live reply takes the place of its stored copy.
export function bringBack(conversation) {
  const record = state.background.get(conversation);
  if (!record) return false;
  state.background.delete(conversation);
  state.streaming = record;
  setBusy(true);
  document.dispatchEvent(new CustomEvent("reply-writing", { detail: { id: conversation, writing: false } }));
  if (record.reply) {
    const stored = messagesBox.querySelector(`.message[data-id="${record.reply.dataset.id}"]`);
    if (stored) stored.replaceWith(record.reply);
    else messagesBox.appendChild(record.reply);
  }
  scrollDown(true);
  return true;
}

export async function refresh(conversation) {
  try {
    const data = await api("GET", `/api/conversations/${conversation}`);
    if (state.current === conversation) showConversation(data);
    return data;
  } catch (error) {
    return null;
  }
}

// After a dropped connection: poll the stored conversation (which keeps the reply going on the
// server) and show the reply as it is saved, until it is finished.
export async function followStoredReply(conversation) {
  showNotice("");
  setBusy(true);
  let delay = 1000, lastText = null;
  const banner = document.createElement("p");
  banner.className = "reconnecting";
  banner.setAttribute("role", "status");
  banner.textContent = "The connection dropped; reconnecting to show the rest of the reply…";
  messagesBox.after(banner);
  try {
    for (let tries = 0; tries < 600 && state.current === conversation; tries++) {
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
