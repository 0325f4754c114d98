// Voice input for the chat page: record the microphone, upload the clip to
// /api/transcriptions (the same path as /v1/audio/transcriptions), and put the
// transcript in the message box, or send it at once when "Auto-send" is on.
// Click to start and again to stop; on a touch screen, hold to talk (or tap twice).
import { CSRF_TOKEN, errorText, reach } from "./api.js";
import { config, form, input, showNotice, state } from "./page.js";

// Why the microphone cannot be used on this page, or null when it can.
export function micUnavailableReason() {
  if (!window.isSecureContext) {
    return "Voice input needs a secure page: browsers only allow the microphone over HTTPS " +
      "(or on localhost), so open this site with https:// to record.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    return "This browser cannot record audio here; use a current Chrome, Firefox, Edge or Safari.";
  }
  return null;
}

export function micErrorText(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "The microphone is blocked for this page; allow it in the browser's site settings " +
        "(the icon next to the address) and press the microphone again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found; connect one and press the microphone again.";
    case "NotReadableError":
      return "The microphone is in use by another program or could not be started; close that program and try again.";
    default:
      return `The microphone could not be started (${error && error.message ? error.message : error}).`;
  }
}

// What this browser records: webm/opus (Chrome, Firefox), mp4/aac (Safari), or ogg.
export function recordingType() {
  const types = ["audio/webm;codecs=opus", "audio/webm", "audio/mp4", "audio/ogg;codecs=opus", "audio/ogg"];
  return types.find((t) => MediaRecorder.isTypeSupported && MediaRecorder.isTypeSupported(t)) || "";
}


export function init() {
  const mic = document.getElementById("mic");
  const timer = document.getElementById("mic-timer");
  const autoSend = document.getElementById("auto-send");
  const status = document.getElementById("voice-status");
  const maxSeconds = config.maxAudioSeconds;
  const AUTO_SEND_KEY = "webbot.autoSend";
  const HOLD_MS = 400; // a touch held longer than this stops recording when released

  let recorder = null, chunks = [], startedAt = 0, ticker = null, limitTimer = null;
  let pressStartedAt = 0, lastPointer = "mouse", stopOnRelease = false;

  autoSend.checked = localStorage.getItem(AUTO_SEND_KEY) === "1";
  autoSend.addEventListener("change", () => localStorage.setItem(AUTO_SEND_KEY, autoSend.checked ? "1" : "0"));

  function say(text) {
    status.textContent = text;
    status.hidden = !text;
  }

  function extensionOf(type) {
    if (type.includes("mp4")) return "m4a";
    if (type.includes("ogg")) return "ogg";
    return "webm";
  }

  function showTime() {
    const seconds = Math.floor((Date.now() - startedAt) / 1000);
    timer.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }

  async function start() {
    const reason = micUnavailableReason();
    if (reason) {
      showNotice(reason);
      return;
    }
    showNotice("");
    say("");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      showNotice(micErrorText(error));
      return;
    }
    const type = recordingType();
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    chunks = [];
    recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      const blob = new Blob(chunks, { type: recorder.mimeType || type || "audio/webm" });
      recorder = null;
      upload(blob);
    });
    recorder.start(250);
    startedAt = Date.now();
    showTime();
    timer.hidden = false;
    ticker = setInterval(showTime, 250);
    limitTimer = setTimeout(() => {
      say(`Recordings stop at ${Math.round(maxSeconds / 60)} minutes.`);
      stop();
    }, maxSeconds * 1000);
    mic.classList.add("recording");
    mic.setAttribute("aria-pressed", "true");
    mic.setAttribute("aria-label", "Stop recording");
  }

  function stop() {
    if (!recorder || recorder.state === "inactive") return;
    clearInterval(ticker);
    clearTimeout(limitTimer);
    recorder.stop();
    mic.classList.remove("recording");
    mic.setAttribute("aria-pressed", "false");
    mic.setAttribute("aria-label", "Record a voice message");
    timer.hidden = true;
  }

  async function upload(blob) {
    if (!blob.size) {
      say("Nothing was recorded; hold the button a little longer.");
      return;
    }
    const body = new FormData();
    body.append("file", blob, `recording.${extensionOf(blob.type)}`);
    mic.classList.add("busy");
    mic.disabled = true;
    say("Transcribing…");
    try {
      const response = await reach("/api/transcriptions", { method: "POST", body,
        headers: { "X-CSRFToken": CSRF_TOKEN } });
      if (!response.ok) throw new Error(await errorText(response));
      const result = await response.json();
      if (!result.speech || !result.text.trim()) {
        say("No speech detected; speak closer to the microphone and try again.");
        return;
      }
      say("");
      const before = input.value.trim();
      input.value = before ? `${before} ${result.text}` : result.text;
      input.dispatchEvent(new Event("input"));
      if (autoSend.checked && !state.streaming) form.requestSubmit();
      else input.focus();
    } catch (error) {
      say("");
      showNotice(error.message || "The recording could not be uploaded; try again.");
    } finally {
      mic.classList.remove("busy");
      mic.disabled = false;
    }
  }

  const reason = micUnavailableReason();
  if (reason) {
    mic.classList.add("unavailable");
    mic.title = reason;
  }

  mic.addEventListener("pointerdown", (event) => {
    lastPointer = event.pointerType;
    if (event.pointerType !== "touch") return;
    pressStartedAt = Date.now();
    stopOnRelease = Boolean(recorder); // a second tap stops
    if (!recorder) start();
  });
  mic.addEventListener("pointerup", (event) => {
    if (event.pointerType !== "touch") return;
    // Hold to talk: releasing a long press stops; a short first tap keeps recording until the next tap.
    if (recorder && (stopOnRelease || Date.now() - pressStartedAt > HOLD_MS)) stop();
    stopOnRelease = false;
  });
  mic.addEventListener("click", (event) => {
    if (lastPointer === "touch" && event.detail) return; // handled by the pointer events
    if (recorder) stop();
    else start();
  });
}
