// The page around the chat: light/dark theme switch, the conversation drawer on narrow screens, keyboard
// shortcuts and their help dialog. Uses chat.js's `streaming`, `stop`, `regenerate`, `lastReply` and
// `newConversation`.
"use strict";

const root = document.documentElement;
const themeButton = document.getElementById("theme-toggle");
const THEMES = ["system", "light", "dark"];
const THEME_LABEL = { system: "Theme: follows the system", light: "Theme: light", dark: "Theme: dark" };

function chosenTheme() { return root.dataset.theme || "system"; }

function showThemeButton() {
  const theme = chosenTheme();
  themeButton.setAttribute("aria-label", `${THEME_LABEL[theme]} (press to change)`);
  themeButton.title = THEME_LABEL[theme];
  themeButton.textContent = { system: "◐", light: "☀", dark: "☾" }[theme];
}

themeButton.addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(chosenTheme()) + 1) % THEMES.length];
  try {
    if (next === "system") localStorage.removeItem("theme");
    else localStorage.setItem("theme", next);
  } catch (e) { /* storage blocked: the choice lasts until the page closes */ }
  if (next === "system") delete root.dataset.theme;
  else root.dataset.theme = next;
  showThemeButton();
});
showThemeButton();

// The conversation list is a drawer on narrow screens.
const drawerButton = document.getElementById("open-drawer");
const scrim = document.getElementById("scrim");

function openDrawer() {
  app.classList.add("drawer-open");
  scrim.hidden = false;
  drawerButton.setAttribute("aria-expanded", "true");
  document.getElementById("new-chat").focus();
}

function closeDrawer() {
  if (!app.classList.contains("drawer-open")) return;
  app.classList.remove("drawer-open");
  scrim.hidden = true;
  drawerButton.setAttribute("aria-expanded", "false");
}

drawerButton.addEventListener("click", openDrawer);
document.getElementById("close-drawer").addEventListener("click", () => { closeDrawer(); drawerButton.focus(); });
scrim.addEventListener("click", closeDrawer);

// Dialogs: their Close/Cancel buttons.
for (const button of document.querySelectorAll("dialog .close-dialog")) {
  button.addEventListener("click", () => button.closest("dialog").close());
}
const helpDialog = document.getElementById("help-dialog");
document.getElementById("open-help").addEventListener("click", () => helpDialog.showModal());

// Keyboard shortcuts (listed in the help dialog).
document.addEventListener("keydown", (event) => {
  const mod = event.ctrlKey || event.metaKey;
  if (document.querySelector("dialog[open]")) return; // a dialog has the keyboard; Escape closes it
  if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    if (!streaming) newConversation().catch((e) => showNotice(e.message));
  } else if (mod && event.shiftKey && event.key === "Enter") {
    event.preventDefault();
    const reply = lastReply();
    if (reply && !streaming) regenerate(reply);
  } else if (mod && (event.key === "/" || event.code === "Slash")) {
    event.preventDefault();
    helpDialog.showModal();
  } else if (event.key === "Escape" && event.shiftKey) {
    event.preventDefault();
    input.focus();
  } else if (event.key === "Escape") {
    if (streaming) { event.preventDefault(); stop(); } else closeDrawer();
  }
});
