// Talk mode: a spoken conversation without touching the screen. One press starts it; the page listens, hears
// where the person stops speaking (the microphone's level, through the Web Audio API), sends the clip to
// /api/transcriptions and the words as a message, speaks the reply sentence by sentence as it streams
// (speak.js), and listens again. Speaking while it talks or thinks stops the speech and the reply, and the new
// words are taken (barge-in). End, the Talk button again, or Esc ends it.
//
// To answer sooner, what was said is sent as soon as the person has been quiet for EARLY_MS, while the page still
// waits to be sure they stopped: if they go on speaking that transcript is dropped, and if the quiet lasts, it is
// used (usually already back) instead of sending the clip again.
import { CSRF_TOKEN, errorText, reach } from "./api.js";
import { form, input, showNotice, state, stopButton } from "./page.js";
import { speech } from "./speak.js";
import { micErrorText, micUnavailableReason, recordingType } from "./voice.js";

const SPEECH_LEVEL = 0.015; // the quietest level (RMS) counted as speech; three times the room's noise if higher
const END_SILENCE_MS = 800; // this much quiet after words ends what the person said
const EARLY_MS = 300; // this much quiet after words sends them ahead, in case they were the end
const MIN_SPEECH_MS = 250; // shorter sounds (a click, a cough) are not words
const BARGE_IN_MS = 300; // words this long while the robot speaks or thinks interrupt it
const IDLE_RESTART_MS = 20_000; // silence kept before the words at most (the clip restarts after this long)
const TICK_MS = 40;
const STATES = { listening: "Listening…", hearing: "Listening…", thinking: "Thinking…", speaking: "Speaking…" };

let talk = null;

function setState(name, note = "") {
  talk.state = name;
  document.getElementById("talk-state").textContent = note || STATES[name];
  document.getElementById("talk-panel").dataset.state = name;
}

function level() {
  const samples = talk.samples;
  talk.analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const value of samples) sum += value * value;
  return Math.sqrt(sum / samples.length);
}

// A fresh recording of the microphone; the previous one (if any) is handed to `done` when it stops.
function restartRecorder(done) {
  const old = talk.recorder;
  const type = recordingType();
  const recorder = new MediaRecorder(talk.stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  recorder.chunks = chunks;
  recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
  recorder.addEventListener("stop", () => {
    if (recorder.keep) recorder.keep(new Blob(chunks, { type: recorder.mimeType || type || "audio/webm" }));
  });
  recorder.start(250);
  talk.recorder = recorder;
  talk.recordingSince = performance.now();
  if (old && old.state !== "inactive") {
    old.keep = done || null;
    old.stop();
  }
}

function tick() {
  if (!talk) return;
  const now = performance.now();
  const rms = level();
  const voiced = rms > Math.max(SPEECH_LEVEL, talk.noise * 3);
  if (!voiced && !talk.speechStart) talk.noise = talk.noise * 0.95 + rms * 0.05;
  if (voiced) {
    if (!talk.speechStart) talk.speechStart = now;
    talk.lastVoice = now;
  }
  const speaking = talk.speechStart ? talk.lastVoice - talk.speechStart : 0;
  if ((talk.state === "speaking" || talk.state === "thinking") && speaking >= BARGE_IN_MS && voiced) bargeIn();
  if (talk.state === "listening" && speaking >= MIN_SPEECH_MS) setState("hearing");
  if (voiced && talk.early) dropEarly(); // they went on speaking
  if (talk.state === "hearing" && !voiced && !talk.early && now - talk.lastVoice > EARLY_MS) sendEarly();
  if (talk.speechStart && !voiced && now - talk.lastVoice > END_SILENCE_MS) {
    talk.speechStart = null;
    if (talk.state === "hearing") heard();
  }
  if (talk.state === "listening" && !talk.speechStart && now - talk.recordingSince > IDLE_RESTART_MS) {
    restartRecorder(null); // drop the silence
  }
}

// Words while the robot speaks or thinks: stop both and take the new words.
function bargeIn() {
  speech.stop();
  if (state.streaming) stopButton.click();
  talk.replying = talk.replyDone = false;
  setState("hearing");
}

function transcribe(clip, signal) {
  const body = new FormData();
  body.append("file", clip, `talk.${clip.type.includes("mp4") ? "m4a" : clip.type.includes("ogg") ? "ogg" : "webm"}`);
  return reach("/api/transcriptions", { method: "POST", body, signal, headers: { "X-CSRFToken": CSRF_TOKEN } })
    .then(async (response) => {
      if (!response.ok) throw new Error(await errorText(response));
      return response.json();
    });
}

// A short quiet: what the recording holds so far (every word: the quiet came after them) goes to Whisper now.
function sendEarly() {
  const recorder = talk.recorder;
  if (recorder.state !== "recording") return;
  const early = { controller: new AbortController() };
  early.result = new Promise((resolve) => {
    recorder.addEventListener("dataavailable", resolve, { once: true });
    recorder.requestData(); // what is recorded but not yet handed over
  }).then(() => {
    if (talk?.early !== early) return null;
    const clip = new Blob(recorder.chunks, { type: recorder.mimeType || recordingType() || "audio/webm" });
    return transcribe(clip, early.controller.signal);
  }).catch(() => null); // dropped, or refused: the whole clip is sent at the end as before
  talk.early = early;
}

function dropEarly() {
  talk.early.controller.abort();
  talk.early = null;
}

// The person stopped speaking: use what was sent ahead, or send what they said.
function heard() {
  setState("thinking");
  const early = talk.early;
  talk.early = null;
  restartRecorder(async (clip) => {
    if (!talk) return;
    try {
      const result = (early && await early.result) || await transcribe(clip);
      if (!talk || talk.state !== "thinking") return; // ended, or interrupted by new words
      if (!result.speech || !result.text.trim()) {
        setState("listening", "Listening… (nothing was heard; speak a little closer)");
        return;
      }
      if (state.streaming) await state.streaming.finished; // a reply stopped by barge-in is still closing
      if (!talk || talk.state !== "thinking") return;
      input.value = result.text;
      input.dispatchEvent(new Event("input"));
      talk.replying = true;
      talk.replyDone = false;
      form.requestSubmit();
    } catch (error) {
      if (!talk) return;
      showNotice(error.message || "What you said could not be sent; try again.");
      setState("listening");
    }
  });
}

// While a reply is on its way: speaking once its first sentence is read, listening again when the reply is
// done and everything whole in it has been said (or it had nothing to say).
function settle() {
  if (!talk || !talk.replying) return;
  if (speech.active) {
    if (talk.state === "thinking") setState("speaking");
  } else if (talk.replyDone) {
    talk.replying = talk.replyDone = false;
    if (talk.state === "thinking" || talk.state === "speaking") setState("listening");
  }
}

async function start() {
  const reason = micUnavailableReason();
  if (reason) { showNotice(reason); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  } catch (error) {
    showNotice(micErrorText(error));
    return;
  }
  showNotice("");
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  context.createMediaStreamSource(stream).connect(analyser);
  talk = { stream, context, analyser, samples: new Float32Array(analyser.fftSize), noise: 0, speechStart: null,
    lastVoice: 0, recorder: null, recordingSince: 0, state: "listening", replying: false, replyDone: false, wakeLock: null,
    early: null };
  document.body.classList.add("talking");
  document.getElementById("talk-panel").hidden = false;
  const button = document.getElementById("talk");
  button.setAttribute("aria-pressed", "true");
  button.setAttribute("aria-label", "Talk: end the voice conversation");
  setState("listening");
  restartRecorder(null);
  talk.timer = setInterval(tick, TICK_MS);
  try { talk.wakeLock = navigator.wakeLock ? await navigator.wakeLock.request("screen") : null; } catch (e) { /* */ }
}

export function end() {
  if (!talk) return;
  const ending = talk;
  talk = null;
  clearInterval(ending.timer);
  if (ending.early) ending.early.controller.abort();
  if (ending.recorder && ending.recorder.state !== "inactive") ending.recorder.stop();
  ending.stream.getTracks().forEach((track) => track.stop());
  ending.context.close();
  if (ending.wakeLock) ending.wakeLock.release().catch(() => {});
  speech.stop();
  document.body.classList.remove("talking");
  document.getElementById("talk-panel").hidden = true;
  const button = document.getElementById("talk");
  button.setAttribute("aria-pressed", "false");
  button.setAttribute("aria-label", "Talk: start a voice conversation");
  button.focus();
}

export function init(enabled) {
  const button = document.getElementById("talk");
  if (!enabled) { button.hidden = true; return; }
  button.addEventListener("click", () => (talk ? end() : start()));
  document.getElementById("talk-end").addEventListener("click", end);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && talk) end(); });
  speech.onChange(settle);
  document.addEventListener("reply-text", ({ detail }) => {
    if (talk && talk.replying && detail.done) {
      talk.replyDone = true;
      settle();
    }
  });
}
