// The settings dialog: system prompt, temperature, top_p, the longest reply and recall, for this chat or as the
// person's default, with the model's limits beside them.
import { api } from "./api.js";
import { open } from "./chat.js";
import { showNotice, state } from "./page.js";

const settingsDialog = document.getElementById("settings-dialog");
const settingsError = document.getElementById("settings-error");
const fields = {
  system_prompt: document.getElementById("set-system-prompt"),
  temperature: document.getElementById("set-temperature"),
  top_p: document.getElementById("set-top-p"),
  max_tokens: document.getElementById("set-max-tokens"),
  recall: document.getElementById("set-recall"),
};

function settingsFromForm() {
  return {
    system_prompt: fields.system_prompt.value,
    temperature: Number(fields.temperature.value),
    top_p: Number(fields.top_p.value),
    max_tokens: Number(fields.max_tokens.value),
    recall: fields.recall.checked,
  };
}

function fillForm(values) {
  fields.system_prompt.value = values.system_prompt;
  fields.temperature.value = values.temperature;
  fields.top_p.value = values.top_p;
  fields.max_tokens.value = values.max_tokens;
  fields.recall.checked = values.recall !== false;
}

async function openSettings() {
  settingsError.hidden = true;
  let data;
  try {
    data = await api("GET", "/api/settings");
  } catch (error) { showNotice(error.message); return; }
  const limits = data.limits;
  const mine = { ...data.defaults, ...data.saved };
  fields.max_tokens.max = limits.max_tokens;
  fields.temperature.min = limits.temperature[0]; fields.temperature.max = limits.temperature[1];
  fields.top_p.min = limits.top_p[0]; fields.top_p.max = limits.top_p[1];
  fields.system_prompt.maxLength = limits.system_prompt_chars;
  document.getElementById("settings-limits").textContent =
    `${limits.model_name}: a context of ${limits.context_tokens} tokens, of which prompts (memory) take up to ` +
    `${limits.prompt_tokens} and a reply up to ${limits.max_tokens}. Temperature ${limits.temperature[0]}–` +
    `${limits.temperature[1]}, top p ${limits.top_p[0]}–${limits.top_p[1]}.`;
  const own = state.shown && state.shown.conversation.id === state.current ? state.shown.conversation.settings : null;
  fillForm(state.current && state.shown && state.shown.settings ? state.shown.settings : mine);
  document.getElementById("settings-scope").textContent = !state.current
    ? "No chat is open: these are your defaults for new chats."
    : own ? "This chat has its own settings." : "This chat uses your defaults.";
  document.getElementById("save-chat-settings").disabled = !state.current;
  document.getElementById("reset-chat-settings").disabled = !state.current || !own;
  settingsDialog.showModal();
}

async function saveSettings(request) {
  settingsError.hidden = true;
  try {
    await request();
    settingsDialog.close();
    if (state.current) await open(state.current, false); // the gauge counts the new system prompt
  } catch (error) {
    settingsError.textContent = error.message;
    settingsError.hidden = false;
  }
}

export function init() {
  document.getElementById("open-settings").addEventListener("click", openSettings);
  document.getElementById("save-chat-settings").addEventListener("click", () =>
    saveSettings(() => api("PATCH", `/api/conversations/${state.current}`, { settings: settingsFromForm() })));
  document.getElementById("save-default-settings").addEventListener("click", () =>
    saveSettings(() => api("PUT", "/api/settings", settingsFromForm())));
  document.getElementById("reset-chat-settings").addEventListener("click", () =>
    saveSettings(() => api("PATCH", `/api/conversations/${state.current}`, { settings: null })));
}
