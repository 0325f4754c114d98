"""The chat page in headless Chromium (Debian's package, driven by Playwright) against a real server
running the real SmolLM2 instruct model: typing, streaming, Stop, reload, sidebar, inert markup.

The README's screenshots come from tests/test_ui.py.
"""

import re
import time

import pytest
import requests

from tests.helpers import CHROMIUM, requires, row_action, serious_violations, users_cli, wait_for
from webbot.storage.conversations import Store
from webbot.storage.database import connect

pytestmark = [requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)"), pytest.mark.browser]


def ask(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_ask_see_the_reply_stream_in_and_find_it_after_reload(page, smollm2_server):
    page.goto(smollm2_server.url)
    # Count how often the reply's text grows while it streams.
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver(() => {
            const reply = document.querySelector('.message.assistant.streaming');
            if (reply) window.__updates++;
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "What is the capital of France?")
    page.wait_for_selector(".message.assistant.streaming", timeout=60_000)
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    reply = page.inner_text(".message.assistant .body")
    assert "Paris" in reply
    assert page.evaluate("window.__updates") >= 3  # arrived token by token
    assert page.input_value("#input") == ""
    assert "/c/" in page.url
    title = page.inner_text("#conversation-list li.active .title")
    assert title == "What is the capital of France?"
    assert "tokens" in page.inner_text("#gauge-text")

    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.inner_text(".message.user .body >> nth=0") == "What is the capital of France?"
    assert "Paris" in page.inner_text(".message.assistant .body >> nth=0")


def test_shift_enter_makes_a_new_line_and_stop_halts_the_reply(page, smollm2_server):
    page.goto(smollm2_server.url)
    page.fill("#input", "Write a very long story about a dragon.")
    page.press("#input", "Shift+Enter")
    page.type("#input", "Make it ten chapters.")
    assert page.input_value("#input") == "Write a very long story about a dragon.\nMake it ten chapters."
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant.streaming", timeout=60_000)
    wait_for(page, "document.querySelector('.message.assistant .body').innerText.length > 40",
                           timeout=60_000)
    page.click("#stop")
    page.wait_for_selector(".message.assistant .status", timeout=30_000)
    assert "Stopped" in page.inner_text(".message.assistant .status")
    assert page.is_visible("#send") and not page.is_visible("#stop")
    cid = page.url.rsplit("/", 1)[1]
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    for _ in range(50):  # the server releases the reply right after its last event
        stored = requests.get(f"{smollm2_server.url}/api/conversations/{cid}", cookies=cookies).json()
        if not stored["generating"]:
            break
        time.sleep(0.1)
    assert stored["generating"] is False and stored["messages"][-1]["status"] == "stopped"
    partial = stored["messages"][-1]["content"]
    assert len(partial) > 40 and partial.split()[-1].strip("*#_`") in page.inner_text(".message.assistant .body")
    assert stored["messages"][0]["content"].endswith("\nMake it ten chapters.")


def first_message(page, text: str = "Hello") -> str:
    """Send a first message from the empty page (short replies: the default reply length is this browser's own);
    the chat enters the list with it. Its id."""
    page.evaluate("async () => (await import('/static/js/api.js')).api('PUT', '/api/settings', {max_tokens: 4})")
    page.fill("#input", text)
    page.press("#input", "Enter")
    wait_for(page, "location.pathname.startsWith('/c/') && document.querySelector('#conversation-list li.active')"
                   " && !document.querySelector('.message.streaming') && !document.getElementById('send').hidden")
    return page.url.rsplit("/", 1)[1]


def test_new_chat_rows_appear_only_with_a_first_message(page, smollm2_server):
    """Issue 22, item 5: "+ New chat" clicked again and again used to leave identical empty rows (exported too)."""
    page.goto(smollm2_server.url)
    before = page.locator("#conversation-list li").count()
    for _ in range(3):
        page.click("#new-chat")
    page.keyboard.press("Control+Shift+O")
    assert page.locator("#conversation-list li").count() == before and page.url.endswith("/")
    assert page.evaluate("() => document.activeElement.id") == "input"
    cid = first_message(page, "Plan a picnic")
    assert page.locator("#conversation-list li").count() == before + 1
    assert page.inner_text(f"#conversation-list li[data-id='{cid}'] .title") == "Plan a picnic"
    page.click("#new-chat")
    assert page.url.endswith("/") and page.locator(".message").count() == 0
    page.reload()
    assert page.locator("#conversation-list li").count() == before + 1


def test_sidebar_new_rename_switch_delete(page, smollm2_server):
    page.goto(smollm2_server.url)
    page.click("#new-chat")
    first = first_message(page)
    row_action(page, "#conversation-list li.active", "rename")
    page.fill("#conversation-list li.active .rename-box", "Travel plans")
    page.press("#conversation-list li.active .rename-box", "Enter")
    wait_for(page, "document.querySelector('#conversation-list li.active .title').innerText === 'Travel plans'")
    page.click("#new-chat")
    first_message(page, "Another one")
    assert page.locator("#conversation-list li").count() == 2
    page.click(f"#conversation-list li[data-id='{first}'] .title")
    wait_for(page, f"location.pathname.endsWith('{first}')")
    row_action(page, f"#conversation-list li[data-id='{first}']", "delete")  # no question asked: Undo is offered
    wait_for(page, "document.querySelectorAll('#conversation-list li').length === 1")
    page.reload()
    assert page.locator("#conversation-list li").count() == 1
    assert page.locator(f"#conversation-list li[data-id='{first}']").count() == 0


def test_markup_from_user_and_model_never_runs(page, smollm2_server):
    payloads = ['<script>window.__xss = 1</script>', '<img src=x onerror="window.__xss = 1">',
                '<svg onload="window.__xss = 1"></svg>', '[click me](javascript:window.__xss=1)']
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(smollm2_server.url)
    ask(page, " ".join(payloads))
    # The reply's content does not matter here, and its length is up to the model: stop it early.
    wait_for(page, "(document.querySelector('.message.assistant .body') || {}).innerText?.length > 20",
                           timeout=60_000)
    if page.is_visible("#stop"):
        page.click("#stop")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=60_000)
    cid = page.url.rsplit("/", 1)[1]
    # Model output carrying the same payloads, stored exactly as a finished reply is.
    store = Store(connect(f"sqlite:///{smollm2_server.env['WEBBOT_DATA_DIR']}/webbot.db"))
    store.add_message(cid, "user", "show me html")
    store.add_message(cid, "assistant", "Sure:\n\n" + "\n\n".join(payloads) + "\n\n```html\n<b>code</b>\n```")
    page.reload()
    page.wait_for_selector(".message.assistant >> nth=1")
    links = page.locator(".message a")
    for i in range(links.count()):
        links.nth(i).click()
    assert page.evaluate("window.__xss") is None and dialogs == []
    assert page.locator(".message script, .message img, .message svg").count() == 0
    user_text = page.inner_text(".message.user .body")
    assert '<img src=x onerror="window.__xss = 1">' in user_text  # shown as text
    model_html = page.inner_html(".message.assistant >> nth=1")
    assert "&lt;script&gt;" in model_html and page.locator(".message.assistant >> nth=1 >> pre code").count() == 1


def test_gauge_says_how_many_messages_are_outside_memory(page, smollm2_server):
    page.goto(smollm2_server.url)
    cid = page.evaluate("async () => (await (await import('/static/js/api.js')).api('POST', '/api/conversations', "
                        "{})).id")
    page.goto(f"{smollm2_server.url}/c/{cid}")
    page.wait_for_selector("#conversation-list li.active")
    assert page.inner_text("#gauge-dropped") == ""
    store = Store(connect(f"sqlite:///{smollm2_server.env['WEBBOT_DATA_DIR']}/webbot.db"))
    for n in range(30):  # far more than the 1,536-token budget holds
        store.add_message(cid, "user", f"Question {n}: " + "tell me about the sea " * 10)
        store.add_message(cid, "assistant", f"Answer {n}: " + "the sea is wide and deep " * 10)
    page.reload()
    page.wait_for_selector(".message.assistant >> nth=29")
    dropped = page.inner_text("#gauge-dropped")
    count = int(dropped.split()[0])
    assert dropped == f"{count} earlier messages are outside memory" and 0 < count < 60 and count % 2 == 0
    used, budget = page.inner_text("#gauge-text").replace(" tokens", "").split(" / ")
    assert int(used) <= int(budget) == 1536
    assert "oldest turns are left out" in page.get_attribute("#gauge", "title")


def test_page_says_when_the_model_failed_to_load(browser, start_server, tmp_path):
    server = start_server(tmp_path / "no-such-model", ready=(503,))
    for _ in range(100):  # wait for the load to fail
        if requests.get(server.url + "/healthz").json()["status"] == "error":
            break
        time.sleep(0.2)
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#notice:not([hidden])")
    assert "could not be loaded" in page.inner_text("#notice")
    ask(page, "hello?")
    wait_for(page, "document.getElementById('notice').innerText.includes('WEBBOT_MODEL')")
    assert page.locator(".message.assistant").count() == 0
    page.close()


def test_page_waits_for_a_loading_gguf_model_then_answers(browser, start_server):
    """WEBBOT_MODEL names a .gguf file; transformers dequantises it on load, which takes a while."""
    from harness import assets

    server = start_server(assets.smollm2_gguf(), ready=(200, 503), WEBBOT_MAX_TOKENS="2048", WEBBOT_TEMPERATURE="0")
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(server.url)
    if requests.get(server.url + "/healthz").status_code == 503:
        page.wait_for_selector("#notice:not([hidden])")
        assert "still loading" in page.inner_text("#notice")
    page.wait_for_selector("#notice", state="hidden", timeout=180_000)
    health = requests.get(server.url + "/healthz").json()
    assert (health["status"], health["model"]) == ("ok", "SmolLM2-135M-Instruct.Q4_1.gguf")
    # The header names it in words (issue 22, item 10), the file's name stays in its tooltip for API clients
    assert page.inner_text(".chat-header .model") == "SmolLM2 135M Instruct (Q4_1)"
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in page.get_attribute(".chat-header .model", "title")
    ask(page, "What is the capital of France?")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    assert "Paris" in page.inner_text(".message.assistant .body")
    # with the chat's title and the memory gauge beside it, the name is still shown whole, not cut to "Smol…"
    assert page.evaluate("(e => e.scrollWidth <= e.clientWidth)(document.querySelector('.chat-header .model'))")
    page.close()


def test_the_page_says_when_messages_come_too_fast(page, start_server, tiny_model_dir):
    server = start_server(tiny_model_dir, WEBBOT_RATE_MESSAGES="1/minute", WEBBOT_MAX_TOKENS="1024")
    page.goto(server.url)
    ask(page, "first")
    page.wait_for_selector(".message.assistant:not(.streaming)")
    ask(page, "second")
    page.wait_for_selector("#notice:not([hidden])")
    assert page.inner_text("#notice").startswith("Too many messages: the limit is 1 per 1 minute. Try again in ")
    assert page.input_value("#input") == "second"  # the refused message is kept to send again
    wait = int(re.search(r"Try again in (\d+) seconds", page.inner_text("#notice-text")).group(1))
    page.wait_for_timeout(2200)
    later = int(re.search(r"Try again in (\d+) seconds", page.inner_text("#notice-text")).group(1))
    assert wait - 3 <= later <= wait - 2  # it counts down
    page.click("#notice-close")  # and can be dismissed
    assert page.is_hidden("#notice") and page.get_attribute("#notice-close", "aria-label") == "Dismiss this notice"
    page.problems.clear()  # the browser logs the refused request's 429 itself; that is the point here


def test_sign_in_chat_make_a_key_and_sign_out_in_accounts_mode(page, start_server, tiny_model_dir, tmp_path):
    assert users_cli(tmp_path / "data", "create", "alice", "--admin", password="alice-password").returncode == 0
    assert users_cli(tmp_path / "data", "create", "bob", password="bob-password").returncode == 0
    # a 512-token context keeps the tiny model's reply (at most a quarter of it) to a few seconds
    server = start_server(tiny_model_dir, tmp_path / "data", WEBBOT_AUTH="accounts", WEBBOT_MAX_TOKENS="512")
    page.goto(server.url + "/c/nowhere")
    assert page.url.startswith(server.url + "/signin?next=")
    page.fill("#name", "alice")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    assert "Wrong name or password." in page.inner_text(".form-error")
    page.fill("#name", "alice")
    page.fill("#password", "alice-password")
    page.click("button[type=submit]")
    page.wait_for_selector("text=There is no such conversation here")  # went on to where it was going
    expected = ["Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)",
                "Failed to load resource: the server responded with a status of 404 (NOT FOUND)"]
    assert page.problems == expected  # the wrong password's page, then the missing conversation's
    page.problems.clear()
    page.goto(server.url + "/")
    assert page.inner_text("#account-link") == "alice"
    ask(page, "hello")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=60_000)
    page.click("#account-link")
    page.fill("#name", "laptop")
    page.click("text=Make a key")
    assert page.inner_text("#new-key").startswith("wb-")
    # issue 22's smaller items: the key can be copied, the name field starts empty again, and revoking asks first
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.click("#copy-key")
    wait_for(page, "document.getElementById('copy-key').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == page.inner_text("#new-key")
    assert page.input_value("#name") == ""
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("button[aria-label='Revoke the key laptop']")
    assert asked == ["Revoke the key “laptop”? Programs that use it stop working at once."]
    assert page.locator("button[aria-label='Revoke the key laptop']").count() == 1  # kept: the question was refused
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Revoke the key laptop']")
    page.wait_for_selector("text=The key is revoked")
    assert page.locator("button[aria-label='Revoke the key laptop']").count() == 0
    page.click("text=Admin")
    assert "alice" in page.inner_text("#users")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("button[aria-label='Disable bob']")
    assert asked == ["Disable bob? They are signed out at once."] and "active" in page.inner_text("tr[data-name=bob]")
    # The admin adds a person (issue 22): the password is made, shown once with a Copy button, and works
    page.fill("#add-person #name", "carol")
    page.click("#add-person button[type=submit]")
    page.wait_for_selector("#added")
    assert page.inner_text("#added").startswith("carol is added.") and "carol" in page.inner_text("#users")
    page.click("#added button[data-copy]")
    password = page.evaluate("navigator.clipboard.readText()")
    assert password == page.inner_text("#new-password") and len(password) >= 16
    assert serious_violations(page) == []  # axe-core: the admin page and its new form
    page.click("text=Back to the chat")
    page.click("#signout")
    page.wait_for_url(server.url + "/signin")
    assert page.is_visible("#password")
    page.fill("#name", "carol")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    assert page.inner_text("#account-link") == "carol"
    page.goto("about:blank")  # leave before the server stops, so its closing is not a page error


def test_the_page_says_why_when_the_model_server_dies_mid_reply(page, start_server, tiny_model_dir, tmp_path):
    upstream = start_server(tiny_model_dir, tmp_path / "upstream", WEBBOT_MAX_TOKENS="65536")
    front = start_server(tiny_model_dir, tmp_path / "front", WEBBOT_BACKEND="openai", WEBBOT_MAX_TOKENS="65536",
                         WEBBOT_BACKEND_URL=upstream.url + "/v1", WEBBOT_BACKEND_MODEL="tiny-llama")
    page.goto(front.url)
    ask(page, "Go on forever.")
    page.wait_for_selector(".message.assistant.streaming", timeout=60_000)
    wait_for(page, "document.querySelector('.message.assistant .body').textContent.length > 40")
    upstream.process.kill()
    page.wait_for_selector(".message.assistant:not(.streaming) .status", timeout=30_000)
    assert "Cut off" in page.inner_text(".message.assistant .status")
    assert "stopped answering in the middle of this reply" in page.inner_text("#notice")
    assert page.inner_text(".message.assistant .body").strip()  # what arrived stays on the page
    page.wait_for_load_state("networkidle")  # the title request after the reply ends, before the servers stop
