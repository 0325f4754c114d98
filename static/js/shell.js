// The page around the chat: light/dark theme switch, the conversation drawer on narrow screens, keyboard
// shortcuts and their help dialog. (theme.js, a classic script in <head>, applies the chosen theme before
// the page paints; this module changes it.)
import { lastReply, regenerate, startNewChat, stop } from "./chat.js";
import { app, input, state } from "./page.js";

const root = document.documentElement;
const themeButton = document.getElementById("theme-toggle");
const THEMES = ["system", "light", "dark"];
const THEME_LABEL = { system: "Theme: follows the system", light: "Theme: light", dark: "Theme: dark" };
const drawerButton = document.getElementById("open-drawer");
const scrim = document.getElementById("scrim");
const helpDialog = document.getElementById("help-dialog");

function chosenTheme() { return root.dataset.theme || "system"; }

function showThemeButton() {
  const theme = chosenTheme();
  themeButton.setAttribute("aria-label", `${THEME_LABEL[theme]} (press to change)`);
  themeButton.title = THEME_LABEL[theme];
  themeButton.textContent = { system: "◐", light: "☀", dark: "☾" }[theme];
}

function nextTheme() {
  const next = THEMES[(THEMES.indexOf(chosenTheme()) + 1) % THEMES.length];
  try {
    if (next === "system") localStorage.removeItem("theme");
    else localStorage.setItem("theme", next);
  } catch (e) { /* storage blocked: the choice lasts until the page closes */ }
  if (next === "system") delete root.dataset.theme;
  else root.dataset.theme = next;
  showThemeButton();
}

// The conversation list is a drawer on narrow screens.
function openDrawer() {
  app.classList.add("drawer-open");
  scrim.hidden = false;
  drawerButton.setAttribute("aria-expanded", "true");
  document.getElementById("new-chat").focus();
}

export function closeDrawer() {
  if (!app.classList.contains("drawer-open")) return;
  app.classList.remove("drawer-open");
  scrim.hidden = true;
  drawerButton.setAttribute("aria-expanded", "false");
}

// Keyboard shortcuts (listed in the help dialog).
function onKey(event) {
  const mod = event.ctrlKey || event.metaKey;
  if (document.querySelector("dialog[open]")) return; // a dialog has the keyboard; Escape closes it
  if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    startNewChat(); // a reply being written goes on in the background
  } else if (mod && event.shiftKey && event.key === "Enter") {
    event.preventDefault();
    const reply = lastReply();
    if (reply && !state.streaming) regenerate(reply);
  } else if (mod && (event.key === "/" || event.code === "Slash")) {
    event.preventDefault();
    helpDialog.showModal();
  } else if (event.key === "Escape" && event.shiftKey) {
    event.preventDefault();
    input.focus();
  } else if (event.key === "Escape") {
    if (state.streaming) { event.preventDefault(); stop(); } else closeDrawer();
  }
}

export function init() {
  themeButton.addEventListener("click", nextTheme);
  showThemeButton();
  drawerButton.addEventListener("click", openDrawer);
  document.getElementById("close-drawer").addEventListener("click", () => { closeDrawer(); drawerButton.focus(); });
  scrim.addEventListener("click", closeDrawer);
  // Dialogs: their Close/Cancel buttons.
  for (const button of document.querySelectorAll("dialog .close-dialog")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  document.getElementById("open-help").addEventListener("click", () => helpDialog.showModal());
  document.addEventListener("keydown", onKey);
}
