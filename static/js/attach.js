// Files in the conversation: the Attach button, files dropped on or pasted into the message box, the chips of
// the files waiting to be sent (each shows its upload, then its pages and tokens, and can be removed), and the
// chips a sent message keeps (each a download).
import { CSRF_TOKEN, UNREACHABLE, api } from "./api.js";
import { config, form, input, messagesBox, showNotice, state } from "./page.js";

const chipsBox = document.getElementById("attachments");
const attachButton = document.getElementById("attach");
const picker = document.getElementById("attach-input");
let pending = []; // {id (null while uploading), name, element}
let ensureConversation = async () => state.current;

function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

// "20 pages · 4,338 tokens"
export function describe(document) {
  const parts = document.pages ? [plural(document.pages, "page")] : [];
  parts.push(plural(document.tokens, "token"));
  return parts.join(" · ");
}

function chip(name, meta) {
  const item = document.createElement("li");
  item.className = "chip";
  const metaText = document.createElement("span");
  metaText.className = "chip-meta";
  metaText.textContent = meta;
  item.append(name, metaText);
  return item;
}

// The files a sent message came with, each a link that downloads it.
export function documentChips(documents, conversation) {
  const box = document.createElement("ul");
  box.className = "chips message-files";
  box.setAttribute("aria-label", "Attached files");
  for (const doc of documents) {
    const link = document.createElement("a");
    link.href = `/api/conversations/${conversation}/documents/${doc.id}`;
    link.download = doc.name;
    link.textContent = doc.name;
    link.title = `Download ${doc.name}`;
    box.appendChild(chip(link, describe(doc)));
  }
  return box;
}

function showChips() {
  chipsBox.hidden = pending.length === 0;
}

function addPending(name, meta) {
  const label = document.createElement("span");
  label.className = "chip-name";
  label.textContent = name;
  label.title = name;
  const element = chip(label, meta);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove-file";
  remove.textContent = "×";
  remove.setAttribute("aria-label", `Remove ${name}`);
  remove.title = "Do not send this file";
  element.appendChild(remove);
  chipsBox.appendChild(element);
  const entry = { id: null, name, element };
  remove.addEventListener("click", () => removePending(entry));
  pending.push(entry);
  showChips();
  return entry;
}

function forget(entry) {
  pending = pending.filter((other) => other !== entry);
  entry.element.remove();
  showChips();
}

async function removePending(entry) {
  forget(entry);
  input.focus();
  if (entry.id && state.current) {
    try { await api("DELETE", `/api/conversations/${state.current}/documents/${entry.id}`); }
    catch (error) { /* gone already; it was never sent */ }
  }
}

function dropPending(entry, sentence) {
  forget(entry);
  showNotice(sentence);
}

// Upload one file, its chip showing the progress; the server reads it before it answers.
function upload(conversation, file) {
  const entry = addPending(file.name, "uploading…");
  entry.element.classList.add("uploading");
  const meta = entry.element.querySelector(".chip-meta");
  const body = new FormData();
  body.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", `/api/conversations/${conversation}/documents`);
  request.setRequestHeader("X-CSRFToken", CSRF_TOKEN);
  request.responseType = "json";
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) meta.textContent = `uploading ${Math.floor((100 * event.loaded) / event.total)}%`;
  });
  request.upload.addEventListener("load", () => { meta.textContent = "reading…"; });
  request.addEventListener("load", () => {
    const data = request.response;
    if (request.status === 201 && data) {
      entry.id = data.id;
      entry.element.classList.remove("uploading");
      meta.textContent = describe(data);
    } else {
      dropPending(entry, data && data.error ? data.error.message : `The server answered ${request.status}; try again.`);
    }
  });
  request.addEventListener("error", () => dropPending(entry, UNREACHABLE));
  request.send(body);
}

async function attachFiles(files) {
  files = [...files];
  if (!files.length) return;
  if (pending.length + files.length > config.maxDocuments) {
    showNotice(`A message can carry at most ${config.maxDocuments} files; remove some first.`);
    return;
  }
  const tooLarge = files.filter((file) => file.size > config.maxDocumentBytes);
  if (tooLarge.length) {
    showNotice(`“${tooLarge[0].name}” is larger than ${config.maxDocumentBytes / 1e6} MB; split it or attach ` +
      "the part you need.");
    files = files.filter((file) => file.size <= config.maxDocumentBytes);
  }
  if (!files.length) return;
  let conversation;
  try { conversation = await ensureConversation(); }
  catch (error) { showNotice(error.message); return; }
  for (const file of files) upload(conversation, file);
}

// The ids of the files to send with the next message; null while one is still being uploaded or read.
export function pendingIds() {
  return pending.some((entry) => !entry.id) ? null : pending.map((entry) => entry.id);
}

export function clearAttachments() {
  pending = [];
  chipsBox.replaceChildren();
  showChips();
}

// A conversation opened: the files attached in it but not sent yet come back as chips.
export function showDrafts(drafts) {
  clearAttachments();
  for (const draft of drafts || []) {
    const entry = addPending(draft.name, describe(draft));
    entry.id = draft.id;
  }
}

export function init(newConversation) {
  ensureConversation = async () => state.current || newConversation();
  picker.accept = config.documentTypes;
  attachButton.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => { attachFiles(picker.files); picker.value = ""; });
  input.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    if (!files.length) return; // text pastes as text
    event.preventDefault();
    attachFiles(files);
  });
  for (const zone of [form, messagesBox]) {
    zone.addEventListener("dragover", (event) => {
      if (!event.dataTransfer || ![...event.dataTransfer.types].includes("Files")) return;
      event.preventDefault();
      form.classList.add("dropping");
    });
    zone.addEventListener("dragleave", () => form.classList.remove("dropping"));
    zone.addEventListener("drop", (event) => {
      form.classList.remove("dropping");
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      event.preventDefault();
      attachFiles(event.dataTransfer.files);
    });
  }
}
