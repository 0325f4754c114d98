"""The microphone button, Read aloud, Auto-read and Talk mode in headless Chromium against a real server (SmolLM2,
Whisper tiny.en, the Piper voice en_US-joe-medium).

Chromium's fake capture device plays a WAV file made by espeak-ng as the microphone
(`--use-file-for-fake-audio-capture`), and `--use-fake-ui-for-media-stream` accepts the
permission prompt, so the page records, uploads and shows the transcript as with a
person speaking. A second browser without those flags checks the refusals.
"""

import json
import re
import time

import pytest

from harness.audio import convert, generate_audio, speak
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, requires, wait_for, watch_console

FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
QUESTION = "What is the capital of France?"

pytestmark = [requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)"), pytest.mark.browser]


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def launch(playwright, *extra):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra), headless=True)


@pytest.fixture(scope="module")
def speaking_browser(playwright, tmp_path_factory):
    """A browser whose microphone says the question (a 16 kHz WAV: Chromium's fake device loops it)."""
    clip = tmp_path_factory.mktemp("mic") / "question.wav"
    clip.write_bytes(convert(speak("What is the capital of France?"), "-ar", "16000", "-ac", "1",
                             "-af", "apad=pad_dur=1", fmt="wav"))
    browser = launch(playwright, *FAKE_MIC, f"--use-file-for-fake-audio-capture={clip}")
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def silent_browser(playwright, tmp_path_factory):
    clip = tmp_path_factory.mktemp("mic") / "silence.wav"
    clip.write_bytes(generate_audio("anullsrc=r=16000:cl=mono", 3))
    browser = launch(playwright, *FAKE_MIC, f"--use-file-for-fake-audio-capture={clip}")
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def plain_browser(playwright):
    """No fake permission UI: the microphone prompt is refused; webbot.test is a plain-HTTP name."""
    browser = launch(playwright, "--use-fake-device-for-media-stream",
                     "--host-resolver-rules=MAP webbot.test 127.0.0.1")
    yield browser
    browser.close()


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(url)
    return page


def record(page, seconds: float):
    page.click("#mic")
    page.wait_for_selector("#mic.recording")
    wait_for(page, "document.getElementById('mic-timer').textContent !== '0:00'", timeout=10_000)
    page.wait_for_timeout(seconds * 1000)
    assert page.is_visible("#mic-timer")
    page.click("#mic")


def test_record_stop_and_the_transcript_appears_in_the_input(speaking_browser, smollm2_server):
    page = open_page(speaking_browser, smollm2_server.url)
    page.fill("#input", "Please answer:")
    record(page, 3)
    wait_for(page, "document.getElementById('input').value.includes('capital of France')", timeout=60_000)
    assert page.input_value("#input").startswith("Please answer: What is the capital of France?")
    assert not page.is_visible("#mic-timer") and page.get_attribute("#mic", "aria-pressed") == "false"
    assert page.locator(".message").count() == 0  # auto-send is off: nothing sent yet
    assert page.problems == [], page.problems
    page.context.close()


def test_auto_send_is_remembered_and_sends_the_question(speaking_browser, smollm2_server):
    page = open_page(speaking_browser, smollm2_server.url)
    page.check("#auto-send")
    page.reload()
    assert page.is_checked("#auto-send")  # remembered by this browser
    record(page, 2.5)
    page.wait_for_selector(".message.user")
    assert "capital of France" in page.inner_text(".message.user")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    assert "Paris" in page.inner_text(".message.assistant")
    assert page.problems == [], page.problems
    page.context.close()


def test_silence_says_no_speech_detected(silent_browser, smollm2_server):
    page = open_page(silent_browser, smollm2_server.url)
    record(page, 2)
    page.wait_for_selector("#voice-status:has-text('No speech detected')", timeout=60_000)
    assert page.input_value("#input") == ""
    assert page.problems == [], page.problems
    page.context.close()


def test_a_refused_microphone_is_explained(plain_browser, smollm2_server):
    page = open_page(plain_browser, smollm2_server.url)
    page.click("#mic")
    page.wait_for_selector("#notice:has-text('microphone is blocked')", timeout=10_000)
    assert not page.is_visible("#mic-timer")
    page.context.close()


def test_plain_http_on_a_real_host_name_explains_https(plain_browser, smollm2_server):
    page = open_page(plain_browser, smollm2_server.url.replace("127.0.0.1", "webbot.test"))
    assert page.evaluate("window.isSecureContext") is False
    assert "HTTPS" in page.get_attribute("#mic", "title")
    page.click("#mic")
    page.wait_for_selector("#notice:has-text('only allow the microphone over HTTPS')")
    page.context.close()


def test_hold_to_talk_on_a_touch_screen(speaking_browser, smollm2_server):
    context = speaking_browser.new_context(viewport={"width": 390, "height": 740}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(smollm2_server.url)
    box = page.locator("#mic").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    page.wait_for_selector("#mic.recording")
    page.wait_for_timeout(2500)  # holding
    assert page.is_visible("#mic-timer")
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})  # release stops
    wait_for(page, "document.getElementById('input').value.includes('capital of France')", timeout=60_000)
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    context.close()


# Spoken replies: the page's Read aloud, Auto-read and Talk mode, with the real Piper voice on the server.
# Chromium plays the audio (headless, with no speakers); an init script notes each audio element's events.
AUDIO_EVENTS = """
window.audioEvents = [];
const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function () {
  if (!this.watched) {
    this.watched = true;
    for (const name of ["playing", "pause", "ended"]) this.addEventListener(name, () => window.audioEvents.push(name));
  }
  return play.call(this);
};
"""


def speech_page(browser, url):
    page = open_page(browser, "about:blank")
    page.add_init_script(AUDIO_EVENTS)
    page.spoken = []  # the texts the page asked the server to speak, with when it asked
    page.on("request", lambda r: r.url.endswith("/api/speech") and page.spoken.append(
        (time.monotonic(), json.loads(r.post_data)["input"])))
    page.goto(url)
    return page


def audio_events(page) -> list[str]:
    return page.evaluate("window.audioEvents")


def short_replies(page, tokens: int) -> None:
    """This browser's replies end after `tokens` tokens (its saved settings), a few sentences of SmolLM2."""
    page.evaluate("""(tokens) => fetch("/api/settings", {method: "PUT", headers: {"Content-Type": "application/json",
        "X-CSRFToken": document.querySelector('meta[name="csrf-token"]').content},
        body: JSON.stringify({max_tokens: tokens})})""", tokens)


def test_read_aloud_plays_a_reply_and_pauses_resumes_and_stops(speaking_browser, smollm2_server):
    page = speech_page(speaking_browser, smollm2_server.url)
    short_replies(page, 80)  # several sentences: Pause and Stop come while it still speaks
    page.fill("#input", "Tell me about the history of Paris.")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    assert page.spoken == []  # Auto-read is off
    read = page.locator(".message.assistant .read-aloud")
    assert read.get_attribute("aria-label") == "Read aloud: this reply"
    read.click()
    wait_for(page, "window.audioEvents.includes('playing')", timeout=30_000)
    reply = " ".join(page.get_attribute(".message.assistant", "data-content").split())
    assert reply.startswith(" ".join(page.spoken[0][1].split()))  # from its first sentence
    assert read.inner_text() == "Pause" and read.get_attribute("aria-pressed") == "true"
    read.click()
    assert read.inner_text() == "Resume"
    wait_for(page, "window.audioEvents.at(-1) === 'pause'")
    read.click()
    wait_for(page, "window.audioEvents.at(-1) === 'playing'")
    page.click(".message.assistant .stop-reading")
    assert read.inner_text() == "Read aloud" and page.locator(".stop-reading").count() == 0
    wait_for(page, "window.audioEvents.at(-1) === 'pause'")
    assert page.problems == [], page.problems
    page.context.close()


def test_auto_read_speaks_a_streaming_reply_from_its_first_sentence(speaking_browser, smollm2_server):
    page = speech_page(speaking_browser, smollm2_server.url)
    page.check("#auto-read")
    page.reload()
    assert page.is_checked("#auto-read")  # remembered by this browser
    short_replies(page, 120)  # a few sentences, written in a few seconds
    page.fill("#input", "Tell me about the history of Paris.")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant.streaming")
    wait_for(page, "window.audioEvents.includes('playing')", timeout=60_000)
    first_sound = time.monotonic()
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    written = time.monotonic()
    assert written - first_sound > 1, "the reply was spoken only once it was whole"
    page.wait_for_timeout(500)  # the last sentences are asked for as the reply ends
    texts = [text for _, text in page.spoken]
    assert len(texts) >= 3
    for text in texts:  # one sentence at a time
        assert len(re.findall(r"[.!?](?:\s|$)", text.strip())) <= 1, text
    reply = re.sub(r"\s+", " ", page.get_attribute(".message.assistant", "data-content")).strip()
    assert reply.startswith(re.sub(r"\s+", " ", "".join(texts)).strip()[:200])
    assert page.problems == [], page.problems
    page.context.close()


def test_a_long_first_sentence_is_spoken_from_its_first_clause_then_sentence_by_sentence(speaking_browser,
                                                                                         smollm2_server):
    """The page's own reply events (what reply.js sends as text streams in), so the text is known; the audio is
    the real server's."""
    page = speech_page(speaking_browser, smollm2_server.url)
    page.check("#auto-read")
    page.evaluate("""() => {
        const reply = document.createElement("div");
        reply.className = "message assistant";
        reply.dataset.id = "written-here";
        document.getElementById("messages").appendChild(reply);
        window.grow = (text, done) => document.dispatchEvent(new CustomEvent("reply-text",
            { detail: { element: reply, text, from: 0, done } }));
    }""")
    page.evaluate("grow('To make a good cup of tea at home, first', false)")
    wait_for(page, "window.audioEvents.includes('playing')", timeout=30_000)  # said before the sentence ends
    assert [text for _, text in page.spoken] == ["To make a good cup of tea at home, "]
    page.evaluate("grow('To make a good cup of tea at home, first boil fresh water, then pour it. Sure, wait', false)")
    page.evaluate("grow('To make a good cup of tea at home, first boil fresh water, then pour it. Sure, wait.', true)")
    wait_for(page, "window.audioEvents.filter((e) => e === 'playing').length >= 3", timeout=30_000)
    # after the first clause, whole sentences again (and "Sure," is too short to be a clause of its own)
    assert [text for _, text in page.spoken] == ["To make a good cup of tea at home, ",
                                                 "first boil fresh water, then pour it. ", "Sure, wait."]
    clauses = page.evaluate("""async () => {
        const { firstClause } = await import("/static/js/speak.js");
        return ["Paris, France, is lovely", "1. Boil the water in a kettle, then", "```py\\nprint(1, 2, 3, 4, 5, 6)",
                "Ça dépend de la température de l'eau, vraiment", "Short one - two"].map((t) => firstClause(t, 0));
    }""")
    assert clauses == [-1, -1, -1, 38, -1]  # too few words, a list, code; accented words count
    assert page.problems == [], page.problems
    page.context.close()


@pytest.fixture(scope="module")
def storytelling_browser(playwright, tmp_path_factory):
    """A microphone that asks for a story, then is quiet for 6 s, again and again (the fake device loops)."""
    clip = tmp_path_factory.mktemp("mic") / "story.wav"
    clip.write_bytes(convert(speak("Tell me a story about a dragon."), "-ar", "16000", "-ac", "1",
                             "-af", "apad=pad_dur=6", fmt="wav"))
    browser = launch(playwright, *FAKE_MIC, f"--use-file-for-fake-audio-capture={clip}")
    yield browser
    browser.close()


def test_talk_mode_hears_sends_speaks_and_is_interrupted_by_new_words(storytelling_browser, smollm2_server):
    page = speech_page(storytelling_browser, smollm2_server.url)
    assert not page.is_checked("#auto-read")  # Talk speaks whatever the switch says
    page.click("#talk")
    page.wait_for_selector("#talk[aria-pressed=true]")
    assert page.is_visible("#talk-panel")
    states, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline and states[-2:] != ["speaking", "hearing"]:
        state = page.get_attribute("#talk-panel", "data-state")
        if not states or states[-1] != state:
            states.append(state)
        time.sleep(0.03)
    # It listened, heard words, sent them, spoke the reply, and the question said again cut it short.
    assert states[:4] == ["listening", "hearing", "thinking", "speaking"] and states[-1] == "hearing", states
    assert "dragon" in page.inner_text(".message.user").lower()
    wait_for(page, "document.querySelector('.message.assistant').dataset.content !== ''")  # stored, shown again
    first_reply = " ".join(page.get_attribute(".message.assistant >> nth=0", "data-content").split())
    assert page.spoken and first_reply.startswith(" ".join(page.spoken[0][1].split()))  # spoken as it streamed
    wait_for(page, "window.audioEvents.at(-1) !== 'playing'", timeout=5_000)  # the speech stopped
    page.wait_for_selector(".message.user >> nth=1", timeout=60_000)  # the new words were sent
    page.keyboard.press("Escape")
    assert page.is_hidden("#talk-panel") and page.get_attribute("#talk", "aria-pressed") == "false"
    assert page.problems == [], page.problems
    page.context.close()


@pytest.fixture(scope="module")
def pausing_browser(playwright, tmp_path_factory):
    """A microphone that says "What is the capital", pauses 500 ms (longer than Talk's EARLY_MS, shorter than its
    END_SILENCE_MS), says "of France?", then is quiet for 8 s."""
    import wave

    import numpy as np

    def pcm(text):  # espeak-ng's words without the quiet it puts after them
        words = np.frombuffer(convert(speak(text), "-ar", "16000", "-ac", "1", fmt="s16le"), dtype=np.int16)
        return words[:np.nonzero(np.abs(words) > 300)[0][-1] + 1]

    samples = np.concatenate([pcm("What is the capital"), np.zeros(int(16000 * 0.5), np.int16), pcm("of France?"),
                              np.zeros(16000 * 8, np.int16)])
    clip = tmp_path_factory.mktemp("mic") / "pause.wav"
    with wave.open(str(clip), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    browser = launch(playwright, *FAKE_MIC, f"--use-file-for-fake-audio-capture={clip}")
    yield browser
    browser.close()


def test_talk_sends_the_words_ahead_at_a_short_quiet_and_drops_them_when_the_person_goes_on(pausing_browser,
                                                                                             smollm2_server):
    """Talk sends what was said after EARLY_MS of quiet, before it is sure the person stopped (so the transcript
    is back sooner); a pause mid-sentence must not cut the sentence: that early transcript is dropped."""
    page = speech_page(pausing_browser, smollm2_server.url)
    sent = []  # (when, ended) for each transcription request
    page.on("request", lambda r: r.url.endswith("/api/transcriptions") and sent.append(time.monotonic()))
    thinking = []
    page.click("#talk")
    deadline = time.monotonic() + 60
    while not thinking and time.monotonic() < deadline:
        if page.get_attribute("#talk-panel", "data-state") == "thinking":
            thinking.append(time.monotonic())
        time.sleep(0.02)
    page.wait_for_selector(".message.user", timeout=60_000)
    said = page.inner_text(".message.user").lower()
    assert "capital" in said and "france" in said, said  # the whole sentence, not what came before the pause
    # One request went in the pause and was dropped, the next when the sentence ended, before Talk was sure
    assert len(sent) == 2 and sent[1] < thinking[0], (sent, thinking)
    page.keyboard.press("Escape")
    assert page.problems == [], page.problems
    page.context.close()


def test_talk_on_a_phone_fits_has_touch_sized_controls_and_ends_with_a_tap(silent_browser, smollm2_server):
    context = silent_browser.new_context(viewport={"width": 390, "height": 740}, has_touch=True, is_mobile=True)
    page = context.new_page()
    watch_console(page)
    page.goto(smollm2_server.url)
    page.tap("#talk")
    page.wait_for_selector("#talk-panel[data-state=listening]")
    assert page.inner_text("#talk-state") == "Listening…"
    for control in ("#talk", "#talk-end"):
        box = page.locator(control).bounding_box()
        assert box["height"] >= 44 and box["width"] >= 44, (control, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    page.wait_for_timeout(1500)
    assert page.get_attribute("#talk-panel", "data-state") == "listening"  # silence is not words
    page.tap("#talk-end")
    assert page.is_hidden("#talk-panel") and page.get_attribute("#talk", "aria-pressed") == "false"
    assert page.locator(".message").count() == 0 and page.problems == [], page.problems
    context.close()


def test_talk_with_a_refused_microphone_says_why(plain_browser, smollm2_server):
    page = open_page(plain_browser, smollm2_server.url)
    page.click("#talk")
    page.wait_for_selector("#notice:has-text('microphone is blocked')", timeout=10_000)
    assert page.is_hidden("#talk-panel") and page.get_attribute("#talk", "aria-pressed") == "false"
    page.context.close()
