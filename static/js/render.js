// Showing a conversation: its messages (Markdown already rendered and sanitised by the server), the versions
// switch and tools of each message, pins, what a reply recalled, notes of earlier messages, reply statuses, and the
// memory gauge.
// Text from users and titles is only ever set with textContent; assistant replies are
// set as HTML only when the server has rendered and sanitised them.
import { documentChips } from "./attach.js";
import { config, messagesBox, state } from "./page.js";
import { enrich } from "./rich.js";
import { readingButtons } from "./speak.js";

// The empty page: what to do (in words for the device: a phone has no Enter key to speak of) and a few examples.
const TOUCH = window.matchMedia("(pointer: coarse)").matches;
const HINT = TOUCH ? "Ask anything: type a message and tap Send, or hold the microphone to talk."
  : "Ask anything. Enter sends, Shift+Enter makes a new line.";
const EXAMPLES = ["Explain how a rainbow forms, simply.", "Write a short, friendly note to a neighbour.",
  "Plan three easy dinners for this week."];
const STATUS_TEXT = {
  stopped: "Stopped before the end.",
  length: "Cut off at the reply length limit.",
  interrupted: "Cut off when the server or the model server stopped; this is what was saved.",
  error: "The model failed on this reply.",
};

export function toolButton(className, text, label, title) {
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

const EXCERPT_CHARS = 60;

function excerpt(text) {
  const line = (text || "").split(/\s+/).join(" ").trim();
  return line.length > EXCERPT_CHARS ? `${line.slice(0, EXCERPT_CHARS - 1)}…` : line;
}

// Under a reply: the earlier messages recalled from outside memory for it; each scrolls to its message.
function recalledList(ids) {
  const box = document.createElement("div");
  box.className = "recalled";
  const label = document.createElement("span");
  label.className = "recalled-label";
  label.textContent = `Recalled ${ids.length} earlier message${ids.length === 1 ? "" : "s"}:`;
  box.appendChild(label);
  for (const id of ids) {
    const source = messagesBox.querySelector(`.message[data-id="${id}"]`);
    const text = source ? excerpt(source.dataset.content) : "a message on another branch";
    const link = toolButton("recalled-link", `“${text}”`, `Show the recalled message: ${text}`);
    link.dataset.target = id;
    link.disabled = !source;
    box.appendChild(link);
  }
  return box;
}

// Under a reply: the passages of attached documents it was given ("From report.pdf p. 7, p. 9").
function sourcesLine(sources) {
  const line = document.createElement("div");
  line.className = "sources";
  line.textContent = `From ${[...new Set(sources.map((s) => s.source))].join("; ")}`;
  return line;
}

// Under the last message they cover: the notes kept of the messages up to it once they left memory ("": none worth
// keeping). Set with textContent: a person may have written them.
export function noteBox(note) {
  const box = document.createElement("section");
  box.className = "note";
  box.setAttribute("aria-label", "Notes of the messages up to here");
  const label = document.createElement("span");
  label.className = "note-label";
  label.textContent = note ? "Notes kept in memory of the messages up to here:" : "No notes kept of the messages up to here.";
  const text = document.createElement("div");
  text.className = "note-text";
  text.textContent = note;
  box.append(label, text, toolButton("edit-note", "Edit notes", "Edit notes of the messages up to here"));
  return box;
}

// A message's notes as stored now (after they were written, edited or forgotten).
export function showNote(message) {
  const element = messagesBox.querySelector(`.message[data-id="${message.id}"]`);
  if (!element) return;
  const old = element.querySelector(".note");
  if (old) old.remove();
  if (message.note !== null && message.note !== undefined) {
    element.insertBefore(noteBox(message.note), element.querySelector(".message-tools"));
  }
}

export function showPinned(element, pinned) {
  element.classList.toggle("pinned", pinned);
  const button = element.querySelector(".pin");
  if (!button) return;
  button.textContent = pinned ? "Unpin" : "Pin";
  button.setAttribute("aria-pressed", pinned ? "true" : "false");
  button.title = pinned ? "The model keeps this message in mind however long the chat grows"
    : "Pin: the model keeps this message in mind however long the chat grows";
}

// The open chat's title, the page's heading.
export function showTitle(title) {
  document.getElementById("chat-title").textContent = title || "New chat";
}

export function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.dataset.id = message.id;
  element.dataset.content = message.content || "";
  const speaker = document.createElement("h2"); // who said it, for screen readers (and their heading keys)
  speaker.className = "visually-hidden";
  speaker.textContent = message.role === "user" ? "You said:" : "The robot said:";
  element.appendChild(speaker);
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
  else tools.appendChild(toolButton("regenerate", "Regenerate", "Regenerate: write this reply again", "Ctrl+Shift+Enter"));
  if (message.role === "assistant" && config.continuable.includes(message.status) && message.content) {
    tools.appendChild(toolButton("continue", "Continue", "Continue this reply"));
  }
  tools.appendChild(toolButton("pin", "Pin", `Pin this ${message.role === "user" ? "message" : "reply"}`));
  if (message.role === "assistant") tools.append(...readingButtons(message.id));
  element.appendChild(tools);
  showPinned(element, Boolean(message.pinned));
  if (message.recalled && message.recalled.length) element.insertBefore(recalledList(message.recalled), tools);
  if (message.documents && message.documents.length) {
    element.insertBefore(documentChips(message.documents, state.current), tools);
  }
  if (message.sources && message.sources.length) element.insertBefore(sourcesLine(message.sources), tools);
  if (message.note !== null && message.note !== undefined) element.insertBefore(noteBox(message.note), tools);
  setStatus(element, message.status);
  return element;
}

export function setStatus(element, status) {
  element.classList.toggle("streaming", status === "streaming");
  element.setAttribute("aria-busy", status === "streaming" ? "true" : "false");
  let label = element.querySelector(".status");
  const text = STATUS_TEXT[status];
  if (!text) { if (label) label.remove(); return; }
  if (!label) { label = document.createElement("span"); label.className = "status"; element.appendChild(label); }
  label.textContent = text;
}

export function setWaiting(element, text) {
  let line = element.querySelector(".waiting");
  if (!text) { if (line) line.remove(); return; }
  if (!line) { line = document.createElement("span"); line.className = "waiting"; element.appendChild(line); }
  line.textContent = text;
}

export function showMessages(messages) {
  messagesBox.replaceChildren();
  if (!messages.length) {
    const hint = document.createElement("div");
    hint.className = "hint";
    const line = document.createElement("p");
    line.textContent = HINT;
    const examples = document.createElement("div");
    examples.className = "examples";
    examples.setAttribute("aria-label", "Example questions");
    for (const text of EXAMPLES) {
      const example = toolButton("example", text, `Ask: ${text}`);
      example.dataset.text = text;
      examples.appendChild(example);
    }
    hint.append(line, examples);
    messagesBox.appendChild(hint);
  }
  for (const message of messages) messagesBox.appendChild(messageElement(message));
  scrollDown(state.shownId !== state.current); // a refresh of the open conversation keeps the reader's place
  state.shownId = state.current;
}

// The view follows a growing reply only while the reader is at the bottom; scrolled up to read, it stays put and
// "Jump to the newest" appears instead.
const FOLLOW_PX = 48; // this close to the bottom counts as at the bottom
let following = true;
const jumpButton = document.getElementById("jump-newest");

function atBottom() {
  return messagesBox.scrollHeight - messagesBox.scrollTop - messagesBox.clientHeight <= FOLLOW_PX;
}

// The reader's own move up stops the following at once: its scroll event comes a frame later, and a token that
// arrives in between would otherwise put the view back at the bottom and undo the move (seen on a busy machine).
let movingUp = false; // the reader asked to go up and the move has not landed yet
let touching = false; // a finger on the list: the view is the reader's until it lifts
function readerUp() { movingUp = true; following = false; }
messagesBox.addEventListener("scroll", () => {
  if (!atBottom()) movingUp = false;
  following = atBottom() && !movingUp;
  if (following) jumpButton.hidden = true;
});
messagesBox.addEventListener("wheel", (event) => {
  if (event.deltaY < 0) readerUp(); else movingUp = false;
}, { passive: true });
messagesBox.addEventListener("keydown", (event) => {
  if (["ArrowUp", "PageUp", "Home"].includes(event.key)) readerUp();
  if (["ArrowDown", "PageDown", "End"].includes(event.key)) movingUp = false;
});
messagesBox.addEventListener("touchstart", () => { touching = true; }, { passive: true });
for (const name of ["touchend", "touchcancel"]) {
  messagesBox.addEventListener(name, () => { touching = false; }, { passive: true });
}
jumpButton.addEventListener("click", () => scrollDown(true));

// `force`: a conversation opened or a message sent (the view goes to the bottom and follows again).
export function scrollDown(force = false) {
  if (force || (following && !touching)) {
    messagesBox.scrollTop = messagesBox.scrollHeight;
    following = true;
    movingUp = false;
    jumpButton.hidden = true;
  } else if (!atBottom()) {
    jumpButton.style.top = `${messagesBox.offsetTop + messagesBox.clientHeight - 12}px`; // over the list's foot
    jumpButton.hidden = false;
  }
}

export function showGauge(memory) {
  const gauge = document.getElementById("gauge");
  if (!memory) { gauge.hidden = true; return; }
  gauge.hidden = false;
  document.getElementById("gauge-meter").value = memory.used / memory.budget;
  document.getElementById("gauge-text").textContent = `${memory.used} / ${memory.budget} tokens`;
  document.getElementById("gauge-meter").setAttribute("aria-valuetext",
    `Memory: ${memory.used} of ${memory.budget} tokens used`);
  gauge.title = "Tokens the model reads for the next reply, of the prompt budget. " +
    "When a conversation outgrows it, the oldest turns are left out of memory (they stay stored here).";
  const n = memory.dropped;
  const parts = n ? [`${n} earlier message${n === 1 ? " is" : "s are"} outside memory`] : [];
  if (memory.recalled) parts.push(`${memory.recalled} recalled for this reply`);
  if (memory.pinned) parts.push(`${memory.pinned} pinned`);
  if (memory.notes) parts.push(`notes of ${memory.notes} part${memory.notes === 1 ? "" : "s"} kept`);
  if (memory.passages) parts.push(`${memory.passages} document passage${memory.passages === 1 ? "" : "s"} read`);
  document.getElementById("gauge-dropped").textContent = parts.join("; ");
}

export function showExportLinks(id) {
  document.getElementById("export-one").hidden = !id;
  if (!id) return;
  document.getElementById("export-json").href = `/api/conversations/${id}/export?format=json`;
  document.getElementById("export-markdown").href = `/api/conversations/${id}/export?format=markdown`;
}

export function showConversation(data) {
  state.shown = data;
  showTitle(data.conversation.title);
  showMessages(data.messages);
  showGauge(data.memory);
}
