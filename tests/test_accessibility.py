"""Keyboard and screen reader use of the chat page, in headless Chromium (issue 22, item 8): axe-core (vendored in
tests/vendor, run in the page) finds no serious or critical violation in any state of the page, light and dark,
desktop and phone; the keyboard reaches everything in few steps; each message says who said it; the finished
reply is announced once instead of every token."""

import pytest

from tests.helpers import CHROMIUM, requires, serious_violations, wait_for, watch_console

pytestmark = [requires(CHROMIUM, "Debian's chromium is not installed (run_tests.sh installs it)"), pytest.mark.browser]


@pytest.fixture(scope="module")
def a11y_server(tiny_model_dir, tmp_path_factory):
    from harness.server_process import Server

    tmp = tmp_path_factory.mktemp("a11y")
    server = Server(tiny_model_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="512",
                    WEBBOT_GENERATE_TITLES="off").start()
    yield server
    server.stop()


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")
    wait_for(page, "location.pathname.startsWith('/c/') && document.querySelectorAll('.message.assistant').length"
                   " && !document.querySelector('.message.streaming') && !document.getElementById('send').hidden")


def chats(page, server, count):
    page.goto(server.url)
    page.evaluate("async () => (await import('/static/js/api.js')).api('PUT', '/api/settings', {max_tokens: 6})")
    for n in range(count):
        page.click("#new-chat:visible, #header-new-chat:visible")
        send(page, f"Question number {n}")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_any_state_of_the_page(browser, a11y_server, scheme):
    context = browser.new_context(viewport={"width": 1100, "height": 760}, color_scheme=scheme)
    page = context.new_page()
    watch_console(page)
    page.goto(a11y_server.url)
    assert serious_violations(page) == []  # the empty page
    chats(page, a11y_server, 2)
    page.set_input_files("#attach-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"The lantern is in the shed.\n" * 20}])
    wait_for(page, "(document.querySelector('#attachments .chip-meta')?.textContent || '').includes('tokens')")
    assert serious_violations(page) == []  # a file waiting to be sent
    send(page, "Where is the lantern?")
    assert serious_violations(page) == []  # messages, their tools, a file on a message
    page.click("#conversation-list li >> nth=0 >> .row-menu")
    page.wait_for_selector("#row-actions:not([hidden])")
    assert serious_violations(page) == []  # a row's menu
    page.keyboard.press("Escape")
    page.click("#open-settings")
    page.wait_for_selector("#settings-dialog[open]")
    assert serious_violations(page) == []
    context.close()
    assert page.problems == []


def test_axe_finds_nothing_serious_on_a_phone(browser, a11y_server):
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch_console(page)
    chats(page, a11y_server, 1)
    assert serious_violations(page) == []
    page.click("#open-drawer")
    page.wait_for_selector(".layout.drawer-open")
    assert serious_violations(page) == []
    context.close()
    assert page.problems == []


def test_the_keyboard_reaches_everything_in_few_steps(page, a11y_server):
    chats(page, a11y_server, 6)
    page.goto(a11y_server.url)
    page.focus("#new-chat")
    page.keyboard.press("Shift+Tab")  # the first stop of the page, before the list
    assert page.evaluate("document.activeElement.textContent") == "Skip to the message box"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "input"
    # two stops a row (the chat, its menu): from the search box past six chats in 12 Tabs, not 26
    page.focus("#search")
    for _ in range(12):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('li') === "
                         "document.querySelector('#conversation-list li:last-child')")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#conversation-list')") is None
    # the menu: named for its chat, opened and walked by keyboard, Escape goes back
    first = page.locator("#conversation-list li >> nth=0")
    title = first.locator(".title").inner_text()
    assert first.locator(".row-menu").get_attribute("aria-label") == f"Actions for “{title}”"
    first.locator(".row-menu").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.textContent") == "Pin to the top"
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.textContent") == "Rename"
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.classList.contains('row-menu')")
    assert page.is_hidden("#row-actions")
    # the import file input never takes focus (its button does)
    assert page.evaluate("document.getElementById('import-file').hidden")


def test_who_said_what_which_chat_is_open_and_the_finished_reply_is_announced(page, a11y_server):
    chats(page, a11y_server, 2)
    current = page.url.rsplit("/", 1)[1]
    assert page.get_attribute(f"#conversation-list li[data-id='{current}'] .title", "aria-current") == "page"
    assert page.locator("#conversation-list .title[aria-current]").count() == 1
    assert page.inner_text("h1") == "Question number 1"
    speakers = page.locator(".message h2").all_inner_texts()
    assert speakers == ["You said:", "The robot said:"]
    assert page.get_attribute("#messages", "aria-live") is None  # tokens are not read out one by one
    announced = " ".join(page.evaluate("document.getElementById('announcer').textContent").split())
    reply = " ".join(page.evaluate("document.querySelector('.message.assistant').dataset.content").split())
    assert announced.startswith("The reply is written: ") and reply[:30] in announced
