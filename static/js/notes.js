// The model's notes of earlier messages (WEBBOT_MEMORY_SUMMARY=on): written after a reply once messages outside
// memory have none (the gauge counts them as "unnoted"), shown under the last message they cover, and corrected or
// cleared ("nothing worth keeping": not written again) by the person.
import { api } from "./api.js";
import { config, showNotice, state } from "./page.js";
import { noteBox, showGauge, showNote, toolButton } from "./render.js";

const writing = new Set(); // conversations whose notes are being written in this tab

function progress(conversation, text) {
  if (state.current === conversation || !text) document.getElementById("gauge-notes").textContent = text;
}

// After a reply: notes of the messages outside memory that have none, a prompt's worth at a time, with progress in
// the gauge. A busy or failing model leaves them for a later reply; nothing is lost.
export async function writeNotes(conversation, memory) {
  if (!config.memorySummary || !memory || !memory.unnoted || writing.has(conversation)) return;
  writing.add(conversation);
  let left = memory.unnoted;
  try {
    while (left > 0) {
      progress(conversation, `Writing notes of ${left} earlier message${left === 1 ? "" : "s"}…`);
      const data = await api("POST", `/api/conversations/${conversation}/notes`);
      if (state.current === conversation && !state.streaming) {
        if (data.message) showNote(data.message);
        if (data.memory) showGauge(data.memory);
      }
      const next = data.memory ? data.memory.unnoted : 0;
      if (!data.noted || next >= left) break;
      left = next;
    }
  } catch (error) { /* written after a later reply */ }
  writing.delete(conversation);
  progress(conversation, "");
}

// "Edit notes": the notes in a box; Save keeps them (empty: nothing worth keeping).
export function editNote(element) {
  const box = element.querySelector(".note");
  if (!box || box.querySelector("textarea")) return;
  const original = box.querySelector(".note-text").textContent;
  const area = document.createElement("textarea");
  area.value = original;
  area.setAttribute("aria-label", "Notes of the messages up to here");
  area.rows = Math.min(10, area.value.split("\n").length + 1);
  const save = toolButton("primary save-note", "Save", "Save these notes");
  const cancel = toolButton("cancel-note", "Cancel", "Keep the notes as they were");
  box.replaceChildren(area, save, cancel);
  area.focus();
  const path = `/api/conversations/${state.current}/messages/${element.dataset.id}/note`;
  const done = (data) => {
    showNote(data.message);
    showGauge(data.memory);
  };
  const failed = (error) => showNotice(error.message);
  save.addEventListener("click", () => api("PUT", path, { note: area.value }).then(done, failed));
  cancel.addEventListener("click", () => box.replaceWith(noteBox(original)));
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); cancel.click(); }
  });
}
