// Spoken replies: "Read aloud" on each reply (pause, resume, stop), and "Auto-read" that speaks a reply while it
// streams, from its first finished sentence (or the first clause of a long first sentence, so the first sound
// comes sooner). The server speaks (/api/speech, Piper on the server); the page
// cuts the reply's Markdown into sentences (a code block stays whole: the server says there is code), asks for
// each one's audio a little ahead of playback and plays them in turn. Talk mode (talk.js) speaks through the
// same queue.
import { CSRF_TOKEN, errorText, reach } from "./api.js";
import { config, showNotice } from "./page.js";

const AUTO_READ_KEY = "webbot.autoRead";
const AHEAD = 2; // sentences whose audio is fetched while an earlier one plays
const SENTENCE_END = /[.!?…]["')\]]*\s+/g;
const LIST_MARKER = /^\s*(?:\d+[.)]|[-*+])\s+$/; // "1. " before a list item's words is not a sentence
const ABBREVIATION = /(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|vs|etc|e\.g|i\.e|No|Fig|approx)|\b[A-Z])\.["')\]]*\s+$/;
const CLAUSE_WORDS = 6; // a first sentence still being written is spoken up to a comma, colon, semicolon or dash
const CLAUSE_END = /[,;:]\s+|\s+[—–-]\s+/g; // after at least this many words (then whole sentences again)

// Cut `text` (Markdown) from `from` into whole sentences; `final` when no more text will come. Returns the
// sentences and where the unfinished rest begins.
export function sentencesOf(text, from = 0, final = false) {
  const pieces = [];
  let at = from;
  while (at < text.length) {
    const lineStart = at === 0 || text[at - 1] === "\n";
    if (lineStart && /^\s*(```|~~~)/.test(text.slice(at, at + 40))) {
      const fence = text.slice(at).match(/^\s*(```|~~~)/)[1];
      const close = text.indexOf(`\n${fence}`, at + 3);
      if (close < 0 && !final) break; // the block is still being written
      const end = close < 0 ? text.length : (text.indexOf("\n", close + 1) + 1 || text.length);
      pieces.push(text.slice(at, end));
      at = end;
      continue;
    }
    const newline = text.indexOf("\n", at);
    const lineEnd = newline < 0 ? text.length : newline;
    SENTENCE_END.lastIndex = at;
    let cut = -1, match;
    while ((match = SENTENCE_END.exec(text)) && match.index < lineEnd) {
      const end = match.index + match[0].length;
      const piece = text.slice(at, end);
      if (!ABBREVIATION.test(piece) && !LIST_MARKER.test(piece)) { cut = end; break; }
    }
    if (cut < 0 && newline >= 0) cut = newline + 1;
    if (cut < 0) {
      if (!final) break;
      cut = text.length;
    }
    pieces.push(text.slice(at, cut));
    at = cut;
  }
  return { pieces: pieces.filter((p) => /\w/.test(p)), rest: at };
}

// One voice at a time on the page: a queue of sentences, fetched ahead and played in turn.
class SpeechQueue {
  constructor() {
    this.audio = new Audio();
    this.audio.addEventListener("ended", () => this.next());
    this.items = []; // {text, ready: Promise<url>}
    this.owner = null; // the id of the reply being read
    this.open = false; // more sentences may come
    this.playing = false;
    this.paused = false;
    this.listeners = new Set();
    this.run = 0; // bumped by stop(), so late audio from a stopped reading is dropped
  }

  onChange(listener) { this.listeners.add(listener); }
  changed() { for (const listener of this.listeners) listener(this); }
  get active() { return this.owner !== null; }

  start(owner) {
    this.stop();
    this.owner = owner;
    this.open = true;
    this.changed();
  }

  add(text) {
    if (!this.active) return;
    this.items.push({ text, ready: null });
    this.fetchAhead();
    if (!this.playing && !this.paused) this.next();
  }

  close() {
    this.open = false;
    if (!this.playing && !this.items.length) this.stop();
  }

  fetchAhead() {
    for (const item of this.items.slice(0, AHEAD + 1)) {
      if (item.ready) continue;
      item.ready = this.fetchAudio(item.text, this.run);
      item.ready.catch(() => {}); // a failure is shown when its turn comes (not as an unhandled rejection now)
    }
  }

  async fetchAudio(text, run) {
    const response = await reach("/api/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF_TOKEN },
      body: JSON.stringify({ input: text, response_format: "wav" }),
    });
    if (response.status === 400 && (await response.clone().json()).error.code === "nothing_to_say") return null;
    if (!response.ok) throw new Error(await errorText(response));
    const blob = await response.blob();
    return run === this.run ? URL.createObjectURL(blob) : null;
  }

  async next() {
    const item = this.items.shift();
    if (!item) {
      this.playing = false;
      if (!this.open) this.stop();
      else this.changed();
      return;
    }
    this.playing = true;
    const run = this.run;
    this.fetchAhead();
    if (!item.ready) item.ready = this.fetchAudio(item.text, run);
    let url;
    try {
      url = await item.ready;
    } catch (error) {
      if (run === this.run) {
        showNotice(error.message || "The reply could not be read aloud; try again.");
        this.stop();
      }
      return;
    }
    if (run !== this.run) return;
    if (!url) { this.next(); return; } // a piece with nothing to say (a lone symbol): on to the next
    if (this.audio.src) URL.revokeObjectURL(this.audio.src);
    this.audio.src = url;
    this.changed();
    try {
      if (!this.paused) await this.audio.play();
    } catch (error) {
      if (run === this.run && error.name !== "AbortError") {
        showNotice("The browser would not play the audio; press Read aloud again.");
        this.stop();
      }
    }
  }

  pause() {
    this.paused = true;
    this.audio.pause();
    this.changed();
  }

  resume() {
    this.paused = false;
    if (this.audio.src && this.playing) this.audio.play().catch(() => {});
    else this.next();
    this.changed();
  }

  stop() {
    this.run += 1;
    this.items = [];
    this.audio.pause();
    if (this.audio.src) URL.revokeObjectURL(this.audio.src);
    this.audio.removeAttribute("src");
    this.playing = this.paused = this.open = false;
    const was = this.owner;
    this.owner = null;
    if (was !== null) this.changed();
  }
}

export const speech = new SpeechQueue();

// Where the first clause of `text` from `from` ends (after CLAUSE_WORDS words or more, on one line of prose), or
// -1: a long first sentence need not be waited for before anything is said.
export function firstClause(text, from) {
  const line = text.slice(from).split("\n", 1)[0];
  if (/^\s*(```|~~~|[-*+>#|]|\d+[.)])/.test(line)) return -1; // code, lists, quotes, headings and tables wait
  CLAUSE_END.lastIndex = 0;
  let match;
  while ((match = CLAUSE_END.exec(line))) {
    const words = line.slice(0, match.index).match(/\p{L}[\p{L}\p{N}'’-]*/gu) || [];
    if (words.length >= CLAUSE_WORDS) return from + match.index + match[0].length;
  }
  return -1;
}

// Read a stored reply (a .message element) from the start.
function readMessage(element) {
  speech.start(element.dataset.id);
  for (const piece of sentencesOf(element.dataset.content || "", 0, true).pieces) speech.add(piece);
  speech.close();
}

function button(className, text, label, pressed) {
  const made = document.createElement("button");
  made.type = "button";
  made.className = className;
  made.textContent = text;
  made.setAttribute("aria-label", label);
  if (pressed !== undefined) made.setAttribute("aria-pressed", pressed ? "true" : "false");
  return made;
}

// A reply's reading buttons as they are now: Read aloud; or Pause (Resume) and Stop while it is being read.
export function readingButtons(id) {
  if (!config.speech) return [];
  if (speech.owner !== id) return [button("read-aloud", "Read aloud", "Read aloud: this reply", false)];
  return [speech.paused ? button("read-aloud", "Resume", "Resume reading", false)
    : button("read-aloud", "Pause", "Pause reading", true),
  button("stop-reading", "Stop", "Stop reading")];
}

function showReading() {
  for (const element of document.querySelectorAll(".message.assistant")) {
    const first = element.querySelector(".read-aloud");
    if (!first) continue;
    const stop = element.querySelector(".stop-reading");
    const fresh = readingButtons(element.dataset.id);
    const hadFocus = first === document.activeElement;
    first.replaceWith(...fresh);
    if (stop) stop.remove();
    if (hadFocus) fresh[0].focus();
  }
}

// A press on a reply's Read aloud (Pause, Resume) or Stop button.
export function readingPressed(element, pressed) {
  const id = element.dataset.id;
  if (pressed.classList.contains("stop-reading")) speech.stop();
  else if (speech.owner !== id) readMessage(element);
  else if (speech.paused) speech.resume();
  else speech.pause();
}

// A streaming reply: speak each sentence as soon as it is whole (when Auto-read or Talk mode asks for it).
const following = { element: null, spoken: 0, started: false };

export function followReply(element, text, from, done) {
  if (!config.speech) return;
  const wanted = autoRead() || document.body.classList.contains("talking");
  if (following.element !== element) {
    if (!wanted || done) return;
    following.element = element;
    following.spoken = from; // a continued reply is read from where it goes on
    following.started = false;
    speech.start(element.dataset.id);
  }
  if (speech.owner !== element.dataset.id) return; // stopped by hand
  let { pieces, rest } = sentencesOf(text, following.spoken, done);
  if (!pieces.length && !following.started && !done) { // nothing said yet: the first clause will do
    const cut = firstClause(text, following.spoken);
    if (cut > 0) [pieces, rest] = [[text.slice(following.spoken, cut)], cut];
  }
  following.started ||= pieces.length > 0;
  following.spoken = rest;
  for (const piece of pieces) speech.add(piece);
  if (done) {
    following.element = null;
    speech.close();
  }
}

let autoReadBox = null;

function autoRead() {
  return Boolean(autoReadBox && autoReadBox.checked);
}

export function init() {
  autoReadBox = document.getElementById("auto-read");
  if (!config.speech) {
    autoReadBox.closest("label").hidden = true;
    return;
  }
  autoReadBox.checked = localStorage.getItem(AUTO_READ_KEY) === "1";
  autoReadBox.addEventListener("change", () => {
    localStorage.setItem(AUTO_READ_KEY, autoReadBox.checked ? "1" : "0");
    if (!autoReadBox.checked && following.element) speech.stop();
  });
  speech.onChange(showReading);
  document.addEventListener("reply-text", ({ detail }) => followReply(detail.element, detail.text, detail.from,
    detail.done));
}
