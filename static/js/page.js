// What every part of the chat page shares: its elements, the settings the server gave it (the page keeps no
// copy of the server's limits), what is open and streaming now, and the notice line.

export const app = document.getElementById("app");
export const config = JSON.parse(app.dataset.config); // maxMessageChars, maxAudioSeconds, generateTitles, continuable
export const list = document.getElementById("conversation-list");
export const messagesBox = document.getElementById("messages");
export const input = document.getElementById("input");
export const form = document.getElementById("composer");
export const sendButton = document.getElementById("send");
export const stopButton = document.getElementById("stop");
const notice = document.getElementById("notice");
const retryButton = document.getElementById("notice-retry");
const noticeText = document.getElementById("notice-text");
const WAIT = /Try again in (\d+) seconds?\./; // a rate limit's sentence; the page counts it down
let countdown = null;

export const state = {
  current: app.dataset.current || null, // the open conversation's id
  streaming: null, // {controller, conversation, finished, reply} while a reply of the open conversation streams in
  background: new Map(), // conversation id -> the same, for replies still streaming in chats the person left
  shown: null, // the open conversation as GET /api/conversations/<id> returned it
  shownId: undefined, // whose messages are on the page (a refresh of the same keeps the reader's scroll place)
};

// The notice line: a sentence, dismissible, counting down a rate limit's wait; `retry` adds a Try again button.
export function showNotice(text, retry) {
  clearInterval(countdown);
  noticeText.textContent = text;
  notice.hidden = !text;
  retryButton.hidden = !(text && retry);
  retryButton.onclick = text && retry ? () => { showNotice(""); retry(); } : null;
  const wait = WAIT.exec(text || "");
  if (!wait) return;
  const before = text.slice(0, wait.index), after = text.slice(wait.index + wait[0].length);
  let left = Number(wait[1]);
  countdown = setInterval(() => {
    left -= 1;
    const now = left > 0 ? `Try again in ${left} second${left === 1 ? "" : "s"}.` : "You can try again now.";
    noticeText.textContent = before + now + after;
    if (left <= 0) clearInterval(countdown);
  }, 1000);
}

// Whether the notice says the model is not ready (so it can be cleared when it is).
export function noticeIsAboutTheModel(value) {
  if (value === undefined) return Boolean(notice.dataset.model);
  if (value) notice.dataset.model = "1";
  else delete notice.dataset.model;
  return value;
}

document.getElementById("notice-close").addEventListener("click", () => showNotice(""));
