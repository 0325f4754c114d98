// The open conversation and what a person does in it: open one, start one, send, edit and resend, regenerate,
// continue, switch between versions, stop, and the notice while the model loads.
import { api } from "./api.js";
import { clearAttachments, pendingIds, showDrafts } from "./attach.js";
import { copyText } from "./rich.js";
import { config, form, input, messagesBox, noticeIsAboutTheModel, showNotice, state, stopButton }
  from "./page.js";
import { bringBack, followStoredReply, moveToBackground, streamReply } from "./reply.js";
import { editNote } from "./notes.js";
import { readingPressed } from "./speak.js";
import { messageElement, setStatus, showConversation, showExportLinks, showGauge, showMessages, showPinned,
  showTitle, toolButton } from "./render.js";

export async function open(id, push = true) {
  if (state.streaming && state.streaming.conversation === id && id === state.current) return; // on screen already
  if (state.streaming) moveToBackground();
  state.current = id;
  state.shown = null;
  document.dispatchEvent(new CustomEvent("conversation-opened", { detail: { id } }));
  if (push) history.pushState({ id }, "", id ? `/c/${id}` : "/");
  showNotice("");
  showExportLinks(id);
  if (!id) { showMessages([]); showGauge(null); clearAttachments(); showTitle(""); return; }
  try {
    const data = await api("GET", `/api/conversations/${id}`);
    if (state.current !== id) return;
    showConversation(data);
    showDrafts(data.drafts);
    if (bringBack(id)) return; // its reply is still streaming into this tab
    if (data.generating && !state.streaming) followStoredReply(id); // written for a tab that lost its connection
  } catch (error) {
    showNotice(error.message);
  }
}

// "+ New chat" (and Ctrl+Shift+O): an empty page. The conversation is made when its first message is sent (or a
// file is attached), so empty chats never pile up in the list.
export function startNewChat() {
  open(null);
  input.focus();
}

// Make a conversation on the server for the empty page's first message or file, and make it the open one. The
// page already shows it (empty), so nothing is fetched: a fetch would race the reply that is about to stream in.
export async function newConversation() {
  const conversation = await api("POST", "/api/conversations", {});
  document.dispatchEvent(new CustomEvent("conversation-created", { detail: { conversation } }));
  state.current = conversation.id;
  state.shown = { conversation, messages: [], drafts: [] };
  state.shownId = conversation.id;
  history.pushState({ id: conversation.id }, "", `/c/${conversation.id}`);
  document.dispatchEvent(new CustomEvent("conversation-opened", { detail: { id: conversation.id } }));
  showExportLinks(conversation.id);
  return conversation.id;
}

async function send(text) {
  const documents = pendingIds();
  if (documents === null) {
    showNotice("The attached files are still being uploaded and read; send once their chips show their tokens.");
    return;
  }
  let conversation;
  try { conversation = state.current || await newConversation(); }
  catch (error) { showNotice(error.message, () => send(text)); return; }
  const firstExchange = !state.shown || state.shown.messages.length === 0;
  const started = await streamReply(conversation, `/api/conversations/${conversation}/messages`,
    { content: text, documents }, (data) => {
      input.value = "";
      clearAttachments();
      messagesBox.appendChild(messageElement(data.user));
      const reply = messageElement({ ...data.reply, html: "" });
      messagesBox.appendChild(reply);
      return { reply, prefix: "" };
    }, () => send(text));
  if (started && firstExchange && config.generateTitles) nameConversation(conversation);
}

// After the first exchange the model names the conversation (unless it was renamed meanwhile).
async function nameConversation(conversation) {
  try {
    const data = await api("POST", `/api/conversations/${conversation}/title`);
    document.dispatchEvent(new CustomEvent("conversation-titled",
      { detail: { id: conversation, title: data.conversation.title } }));
  } catch (error) { /* the first message stays the title */ }
}

function removeFrom(element) {
  while (element.nextSibling) element.nextSibling.remove();
  element.remove();
}

export async function regenerate(messageElementToReplace) {
  if (state.streaming || !state.current) return;
  const id = messageElementToReplace.dataset.id;
  await streamReply(state.current, `/api/conversations/${state.current}/messages/${id}/regenerate`, {}, (data) => {
    const reply = messageElement({ ...data.reply, html: "" });
    messagesBox.insertBefore(reply, messageElementToReplace);
    removeFrom(messageElementToReplace);
    return { reply, prefix: "" };
  });
}

async function continueReply(element) {
  if (state.streaming || !state.current) return;
  await streamReply(state.current, `/api/conversations/${state.current}/messages/${element.dataset.id}/continue`, {}, () => {
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
    if (!text.trim() || state.streaming) return;
    const conversation = state.current, first = messagesBox.querySelector(".message") === element;
    const started = await streamReply(conversation, `/api/conversations/${conversation}/messages/${element.dataset.id}/edit`,
      { content: text }, (data) => {
        const user = messageElement(data.user);
        messagesBox.insertBefore(user, element);
        removeFrom(element);
        const reply = messageElement({ ...data.reply, html: "" });
        messagesBox.appendChild(reply);
        return { reply, prefix: "" };
      });
    if (started && first && config.generateTitles) nameConversation(conversation); // retitled unless renamed
  });
}

async function pin(element, button) {
  const pinned = button.getAttribute("aria-pressed") !== "true";
  button.disabled = true;
  try {
    const data = await api("POST", `/api/conversations/${state.current}/messages/${element.dataset.id}/pin`,
      { pinned });
    showPinned(element, data.message.pinned);
    showGauge(data.memory);
  } catch (error) { showNotice(error.message); }
  button.disabled = false;
}

function showRecalled(id) {
  const target = messagesBox.querySelector(`.message[data-id="${id}"]`);
  if (!target) return;
  target.scrollIntoView({ block: "center" });
  target.classList.add("highlight");
  target.setAttribute("tabindex", "-1");
  target.focus({ preventScroll: true });
  setTimeout(() => target.classList.remove("highlight"), 2000);
}

async function showVersion(target) {
  if (state.streaming || !state.current || !target) return;
  try {
    showConversation(await api("POST", `/api/conversations/${state.current}/branch`, { message_id: Number(target) }));
  } catch (error) { showNotice(error.message); }
}

export function lastReply() {
  const replies = messagesBox.querySelectorAll(".message.assistant");
  return replies.length ? replies[replies.length - 1] : null;
}

export async function stop() {
  if (!state.streaming) return;
  const running = state.streaming;
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

// Until the model is ready, say so (and why, if loading failed) instead of failing on send.
async function watchModel() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    if (response.ok) {
      if (noticeIsAboutTheModel()) {
        noticeIsAboutTheModel(false);
        showNotice("");
        if (state.current) open(state.current, false);
  else showMessages([]); // the empty page's hint and examples // now the memory gauge can be counted
      }
      return;
    }
    noticeIsAboutTheModel(true);
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

// The message list's buttons, the message box, Stop, the browser's back button; then the open conversation.
export function init() {
  messagesBox.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button && button.classList.contains("example")) { // the empty page's examples: into the box, to edit or send
      input.value = button.dataset.text;
      input.focus();
      return;
    }
    const element = event.target.closest(".message");
    if (!button || !element) return;
    if (button.classList.contains("copy")) copyText(element.dataset.content, button);
    else if (button.classList.contains("edit")) startEditing(element);
    else if (button.classList.contains("regenerate")) regenerate(element);
    else if (button.classList.contains("continue")) continueReply(element);
    else if (button.classList.contains("pin")) pin(element, button);
    else if (button.classList.contains("recalled-link")) showRecalled(button.dataset.target);
    else if (button.classList.contains("edit-note")) editNote(element);
    else if (button.classList.contains("read-aloud") || button.classList.contains("stop-reading")) {
      readingPressed(element, button);
    }
    else if (button.classList.contains("previous-version") || button.classList.contains("next-version")) {
      showVersion(button.dataset.target);
    }
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (state.streaming) return;
    if (!text.trim()) {
      if (pendingIds() !== null && pendingIds().length) showNotice("Type what you want to know about the files, then send.");
      return;
    }
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

  history.replaceState({ id: state.current }, "", state.current ? `/c/${state.current}` : "/");
  showExportLinks(state.current);
  if (state.current) open(state.current, false);
  else showMessages([]); // the empty page's hint and examples
  watchModel();
}
