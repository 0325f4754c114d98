"""Every feature of the chat page, one test each, in headless Chromium (Debian's package, driven by
Playwright) against the real server process. Most run on the tiny random Llama, whose text is noise but
whose tokens, timing and storage are real; the generated title uses the real SmolLM2. Each test runs in a
fresh browser context (its own cookie, so its own conversations) and fails on any console error or CSP
violation (the `page` fixture).

Set WEBBOT_SCREENSHOTS=1 to write the README's screenshots to docs/screenshots/.
"""

import json
import os
import re
import time
from pathlib import Path

import pytest
import requests

from harness.server_process import Server
from tests.helpers import CHROMIUM, requires, row_action, wait_for, watch_console
from tests.tcp_proxy import Proxy
from webbot.storage.conversations import Store
from webbot.storage.database import connect

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = [requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)"), pytest.mark.browser]

CODE_AND_MATH = ("Here is the function:\n\n```python\ndef add(a, b):\n    return a + b  # the sum\n```\n\n"
                 "Pythagoras: $a^2 + b^2 = c^2$, and on its own line:\n\n$$\\int_0^1 x\\,dx = \\frac{1}{2}$$\n")


@pytest.fixture(scope="module")
def ui_server(tiny_model_dir, tmp_path_factory):
    """The tiny model with short replies (a 512-token context leaves 128 for a reply), sampled at
    temperature 1 so that a regenerated reply differs from the first."""
    tmp = tmp_path_factory.mktemp("ui-server")
    server = Server(tiny_model_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="512",
                    WEBBOT_TEMPERATURE="1.0", WEBBOT_GENERATE_TITLES="off").start()
    yield server
    server.stop()


@pytest.fixture
def fp32_smollm2_server(smollm2_dir, tmp_path):
    """SmolLM2 with fp32 weights, for a test that checks what the model itself writes. Its int8 weights (the
    CPU default) give other greedy words on another CPU: on one with AVX-512 the title came out "1. 1. Preheat your
    oven to 350 degrees.", rightly refused, where fp32 writes "Baking Bread: Step-by-step Guide". int8's
    closeness to fp32 is measured in test_quant.py and bench/bench_quant.py."""
    server = Server(smollm2_dir, tmp_path / "data", tmp_path / "server.log", WEBBOT_MAX_TOKENS="2048",
                    WEBBOT_TEMPERATURE="0", WEBBOT_QUANT="none").start()
    yield server
    server.stop()


def store_of(server) -> Store:
    """The server's own database, for putting known text in place (as a finished reply is stored)."""
    return Store(connect(f"sqlite:///{server.env['WEBBOT_DATA_DIR']}/webbot.db"))


def ask(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def ask_and_wait(page, text, replies: int = 1):
    ask(page, text)
    page.wait_for_selector(f".message.assistant >> nth={replies - 1}", timeout=60_000)
    wait_for(page, "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden",
             timeout=60_000)


def call(page, method, path, body=None):
    """A request from inside the page, with its cookie and CSRF token (the page's own `api`, from static/js/api.js)."""
    script = "async ([m, p, b]) => (await import('/static/js/api.js')).api(m, p, b === null ? undefined : b)"
    return page.evaluate(script, [method, path, body])


def expect_refusals(page, status: int) -> None:
    """Take the console's note of a refusal the test asked for (Chromium logs every 4xx) out of the problems."""
    expected = f"the server responded with a status of {status}"
    assert any(expected in p for p in page.problems), page.problems
    page.problems[:] = [p for p in page.problems if expected not in p]


def current_id(page) -> str:
    return page.url.rsplit("/", 1)[1]


def start_chat(page, url: str, **settings) -> str:
    """Open the page, start a chat with the New chat button, give it its own settings; returns its id."""
    page.goto(url)
    cid = call(page, "POST", "/api/conversations", {})["id"]  # "+ New chat" makes none until a message is sent
    page.goto(f"{url}/c/{cid}")
    page.wait_for_selector(f"#conversation-list li[data-id='{cid}'].active")
    if settings:
        call(page, "PATCH", f"/api/conversations/{cid}", {"settings": settings})
    return cid


def new_chat_with(page, server, *exchanges) -> str:
    """A conversation holding the given (user, assistant) texts, opened in the page."""
    page.goto(server.url)
    cid = call(page, "POST", "/api/conversations", {})["id"]
    store = store_of(server)
    for user, assistant in exchanges:
        store.add_message(cid, "user", user)
        store.add_message(cid, "assistant", assistant)
    page.goto(f"{server.url}/c/{cid}")
    page.wait_for_selector(f".message.assistant >> nth={len(exchanges) - 1}")
    return cid


def test_copy_buttons_copy_a_message_and_a_code_block(page, ui_server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui_server.url)
    new_chat_with(page, ui_server, ("Show me code", CODE_AND_MATH))
    page.click(".message.assistant .message-tools .copy")
    wait_for(page, "document.querySelector('.message.assistant .copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == CODE_AND_MATH  # the Markdown as written
    page.click(".message.assistant pre .copy-code")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b  # the sum\n"
    page.click(".message.user .copy")
    assert page.evaluate("navigator.clipboard.readText()") == "Show me code"


def test_code_is_highlighted_and_math_laid_out_by_katex(page, ui_server):
    new_chat_with(page, ui_server, ("Broken math", "Half a fraction: $\\frac{1}{$ and a price of $5 and $6."),
                  ("Code and math please", CODE_AND_MATH))
    broken = page.locator(".message.assistant >> nth=0")
    assert broken.locator(".math-error").inner_text() == "\\frac{1}{"  # shown as written, no CSP error
    assert "a price of $5 and $6." in broken.inner_text()  # dollars in prose stay prose
    assert page.locator(".message.assistant pre code.hljs .hljs-keyword").first.inner_text() == "def"
    assert page.locator(".message.assistant pre code .hljs-comment").inner_text() == "# the sum"
    assert page.locator(".message.assistant .katex").count() == 2
    assert page.locator(".message.assistant .katex-display").count() == 1  # $$…$$ as a block
    assert page.evaluate("getComputedStyle(document.querySelector('.math.inline')).display") == "inline"
    assert page.locator(".message.assistant .katex-mathml annotation").first.text_content() == "a^2 + b^2 = c^2"
    # The KaTeX fonts come from the vendored files under the app's own CSP.
    wait_for(page, "document.fonts.check('16px KaTeX_Main')", timeout=10_000)


def test_regenerate_keeps_the_old_reply_as_a_version(page, ui_server):
    page.goto(ui_server.url)
    ask_and_wait(page, "Tell me something.")
    first = page.inner_text(".message.assistant .body")
    page.click(".message.assistant .regenerate")
    wait_for(page, "document.querySelector('.message.assistant .version-label')?.textContent === '2/2'",
             timeout=60_000)
    second = page.inner_text(".message.assistant .body")
    assert page.locator(".message").count() == 2 and second != first
    page.click(".message.assistant .previous-version")
    wait_for(page, "document.querySelector('.message.assistant .version-label').textContent === '1/2'")
    assert page.inner_text(".message.assistant .body") == first
    page.reload()  # the shown version is remembered
    page.wait_for_selector(".message.assistant .version-label")
    assert page.inner_text(".message.assistant .version-label") == "1/2"
    assert page.inner_text(".message.assistant .body") == first


def test_edit_and_resend_makes_a_branch_that_can_be_switched_back(page, ui_server):
    page.goto(ui_server.url)
    ask_and_wait(page, "First question")
    ask_and_wait(page, "Second question", replies=2)
    page.click(".message.user >> nth=1 >> .edit")
    page.fill(".edit-box textarea", "Second question, edited")
    page.click(".edit-box .save-edit")
    wait_for(page, "document.querySelectorAll('.message.user')[1]?.querySelector('.version-label')?.textContent "
                   "=== '2/2'", timeout=60_000)
    wait_for(page, "!document.querySelector('.message.streaming')", timeout=60_000)
    assert page.inner_text(".message.user >> nth=1 >> .body") == "Second question, edited"
    assert page.locator(".message").count() == 4  # the first exchange, then the new branch
    page.click(".message.user >> nth=1 >> .previous-version")
    wait_for(page, "document.querySelectorAll('.message.user')[1].querySelector('.body').innerText "
                   "=== 'Second question'")
    assert page.locator(".message").count() == 4
    cid = current_id(page)
    stored = call(page, "GET", f"/api/conversations/{cid}")
    assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == ["First question", "Second question"]
    assert len(store_of(ui_server).messages(cid)) == 6  # both branches kept


def test_continue_a_reply_cut_off_by_the_length_limit(page, ui_server):
    cid = start_chat(page, ui_server.url, max_tokens=6)
    ask_and_wait(page, "Write a long story.")
    assert page.inner_text(".message.assistant .status") == "Cut off at the reply length limit."
    before = store_of(ui_server).messages(cid)[-1]["content"]
    page.click(".message.assistant .continue")
    wait_for(page, "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden",
             timeout=60_000)
    after = store_of(ui_server).messages(cid)
    assert len(after) == 2 and after[-1]["content"].startswith(before) and len(after[-1]["content"]) > len(before)
    assert page.locator(".message.assistant").count() == 1  # the same reply, longer
    # the page shows the whole stored reply: compared by letters and digits, since Markdown folds whitespace and
    # takes its marks (the random model writes any characters)
    shown, stored = (re.sub(r"[\W_]", "", text) for text in (page.inner_text(".message.assistant .body"),
                                                             after[-1]["content"]))
    assert shown == stored, (shown, stored)


def test_rename_inline_pin_and_delete_with_undo(page, ui_server):
    page.goto(ui_server.url)
    ids = [call(page, "POST", "/api/conversations", {})["id"] for _ in range(3)]
    page.goto(f"{ui_server.url}/c/{ids[-1]}")
    page.wait_for_selector(f"#conversation-list li[data-id='{ids[0]}']")
    oldest = ids[0]
    row_action(page, f"#conversation-list li[data-id='{oldest}']", "rename")
    page.fill(f"#conversation-list li[data-id='{oldest}'] .rename-box", "Travel plans")
    page.press(f"#conversation-list li[data-id='{oldest}'] .rename-box", "Enter")
    wait_for(page, f"document.querySelector(\"li[data-id='{oldest}'] .title\").innerText === 'Travel plans'")
    assert page.locator("#conversation-list li").first.get_attribute("data-id") == ids[2]
    row_action(page, f"#conversation-list li[data-id='{oldest}']", "pin")
    wait_for(page, f"document.querySelector('#conversation-list li').dataset.id === '{oldest}'")
    page.reload()
    assert page.locator("#conversation-list li").first.get_attribute("data-id") == oldest  # pinned, on top
    assert page.inner_text("#conversation-list li >> nth=0 >> .title") == "Travel plans"

    row_action(page, f"#conversation-list li[data-id='{oldest}']", "delete")
    page.wait_for_selector("#toast:not([hidden])")
    assert "Travel plans" in page.inner_text("#toast-text")
    assert page.locator(f"#conversation-list li[data-id='{oldest}']").count() == 0
    page.click("#toast-undo")
    page.wait_for_selector(f"#conversation-list li[data-id='{oldest}']")
    page.reload()
    assert page.locator("#conversation-list li").count() == 3
    row_action(page, f"#conversation-list li[data-id='{ids[1]}']", "delete")
    page.wait_for_selector("#toast:not([hidden])")
    page.reload()  # no undo: it stays deleted
    assert [page.locator("#conversation-list li").nth(i).get_attribute("data-id") for i in range(2)] == \
        [oldest, ids[2]]


def test_search_finds_titles_and_message_text(page, ui_server):
    cid = new_chat_with(page, ui_server, ("Where do zebras live?", "Zebras live in Africa <img src=x> on plains."),
                        ("And giraffes?", "Giraffes too."))
    call(page, "PATCH", f"/api/conversations/{cid}", {"title": "Savanna notes"})
    other = new_chat_with(page, ui_server, ("Something else", "Nothing about animals."))
    page.fill("#search", "zebr")  # a word's beginning is enough
    page.wait_for_selector("#search-results:not([hidden]) li")
    results = page.locator("#search-results li")
    assert results.count() == 1 and page.inner_text("#search-results li strong") == "Savanna notes"
    assert page.locator("#search-results mark").first.inner_text().lower().startswith("zebra")
    assert page.locator("#search-results img").count() == 0  # message text stays text
    page.fill("#search", "savanna")
    wait_for(page, "document.querySelector('#search-results mark')?.innerText === 'Savanna'")
    page.fill("#search", "plains africa")  # every word must match, anywhere in one message
    wait_for(page, "[...document.querySelectorAll('#search-results mark')].some((m) => m.innerText === 'plains')")
    assert page.locator("#search-results li").count() == 1
    page.click("#search-results li a")
    wait_for(page, f"location.pathname === '/c/{cid}'")
    page.wait_for_selector(".message.found")
    assert "Africa" in page.inner_text(".message.found")
    page.fill("#search", "quokka")
    page.wait_for_selector("#search-empty:not([hidden])")
    page.fill("#search", "")
    page.wait_for_selector("#conversation-list:not([hidden])")
    assert page.locator(f"#conversation-list li[data-id='{other}']").count() == 1


def test_a_title_is_generated_from_the_first_exchange(browser, fp32_smollm2_server):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    watch_console(page)
    cid = start_chat(page, fp32_smollm2_server.url, max_tokens=24)
    question = "How do I bake bread?"
    ask(page, question)
    wait_for(page, f"(document.querySelector(\"li[data-id='{cid}'] .title\")?.innerText || '') !== 'New chat' && "
                   f"document.querySelector(\"li[data-id='{cid}'] .title\").innerText !== {json.dumps(question)}",
             timeout=120_000)
    title = page.inner_text(f"li[data-id='{cid}'] .title")
    stored = store_of(fp32_smollm2_server).get_conversation(_owner_of(fp32_smollm2_server, cid), cid)
    assert stored["title"] == title and 0 < len(title) <= 60
    from webbot.model.recall import rank

    assert rank([title], question, 1) == [0], title  # about the question (SmolLM2 writes "Baking Bread")
    context.close()
    assert page.problems == []


def test_editing_the_first_message_retitles_the_chat_unless_renamed(browser, smollm2_server):
    """Issue 22, item 6: an edited first message kept the old title."""
    from webbot.model.recall import rank

    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    watch_console(page)
    cid = start_chat(page, smollm2_server.url, max_tokens=24)
    title = f"#conversation-list li[data-id='{cid}'] .title"
    with page.expect_response(lambda r: r.url.endswith("/title"), timeout=120_000):
        ask_and_wait(page, "What is the capital of France?")
    france = page.inner_text(title)

    def edit_first(text):
        page.click(".message.user >> nth=0 >> .edit")
        page.fill(".edit-box textarea", text)
        with page.expect_response(lambda r: r.url.endswith("/title"), timeout=120_000):
            page.click(".edit-box .save-edit")
        wait_for(page, "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden",
                 timeout=120_000)

    edit_first("How do I bake bread?")
    bread = page.inner_text(title)
    assert bread != france and rank([bread], "How do I bake bread?", 1) == [0], bread  # about the new question
    row_action(page, f"#conversation-list li[data-id='{cid}']", "rename")
    page.fill(f"#conversation-list li[data-id='{cid}'] .rename-box", "Kitchen")
    page.press(f"#conversation-list li[data-id='{cid}'] .rename-box", "Enter")
    wait_for(page, f"document.querySelector(\"{title}\").innerText === 'Kitchen'")
    edit_first("And how do I bake a cake?")
    assert page.inner_text(title) == "Kitchen"
    page.reload()
    assert page.inner_text(title) == "Kitchen"
    context.close()
    assert page.problems == []


def _owner_of(server, cid) -> str:
    with connect(f"sqlite:///{server.env['WEBBOT_DATA_DIR']}/webbot.db").connect() as db:
        from sqlalchemy import text

        return db.execute(text("SELECT owner FROM conversations WHERE id = :id"), {"id": cid}).scalar_one()


def test_export_one_and_all_as_json_and_markdown_and_import_back(page, ui_server, tmp_path):
    first = new_chat_with(page, ui_server, ("Export me", "Exported *reply*"))
    call(page, "PATCH", f"/api/conversations/{first}", {"title": "Export me"})
    second = new_chat_with(page, ui_server, ("A second chat", "Its reply"))
    call(page, "PATCH", f"/api/conversations/{second}", {"title": "A second chat"})
    page.click(f"#conversation-list li[data-id='{first}'] .title")
    wait_for(page, f"location.pathname === '/c/{first}'")
    with page.expect_download() as download:
        page.click("#export-markdown")
    markdown = Path(download.value.path()).read_text()
    assert markdown.startswith("# Export me") and "**Assistant:**\n\nExported *reply*" in markdown
    with page.expect_download() as download:
        page.click("#export-all-json")
    everything = json.loads(Path(download.value.path()).read_text())
    assert sorted(c["title"] for c in everything["conversations"]) == ["A second chat", "Export me"]
    with page.expect_download() as download:
        page.click("#export-all-markdown")
    assert "# A second chat" in Path(download.value.path()).read_text()

    saved = tmp_path / "conversations.json"
    saved.write_text(json.dumps(everything))
    page.set_input_files("#import-file", str(saved))
    page.wait_for_selector("#toast:not([hidden])")
    assert "Imported 2 conversations" in page.inner_text("#toast-text")
    wait_for(page, "document.querySelectorAll('#conversation-list li').length === 4")
    mine = call(page, "GET", "/api/conversations")["conversations"]
    copies = [c for c in mine if c["title"] == "Export me"]
    assert len(copies) == 2
    texts = [[m["content"] for m in call(page, "GET", f"/api/conversations/{c['id']}")["messages"]] for c in copies]
    assert texts[0] == texts[1] == ["Export me", "Exported *reply*"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"conversations": [{"messages": [{"role": "wizard", "content": "x"}]}]}')
    page.set_input_files("#import-file", str(broken))
    page.wait_for_selector("#notice:not([hidden])")
    assert "role 'wizard'" in page.inner_text("#notice")
    expect_refusals(page, 400)


def test_settings_for_a_chat_and_as_defaults_with_the_models_limits(page, ui_server):
    cid = start_chat(page, ui_server.url)
    wait_for(page, "document.getElementById('gauge-text').textContent !== ''")
    used_before = int(page.inner_text("#gauge-text").split(" / ")[0])
    page.click("#open-settings")
    page.wait_for_selector("#settings-dialog[open]")
    assert "a context of 512 tokens" in page.inner_text("#settings-limits")
    assert "a reply up to 128" in page.inner_text("#settings-limits")
    page.fill("#set-max-tokens", "500")
    page.click("#save-chat-settings")
    page.wait_for_selector("#settings-error:not([hidden])")
    assert "from 1 to 128" in page.inner_text("#settings-error")  # said, not silently clamped
    expect_refusals(page, 400)
    page.fill("#set-max-tokens", "40")
    page.fill("#set-system-prompt", "You are a pirate who answers every question with a long sea shanty.")
    page.fill("#set-temperature", "0.3")
    page.click("#save-chat-settings")
    wait_for(page, "!document.getElementById('settings-dialog').open")
    wait_for(page, f"Number(document.getElementById('gauge-text').textContent.split(' / ')[0]) > {used_before}")
    own = call(page, "GET", f"/api/conversations/{cid}")
    assert own["conversation"]["settings"]["temperature"] == 0.3 and own["settings"]["max_tokens"] == 40
    page.click("#open-settings")
    page.wait_for_selector("#settings-dialog[open]")
    assert page.input_value("#set-temperature") == "0.3"
    assert "own settings" in page.inner_text("#settings-scope")
    page.fill("#set-top-p", "0.9")
    page.click("#save-default-settings")
    wait_for(page, "!document.getElementById('settings-dialog').open")
    assert call(page, "GET", "/api/settings")["saved"]["top_p"] == 0.9
    fresh = call(page, "GET", f"/api/conversations/{call(page, 'POST', '/api/conversations', {})['id']}")
    assert fresh["conversation"]["settings"] is None and fresh["settings"]["top_p"] == 0.9  # the new default


def test_the_gauge_tooltip_explains_trimming(page, ui_server):
    start_chat(page, ui_server.url)
    page.wait_for_selector("#gauge:not([hidden])")
    assert not page.is_visible("#gauge-tip")
    page.hover("#gauge")
    page.wait_for_selector("#gauge-tip", state="visible")
    assert "oldest turns are left out" in page.inner_text("#gauge-tip")
    page.mouse.move(600, 500)
    page.wait_for_selector("#gauge-tip", state="hidden")
    page.focus("#gauge")  # keyboard users get it too
    page.wait_for_selector("#gauge-tip", state="visible")
    assert page.get_attribute("#gauge", "aria-describedby") == "gauge-tip"


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_themes_follow_the_system_and_the_switch_overrides_it(browser, ui_server):
    context = browser.new_context(color_scheme="dark")
    page = context.new_page()
    watch_console(page)
    page.goto(ui_server.url)
    dark, light = "rgb(22, 22, 26)", "rgb(247, 247, 248)"
    assert background(page) == dark  # the system says dark
    page.click("#theme-toggle")
    assert background(page) == light and "light" in page.get_attribute("#theme-toggle", "aria-label")
    page.reload()
    assert background(page) == light  # remembered
    page.click("#theme-toggle")
    assert background(page) == dark and page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.click("#theme-toggle")
    assert "follows the system" in page.get_attribute("#theme-toggle", "aria-label")
    page.emulate_media(color_scheme="light")
    assert background(page) == light  # back to following the system
    context.close()
    assert page.problems == []


def test_phone_layout_has_a_drawer_and_the_input_at_the_bottom(browser, ui_server):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch_console(page)
    page.goto(ui_server.url)
    ask_and_wait(page, "Hello from a phone " * 8)
    for _ in range(3):
        ask_and_wait(page, "More, please. " * 6, replies=page.locator(".message.assistant").count() + 1)
    composer = page.locator("#composer").bounding_box()
    assert abs(composer["y"] + composer["height"] - 740) <= 1  # at the bottom, however long the chat
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing sticks out sideways
    sidebar = page.locator("#sidebar").bounding_box()
    assert not page.is_visible("#sidebar") or sidebar["x"] + sidebar["width"] <= 0
    page.click("#open-drawer")
    wait_for(page, "document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    assert page.is_visible("#conversation-list li.active")
    assert page.get_attribute("#open-drawer", "aria-expanded") == "true"
    page.click("#scrim", position={"x": 340, "y": 400})
    wait_for(page, "document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    for selector in ("#send", "#mic", "#input", "#open-settings", "#theme-toggle"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, selector
    context.close()
    assert page.problems == []


def test_keyboard_shortcuts_and_their_help_dialog(page, ui_server):
    page.goto(ui_server.url)
    page.keyboard.press("Control+/")
    page.wait_for_selector("#help-dialog[open]")
    help_text = page.inner_text("#help-dialog")
    for words in ("New chat", "Focus the message box", "Stop the reply", "Regenerate the last reply"):
        assert words in help_text
    page.keyboard.press("Escape")
    wait_for(page, "!document.getElementById('help-dialog').open")

    page.focus("#search")
    page.keyboard.press("Control+Shift+O")  # new chat: the empty page, ready to type
    wait_for(page, "location.pathname === '/' && document.activeElement.id === 'input'")
    page.focus("#search")
    page.keyboard.press("Shift+Escape")  # focus the message box
    assert page.evaluate("document.activeElement.id") == "input"
    call(page, "PUT", "/api/settings", {"max_tokens": 128})  # this browser's default, so the new chat's
    ask(page, "Write for a long time.")
    page.wait_for_selector(".message.assistant.streaming")
    page.keyboard.press("Escape")  # stop
    page.wait_for_selector(".message.assistant .status")
    assert page.inner_text(".message.assistant .status") in ("Stopped before the end.",
                                                             "Cut off at the reply length limit.")
    wait_for(page, "!document.getElementById('send').hidden")
    page.keyboard.press("Control+Shift+Enter")  # regenerate
    wait_for(page, "document.querySelector('.message.assistant .version-label')?.textContent === '2/2'",
             timeout=60_000)


def test_controls_have_names_and_focus_is_visible(page, ui_server):
    new_chat_with(page, ui_server, ("Question", "Answer with `code`"))
    unnamed = page.evaluate("""() => {
        const name = (el) => (el.getAttribute('aria-label') || (el.labels && el.labels[0]?.innerText) ||
                              el.innerText || el.title || el.getAttribute('placeholder') || '').trim();
        return [...document.querySelectorAll('button, a, input, textarea, select, [tabindex]')]
            .filter((el) => el.getClientRects().length && !name(el)).map((el) => el.outerHTML.slice(0, 80));
    }""")
    assert unnamed == []
    outlines = []
    for _ in range(12):  # Tab through the page: each focused control shows an outline
        page.keyboard.press("Tab")
        outlines.append(page.evaluate("""() => { const s = getComputedStyle(document.activeElement);
            const el = document.activeElement;
            return [el === document.body ? "BODY" : el.id || el.className || el.tagName, s.outlineStyle,
                    parseFloat(s.outlineWidth)]; }"""))
    outlines = [o for o in outlines if o[0] != "BODY"]  # past the last control, focus leaves the page
    assert len(outlines) >= 10 and all(style != "none" and width >= 2 for _, style, width in outlines), outlines
    assert page.get_attribute("#announcer", "aria-live") == "polite"  # the finished reply, not every token


@pytest.mark.slow
def test_switch_chats_and_start_one_while_a_reply_is_written(start_server, tiny_model_dir, page):
    """Issue 22, item 2: during a reply, clicking another chat did nothing and New chat showed Stop where Enter did
    nothing. Now the reply goes on in the background, its row says so, and it is whole when the person is back."""
    server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="8192")
    cid = start_chat(page, server.url, max_tokens=1200)
    ask(page, "Write at length.")
    page.wait_for_selector(".message.assistant.streaming")
    page.click("#new-chat")
    assert page.url == server.url + "/" and page.locator(".message").count() == 0
    assert page.is_visible("#send") and page.is_hidden("#stop")
    page.wait_for_selector(f"#conversation-list li[data-id='{cid}'] .writing-badge")
    page.click(f"#conversation-list li[data-id='{cid}'] .title")  # back while it is written: it is live
    page.wait_for_selector(".message.assistant.streaming")
    assert page.is_visible("#stop") and page.locator(f"li[data-id='{cid}'] .writing-badge").count() == 0
    grown = page.evaluate("document.querySelector('.message.assistant .body').innerText.length")
    wait_for(page, f"document.querySelector('.message.assistant .body').innerText.length > {grown}")
    page.click("#new-chat")
    call(page, "PUT", "/api/settings", {"max_tokens": 4})
    ask(page, "A second chat, meanwhile")
    wait_for(page, "location.pathname.startsWith('/c/') && document.querySelectorAll('.message').length === 2 && "
                   "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden")
    second = current_id(page)
    assert second != cid and page.locator(f"li[data-id='{cid}'] .writing-badge").count() == 1
    page.wait_for_selector(f"li[data-id='{cid}'] .writing-badge", state="detached", timeout=120_000)
    page.click(f"#conversation-list li[data-id='{cid}'] .title")
    wait_for(page, f"location.pathname.endsWith('{cid}') && document.querySelectorAll('.message').length === 2")
    stored = call(page, "GET", f"/api/conversations/{cid}")["messages"][1]
    # finished whole: at its length limit, or earlier where the random tiny model happened to sample an
    # end-of-turn token (seen once in a few runs on an AVX-512 CPU); never cut off or left unfinished
    assert stored["status"] in ("length", "complete") and page.locator(".message.streaming").count() == 0
    assert page.evaluate("document.querySelector('.message.assistant').dataset.content") == stored["content"]


def test_scrolled_up_to_read_the_view_stays_put_while_a_reply_streams(start_server, tiny_model_dir, page):
    # a reply long enough to read back in: greedy, since a sampled one from this random model may end any time
    server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="65536", WEBBOT_TEMPERATURE="0")
    page.goto(server.url)
    ask(page, "Write at length.")
    page.wait_for_selector(".message.assistant.streaming")
    box = "document.getElementById('messages')"
    wait_for(page, f"{box}.scrollHeight > {box}.clientHeight + 600")
    gap = f"{box}.scrollHeight - {box}.scrollTop - {box}.clientHeight"
    assert page.evaluate(gap) < 48  # following the stream while at the bottom
    page.hover("#messages")
    # the reader scrolls up to read: past the top, however long the reply has grown meanwhile (a fixed 5,000 px
    # fell short once replies came faster)
    page.mouse.wheel(0, -(page.evaluate(f"{box}.scrollHeight") + 20_000))
    # Near the top: Chromium sometimes stops short of it while the reply grows (23 px and 68 px were seen)
    wait_for(page, f"{box}.scrollTop < {box}.clientHeight / 4")
    top = page.evaluate(f"{box}.scrollTop")
    page.wait_for_timeout(1000)  # tokens keep coming
    assert page.evaluate(f"{box}.scrollTop") == top and page.evaluate(gap) > 400  # the view stays put
    assert page.is_visible("#jump-newest") and page.inner_text("#jump-newest") == "↓ Jump to the newest"
    assert page.locator(".message.assistant.streaming").count() == 1
    page.click("#jump-newest")
    assert page.evaluate(gap) < 48 and page.is_hidden("#jump-newest")
    page.wait_for_timeout(500)
    assert page.evaluate(gap) < 48  # following again
    page.click("#stop")
    page.wait_for_selector(".message.assistant:not(.streaming)")


def test_a_message_sent_while_the_server_cannot_be_reached_says_so_in_a_sentence(page, ui_server):
    start_chat(page, ui_server.url)
    page.route("**/messages", lambda route: route.abort("connectionrefused"))  # as when the server is down
    ask(page, "Are you there?")
    page.wait_for_selector("#notice:not([hidden])")
    assert page.inner_text("#notice-text") == ("The server could not be reached; check your connection (and that the "
                                          "server is running), then try again.")
    assert "Failed to fetch" not in page.content()
    assert page.input_value("#input") == "Are you there?"  # nothing typed is lost
    assert page.is_visible("#notice-retry")  # a retry where one makes sense (issue 22, item 3)
    page.unroute("**/messages")  # the server is back
    page.click("#notice-retry")
    page.wait_for_selector(".message.assistant")
    wait_for(page, "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden")
    assert page.is_hidden("#notice") and page.inner_text(".message.user .body") == "Are you there?"
    page.problems[:] = [p for p in page.problems if "ERR_CONNECTION_REFUSED" not in p]


def test_a_refusal_that_retrying_cannot_fix_offers_no_retry_and_code_blocks_name_their_language(page, ui_server):
    start_chat(page, ui_server.url)
    page.route("**/messages", lambda route: route.fulfill(status=413, content_type="application/json",
                                                          body='{"error": {"message": "Too long; shorten it."}}'))
    ask(page, "Another")
    page.wait_for_selector("#notice:not([hidden])")
    assert page.inner_text("#notice-text") == "Too long; shorten it." and page.is_hidden("#notice-retry")
    page.unroute("**/messages")
    expect_refusals(page, 413)
    store = store_of(ui_server)
    cid = current_id(page)
    store.add_message(cid, "user", "code please")
    store.add_message(cid, "assistant", "```python\nprint(1)\n```")
    page.reload()
    page.wait_for_selector("pre .code-language")
    assert page.inner_text("pre .code-language") == "python"


def test_a_waiting_reply_shows_its_place_in_the_queue(start_server, tiny_model_dir, page):
    server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="65536", WEBBOT_MAX_BATCH="1")
    busy = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=60, json={
        "model": "x", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 100_000, "stream": True})
    lines = busy.iter_lines()
    next(lines)  # the model is writing someone else's reply
    start_chat(page, server.url, max_tokens=5)
    ask(page, "My turn?")
    page.wait_for_selector(".message.assistant .waiting")
    assert page.inner_text(".message.assistant .waiting") == \
        "Waiting for the model: yours is number 1 in the queue (1 reply is being written)."
    busy.close()  # the other reply ends; ours starts
    page.wait_for_selector(".message.assistant:not(.streaming) .status", timeout=60_000)
    assert page.locator(".message.assistant .waiting").count() == 0


def test_after_a_dropped_connection_the_page_reconnects_and_shows_the_whole_reply(start_server, tiny_model_dir,
                                                                                   page):
    server = start_server(tiny_model_dir, WEBBOT_MAX_TOKENS="2048", WEBBOT_TEMPERATURE="0")
    proxy = Proxy(server.port)
    try:
        cid = start_chat(page, proxy.url, max_tokens=400)
        ask(page, "Tell me everything.")
        wait_for(page, "(document.querySelector('.message.assistant .body')?.innerText.length || 0) > 20")
        proxy.drop()
        arrived = len(page.inner_text(".message.assistant .body"))
        page.wait_for_selector(".reconnecting", timeout=10_000)
        wait_for(page, "!document.querySelector('.reconnecting') && !document.getElementById('send').hidden",
                 timeout=120_000)
        stored = store_of(server).messages(cid)[-1]
        assert stored["status"] == "length"  # written to the end while the page was away
        shown = page.inner_text(".message.assistant .body")
        assert len(shown) > arrived and shown.split()[-1] in stored["content"]
        assert page.inner_text(".message.assistant .status") == "Cut off at the reply length limit."
        page.goto("about:blank")  # nothing of the page is in flight when the proxy closes below
        dropped = [p for p in page.problems if "ERR_CONNECTION_RESET" in p]  # the drop this test made
        assert dropped and len(dropped) == len(page.problems), page.problems
    finally:
        proxy.close()
        # A reset may reach the console after the check above (its events arrive asynchronously); only
        # resets are forgiven, any other problem still fails the test at teardown.
        page.problems[:] = [p for p in page.problems if "ERR_CONNECTION_RESET" not in p]


@pytest.mark.parametrize("scheme, viewport, name", [
    ("light", {"width": 1100, "height": 760}, "light.png"),
    ("dark", {"width": 1100, "height": 760}, "dark.png"),
    ("light", {"width": 360, "height": 740}, "phone.png"),
])
def test_screenshots_in_light_dark_and_phone_width(browser, smollm2_server, scheme, viewport, name, tmp_path):
    context = browser.new_context(viewport=viewport, color_scheme=scheme, is_mobile=viewport["width"] < 500)
    page = context.new_page()
    watch_console(page)
    cid = new_chat_with(page, smollm2_server, ("How do I add two numbers in Python? And what is Pythagoras' rule?",
                                              CODE_AND_MATH))
    call(page, "PATCH", f"/api/conversations/{cid}", {"title": "Python and Pythagoras"})
    call(page, "PATCH", f"/api/conversations/{cid}", {"settings": {"max_tokens": 40}})
    ask_and_wait(page, "What is the capital of France?", replies=2)
    assert "Paris" in page.inner_text(".message.assistant >> nth=1")
    target = SCREENSHOTS if os.environ.get("WEBBOT_SCREENSHOTS") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    time.sleep(0.3)  # the caret's blink and the fonts settle
    page.screenshot(path=str(target / name))
    assert (target / name).stat().st_size > 10_000
    context.close()
    assert page.problems == []


def test_screenshots_of_the_empty_page_a_document_and_the_phone_drawer(browser, smollm2_server, tmp_path):
    from harness import documents as docs

    target = SCREENSHOTS if os.environ.get("WEBBOT_SCREENSHOTS") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    page = context.new_page()
    watch_console(page)
    page.goto(smollm2_server.url)
    page.wait_for_selector("#messages .hint .example")
    page.screenshot(path=str(target / "empty.png"))
    page.set_input_files("#attach-input", files=[{"name": "report.pdf", "mimeType": "application/pdf",
                                                  "buffer": docs.pdf(20)}])
    wait_for(page, "(document.querySelector('#attachments .chip-meta')?.textContent || '').includes('tokens')")
    ask_and_wait(page, docs.QUESTION)
    assert docs.ANSWER in page.inner_text(".message.assistant .body")
    time.sleep(0.3)
    page.screenshot(path=str(target / "document.png"))
    context.close()
    assert page.problems == []
    phone = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True)
    page = phone.new_page()
    watch_console(page)
    page.goto(smollm2_server.url)
    for title in ("Python and Pythagoras", "Holiday plans", "Garden notes"):
        call(page, "POST", "/api/conversations", {"title": title})
    page.reload()
    page.click("#open-drawer")
    page.wait_for_selector(".layout.drawer-open")
    page.click("#conversation-list li >> nth=0 >> .row-menu")
    page.wait_for_selector("#row-actions:not([hidden])")
    time.sleep(0.3)
    page.screenshot(path=str(target / "phone-drawer.png"))
    phone.close()
    for name in ("empty.png", "document.png", "phone-drawer.png"):
        assert (target / name).stat().st_size > 10_000
    assert page.problems == []


def test_streaming_text_grows_in_place_not_on_a_line_of_its_own(page, ui_server):
    """The words not yet rendered as Markdown continue the last paragraph, list item or code block (issue 22,
    item 7: they sat on a line of their own under the paragraph and jumped up at the next render)."""
    page.goto(ui_server.url)
    placed = page.evaluate("""async () => {
        const { placePending } = await import('/static/js/reply.js');
        const body = document.createElement('div');
        body.className = 'body';
        document.getElementById('messages').appendChild(body);
        const found = {};
        for (const [name, html, text] of [
            ['paragraph', '<p>The quick brown fox</p>\\n', 'The quick brown fox'],
            ['list', '<ul>\\n<li>first</li>\\n<li>second item</li>\\n</ul>\\n', '- first\\n- second item'],
            ['code', '<pre><code class="language-python">x = 1\\n</code></pre>\\n', '```python\\nx = 1\\n'],
            ['new paragraph', '<p>Done.</p>\\n', 'Done.\\n\\n']]) {
          body.innerHTML = html;
          const pending = placePending(body, text);
          pending.textContent = ' jumps';
          const range = document.createRange();  // the last line of the text rendered so far
          range.selectNodeContents(body.firstElementChild);
          const lines = range.getClientRects();
          const line = lines[lines.length - 1], first = lines[0];
          const words = pending.getClientRects()[0];
          found[name] = { parent: pending.parentElement.tagName, sameLine: Math.abs(words.top - first.top) < 2,
                          below: words.top >= line.bottom - 1 };
        }
        body.remove();
        return found;
    }""")
    assert placed["paragraph"] == {"parent": "P", "sameLine": True, "below": False}
    assert placed["list"]["parent"] == "LI" and not placed["list"]["sameLine"]  # the second item's line, not the first
    assert placed["code"]["parent"] == "CODE"
    assert placed["new paragraph"]["parent"] == "DIV" and placed["new paragraph"]["below"]


def test_the_empty_page_offers_examples_and_labels_the_gauge_and_settings(page, ui_server):
    """Issue 22, item 10: no example prompts, an unlabeled '80 / 6144 tokens', settings that did not say what
    temperature and top p do, and errors that named API fields."""
    page.goto(ui_server.url)
    examples = page.locator("#messages .hint .example")
    assert examples.count() == 3
    first = examples.first.inner_text()
    examples.first.click()
    assert page.input_value("#input") == first and page.evaluate("document.activeElement.id") == "input"
    start_chat(page, ui_server.url)
    page.wait_for_selector("#gauge:not([hidden])")
    assert page.inner_text("#gauge .gauge-label") == "Memory"
    assert page.get_attribute("#gauge-meter", "aria-valuetext").startswith("Memory: ")
    page.click("#open-settings")
    page.wait_for_selector("#settings-dialog[open]")
    assert "likeliest word" in page.inner_text("#about-temperature")
    assert "1 considers them all" in page.inner_text("#about-top-p")
    page.fill("#set-top-p", "0")
    page.evaluate("document.getElementById('set-top-p').removeAttribute('min')")  # past the browser's own check
    page.click("#save-chat-settings")
    page.wait_for_selector("#settings-error:not([hidden])")
    assert page.inner_text("#settings-error") == "Top p must be a number from 0.01 to 1."
    expect_refusals(page, 400)


def test_a_phone_has_the_title_and_new_chat_in_its_header(browser, ui_server):
    """Issue 22, item 9: on a phone the header had no chat title and no New chat; the hint spoke of Enter."""
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch_console(page)
    page.goto(ui_server.url)
    assert "tap Send" in page.inner_text("#messages .hint") and "Shift+Enter" not in page.inner_text("#messages .hint")
    cid = call(page, "POST", "/api/conversations", {"title": "Holiday plans"})["id"]
    page.goto(f"{ui_server.url}/c/{cid}")
    wait_for(page, "document.getElementById('chat-title').textContent === 'Holiday plans'")
    assert page.is_visible("#chat-title") and page.is_visible("#header-new-chat")
    page.click("#header-new-chat")
    wait_for(page, "location.pathname === '/' && document.getElementById('chat-title').textContent === 'New chat'")
    box = page.locator("#auto-send").bounding_box()
    assert box["width"] >= 20 and box["height"] >= 20
    context.close()
    assert page.problems == []
