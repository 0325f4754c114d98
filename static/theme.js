// Runs in <head>, before the page paints: applies the theme the person chose (light or dark), if any;
// with none chosen, the CSS follows the system setting (prefers-color-scheme).
"use strict";
(() => {
  let chosen = null;
  try { chosen = localStorage.getItem("theme"); } catch (e) { /* storage blocked: follow the system */ }
  if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
})();
