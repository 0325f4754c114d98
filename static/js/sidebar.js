// The conversation list: open, new, rename inline, pin, delete with Undo, full-text search, export and import.
import { api } from "./api.js";
import { open, startNewChat } from "./chat.js";
import { list, messagesBox, showNotice, state } from "./page.js";
import { showTitle, toolButton } from "./render.js";
import { closeDrawer } from "./shell.js";

const searchBox = document.getElementById("search");
const searchResults = document.getElementById("search-results");
const searchEmpty = document.getElementById("search-empty");
const toast = document.getElementById("toast");
const UNDO_SHOWN_MS = 10000;

export function sidebarItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  item.classList.toggle("pinned", !!conversation.pinned);
  const link = document.createElement("a");
  link.className = "title";
  link.href = `/c/${conversation.id}`;
  link.textContent = conversation.title;
  item.appendChild(link);
  if (conversation.pinned) {
    const mark = document.createElement("span");
    mark.className = "pinned-mark";
    mark.title = "Pinned to the top";
    mark.textContent = "★";
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = " pinned";
    mark.appendChild(spoken);
    item.appendChild(mark);
  }
  const menuButton = toolButton("row-menu", "⋯", `Actions for “${conversation.title}”`, "Pin, rename or delete");
  menuButton.setAttribute("aria-haspopup", "menu");
  menuButton.setAttribute("aria-expanded", "false");
  menuButton.setAttribute("aria-controls", "row-actions");
  item.appendChild(menuButton);
  return item;
}

// One menu (Pin, Rename, Delete) for every row, opened by the row's ⋯ button: two tab stops a row, and targets
// large enough for a finger.
const rowMenu = document.getElementById("row-actions");
const menuHome = rowMenu.parentElement;

function closeRowMenu(focusButton = false) {
  if (rowMenu.hidden) return;
  const button = rowMenu.parentElement.querySelector(".row-menu");
  rowMenu.hidden = true;
  menuHome.insertBefore(rowMenu, list.nextSibling);
  if (button) {
    button.setAttribute("aria-expanded", "false");
    if (focusButton) button.focus();
  }
}

function openRowMenu(item) {
  closeRowMenu();
  const button = item.querySelector(".row-menu");
  const title = item.querySelector(".title").textContent;
  const pinned = item.classList.contains("pinned");
  rowMenu.querySelector(".pin").textContent = pinned ? "Unpin" : "Pin to the top";
  rowMenu.setAttribute("aria-label", `Actions for “${title}”`);
  item.appendChild(rowMenu);
  rowMenu.hidden = false;
  button.setAttribute("aria-expanded", "true");
  rowMenu.querySelector("button").focus();
}

// A chat named anew (renamed here, titled by the model or from its first message): its row, and the heading.
function renameTitle(id, title) {
  const item = list.querySelector(`li[data-id="${id}"]`);
  if (item) {
    item.querySelector(".title").textContent = title;
    item.querySelector(".row-menu").setAttribute("aria-label", `Actions for “${title}”`);
  }
  if (id === state.current) showTitle(title);
}

// A chat whose reply is still being written while another is open: its row says so, until the reply ends.
function showWriting(id, writing) {
  const item = list.querySelector(`li[data-id="${id}"]`);
  if (!item) return;
  item.classList.toggle("writing", writing);
  let badge = item.querySelector(".writing-badge");
  if (writing && !badge) {
    badge = document.createElement("span");
    badge.className = "writing-badge";
    badge.textContent = "writing…";
    badge.title = "A reply is still being written in this chat";
    item.querySelector(".title").after(badge);
  } else if (!writing && badge) {
    badge.remove();
  }
}

export function markActive() {
  for (const item of list.children) {
    const current = item.dataset.id === state.current;
    item.classList.toggle("active", current);
    const link = item.querySelector(".title");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function reloadList() {
  closeRowMenu();
  const data = await api("GET", "/api/conversations");
  list.replaceChildren(...data.conversations.map(sidebarItem));
  markActive();
}

function renameInline(item) {
  const link = item.querySelector(".title");
  if (item.querySelector(".rename-box")) return;
  const box = document.createElement("input");
  box.className = "rename-box";
  box.value = link.textContent;
  box.maxLength = 200;
  box.setAttribute("aria-label", "New title; Enter saves, Escape cancels");
  link.hidden = true;
  item.insertBefore(box, link);
  box.focus();
  box.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = box.value.trim();
    box.remove();
    link.hidden = false;
    if (!save || !title || title === link.textContent) return;
    try {
      const updated = await api("PATCH", `/api/conversations/${item.dataset.id}`, { title });
      renameTitle(item.dataset.id, updated.title);
    } catch (error) { showNotice(error.message); }
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  box.addEventListener("blur", () => finish(true));
}

let undoTimer = null;

function showToast(text, undo) {
  clearTimeout(undoTimer);
  document.getElementById("toast-text").textContent = text;
  const button = document.getElementById("toast-undo");
  button.hidden = !undo;
  button.onclick = undo ? async () => { toast.hidden = true; await undo(); } : null;
  toast.hidden = false;
  undoTimer = setTimeout(() => { toast.hidden = true; }, UNDO_SHOWN_MS);
}

async function deleteConversation(item) {
  const id = item.dataset.id;
  const title = item.querySelector(".title").textContent;
  try {
    await api("DELETE", `/api/conversations/${id}`);
  } catch (error) { showNotice(error.message); return; }
  item.remove();
  if (id === state.current) open(null);
  showToast(`Deleted “${title}”.`, async () => {
    try {
      await api("POST", `/api/conversations/${id}/restore`);
      await reloadList();
      open(id);
    } catch (error) { showNotice(error.message); }
  });
}

async function togglePin(item) {
  const pinned = !item.classList.contains("pinned");
  try {
    await api("PATCH", `/api/conversations/${item.dataset.id}`, { pinned });
    await reloadList();
  } catch (error) { showNotice(error.message); }
}

// Search: results replace the list while the box holds words; hits are marked with <mark> built from
// text, never from HTML (the server brackets them with \u0002 and \u0003).
function snippetElement(snippet) {
  const element = document.createElement("span");
  element.className = "snippet";
  const parts = snippet.split(/(\u0002[^\u0003]*\u0003)/);
  for (const part of parts) {
    if (part.startsWith("\u0002")) {
      const mark = document.createElement("mark");
      mark.textContent = part.slice(1, -1);
      element.appendChild(mark);
    } else if (part) {
      element.appendChild(document.createTextNode(part));
    }
  }
  return element;
}

let searchSerial = 0;
let searchTimer = null;

async function runSearch() {
  const query = searchBox.value.trim();
  const serial = ++searchSerial;
  if (!query) {
    searchResults.hidden = true;
    searchEmpty.hidden = true;
    list.hidden = false;
    return;
  }
  let data;
  try {
    data = await api("GET", `/api/search?q=${encodeURIComponent(query)}`);
  } catch (error) { showNotice(error.message); return; }
  if (serial !== searchSerial) return; // a newer search is on its way
  searchResults.replaceChildren(...data.results.map((result) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `/c/${result.conversation_id}`;
    link.dataset.id = result.conversation_id;
    if (result.message_id) link.dataset.message = result.message_id;
    const title = document.createElement("strong");
    title.textContent = result.title;
    link.append(title, snippetElement(result.snippet));
    item.appendChild(link);
    return item;
  }));
  list.hidden = true;
  searchResults.hidden = false;
  searchEmpty.hidden = data.results.length > 0;
}

// The list's clicks, search, import and New chat; the list follows what chat.js opens and makes.
export function init() {
  list.addEventListener("click", (event) => {
    const item = event.target.closest("li");
    if (!item) return;
    const id = item.dataset.id;
    if (event.target.closest(".title")) {
      event.preventDefault();
      open(id); // a reply being written in the chat left goes on in the background
      closeDrawer();
    } else if (event.target.closest(".row-menu")) {
      if (rowMenu.hidden || rowMenu.parentElement !== item) openRowMenu(item);
      else closeRowMenu(true);
    } else if (event.target.closest(".rename")) {
      closeRowMenu();
      renameInline(item);
    } else if (event.target.closest(".delete")) {
      closeRowMenu();
      deleteConversation(item);
    } else if (event.target.closest(".pin")) {
      closeRowMenu();
      togglePin(item);
    }
  });
  rowMenu.addEventListener("keydown", (event) => {
    const items = [...rowMenu.querySelectorAll("button")];
    const at = items.indexOf(document.activeElement);
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); closeRowMenu(true); }
    else if (event.key === "ArrowDown") { event.preventDefault(); items[(at + 1) % items.length].focus(); }
    else if (event.key === "ArrowUp") { event.preventDefault(); items[(at - 1 + items.length) % items.length].focus(); }
    else if (event.key === "Tab") closeRowMenu();
  });
  document.addEventListener("click", (event) => {
    if (!rowMenu.hidden && !event.target.closest(".row-menu") && !rowMenu.contains(event.target)) closeRowMenu();
  });
  document.getElementById("import-button").addEventListener("click", () => document.getElementById("import-file").click());

  searchBox.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 200);
  });
  searchBox.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && searchBox.value) {
      event.preventDefault();
      event.stopPropagation();
      searchBox.value = "";
      runSearch();
    }
  });

  searchResults.addEventListener("click", async (event) => {
    const link = event.target.closest("a");
    if (!link) return;
    event.preventDefault();
    await open(link.dataset.id);
    closeDrawer();
    const hit = link.dataset.message && messagesBox.querySelector(`.message[data-id="${link.dataset.message}"]`);
    if (hit) {
      hit.scrollIntoView({ block: "center" });
      hit.classList.add("found");
      setTimeout(() => hit.classList.remove("found"), 2000);
    }
  });

  // Import: a JSON export from this app (one conversation or all of them).
  document.getElementById("import-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    try {
      const data = await api("POST", "/api/import", await file.text());
      await reloadList();
      showToast(`Imported ${data.imported} conversation${data.imported === 1 ? "" : "s"} from ${file.name}.`);
      if (data.conversations.length) open(data.conversations[0].id);
    } catch (error) { showNotice(error.message); }
  });

  for (const id of ["new-chat", "header-new-chat"]) { // the header's is for phones, where the list is a drawer
    document.getElementById(id).addEventListener("click", () => {
      closeDrawer();
      startNewChat();
    });
  }

  document.addEventListener("conversation-opened", markActive);
  document.addEventListener("conversation-titled", (event) => renameTitle(event.detail.id, event.detail.title));
  document.addEventListener("reply-writing", (event) => showWriting(event.detail.id, event.detail.writing));
  document.addEventListener("conversation-created", (event) => list.prepend(sidebarItem(event.detail.conversation)));
  markActive();
}
