"""The microphone button in headless Chromium against a real server (SmolLM2 + Whisper tiny.en).

Chromium's fake capture device plays a WAV file made by espeak-ng as the microphone
(`--use-file-for-fake-audio-capture`), and `--use-fake-ui-for-media-stream` accepts the
permission prompt, so the page records, uploads and shows the transcript as with a
person speaking. A second browser without those flags checks the refusals.
"""


import pytest

from harness.audio import convert, generate_audio, speak
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, requires, wait_for

FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]

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
