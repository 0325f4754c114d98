"""Helpers the tests share (the fixtures are in conftest.py): tools a test drives, a client that behaves like
the chat page, watching a browser page for console errors, polling with a deadline, reading /metrics, a
conversation to put through a bot."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from chat_bot import ChatBot
from harness.recall_chat import ADA, FILLER
from harness.server_process import CSRF_META, METRICS_AUTH, ROOT, WRITES
from webbot.model.stream import SamplingParams

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"  # axe-core, vendored (no network)
AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


def requires(path, reason: str):
    """Skip tests when a tool they drive is missing, but never under run_tests.sh
    (WEBBOT_TESTS_STRICT=1): it installs the tool, so there a missing one must fail, not hide."""
    strict = os.environ.get("WEBBOT_TESTS_STRICT") == "1"
    return pytest.mark.skipif(not strict and not Path(path).exists(), reason=reason)


def page_client_class():
    """A Flask test client that, like the chat page, loads the page for its CSRF token before writing."""
    from flask.testing import FlaskClient

    class PageClient(FlaskClient):
        def open(self, *args, **kwargs):
            method = kwargs.get("method", "GET").upper()
            path = args[0] if args and isinstance(args[0], str) else ""
            if method in WRITES and not path.startswith("/v1/") and "HTTP_X_CSRFTOKEN" not in self.environ_base:
                page = super().open("/", method="GET")
                self.environ_base["HTTP_X_CSRFTOKEN"] = CSRF_META.search(page.get_data(as_text=True)).group(1)
            return super().open(*args, **kwargs)

    return PageClient


def watch_console(page) -> None:
    """Collect console errors (a CSP violation is one) and uncaught exceptions in `page.problems`."""
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))


def wait_for(page, expression: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript expression until it is true. Playwright's wait_for_function evaluates its
    predicate with eval inside the page, which the app's Content-Security-Policy rightly blocks;
    page.evaluate goes through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout / 1000:.0f} s: {expression}"
        time.sleep(0.05)


def scrape(server, **headers) -> dict:
    """Every sample of a server's /metrics (read with the test servers' metrics key unless `headers` say
    otherwise), parsed by prometheus_client's own parser: {(name, labels): value}."""
    response = requests.get(server.url + "/metrics", headers=headers or METRICS_AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """One sample of `scrape`'s result."""
    return samples[(name, tuple(sorted(labels.items())))]


def users_cli(data_dir, *args, password: str | None = None) -> subprocess.CompletedProcess:
    """The real `flask --app app users ...` on a data dir."""
    command = [sys.executable, "-m", "flask", "--app", "app", "users", *args]
    if password is not None:
        command.append("--password-stdin")
    return subprocess.run(command, cwd=ROOT, input=(password or "") + "\n", capture_output=True, text=True,
                          env={"WEBBOT_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                          timeout=120)


def until_line(lines, starts, count: int = 1, seconds: float = 60) -> None:
    """Read a live iterator of a stream's lines until `count` of them start with `starts` (str or bytes);
    fail after `seconds`."""
    deadline, seen = time.monotonic() + seconds, 0
    while seen < count:
        assert time.monotonic() < deadline, f"no {count} lines starting with {starts!r} within {seconds} s"
        seen += next(lines).startswith(starts)


def until(condition, seconds: float, message: str = "timed out") -> None:
    """Poll `condition()` every 20 ms until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


# A conversation for the KV cache tests: questions of different lengths, asked in turn.
QUESTIONS = [
    "Tell me about the tides.",
    "Why is the sea salty? Explain it step by step, with examples from three different oceans.",
    "And the moon?",
    "Write a short list of five sea birds.",
    "Which of them flies farthest?",
    "Thanks. Summarise everything so far in one paragraph.",
]


def greedy(max_new_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0, **kw)


def greedy_streams(bot: ChatBot, prompts: list[str], lengths: list[int], together: bool = True) -> list:
    """Ended streams of a greedy reply of `lengths[i]` tokens to each of `prompts`: submitted together (so they
    decode in one batch), or each after the last one ended."""
    streams = []
    for prompt, n in zip(prompts, lengths, strict=True):
        streams.append(bot.generate(bot.plan([], prompt), greedy(n)))
        if not together:
            list(streams[-1])
    for stream in streams:
        list(stream)
    return streams


def converse(bot: ChatBot, questions: list[str], max_new_tokens: int = 24, system: str | None = None) -> list:
    """Ask the questions in one conversation, storing replies as the app does; (plan, stream) per turn."""
    history, turns = [], []
    for question in questions:
        plan = bot.plan(history, question, system)
        stream = bot.generate(plan, greedy(max_new_tokens))
        reply = "".join(stream)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        turns.append((plan, stream))
    return turns


def plain_greedy(bot: ChatBot, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy ids from a fresh full prefill with `model.generate`: no cache from anywhere."""
    engine = bot.engine
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False,
                                    eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id)
    return out[0, len(prompt_ids):].tolist()


class ModelStandIn(torch.nn.Module):
    """The real model behind a forward pass the test changes, to inject a failure that cannot be had on demand on
    CPU (a NaN score, an error in one prompt's pass). The engine reads only forward, get_input_embeddings, device
    and config."""

    def __init__(self, model, forward):
        super().__init__()
        self.inner, self._forward = model, forward

    def forward(self, **kwargs):
        return self._forward(self.inner, **kwargs)

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    @property
    def device(self):
        return self.inner.device

    @property
    def config(self):
        return self.inner.config


def failing_on_pass(model, n: int, error: BaseException) -> ModelStandIn:
    """The real model, raising `error` on its n-th forward pass (`.passes` counts them), as a GPU fails."""

    def forward(inner, **kwargs):
        stand_in.passes += 1
        if stand_in.passes == n:
            raise error
        return inner(**kwargs)

    stand_in = ModelStandIn(model, forward)
    stand_in.passes = 0
    return stand_in


def fake_kv(tokens: int) -> list[tuple]:
    """Tensors shaped like one layer's keys and values for `tokens` tokens (100 bytes a token)."""
    return [(torch.zeros(1, 1, tokens, 50, dtype=torch.uint8), torch.zeros(1, 1, tokens, 50, dtype=torch.uint8))]


def open_canned_ada_chat(page, url: str) -> None:
    """Import, in the page, the Ada message and the filler questions with short canned replies (26 messages, too
    long for a 512-token context), and open it."""
    canned = [ADA, "Nice to meet you, Ada!"]
    for text in FILLER:
        canned += [text, "Here is a short answer to that question, kept brief for this test."]
    exported = {"title": "Long chat", "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                                                   for i, text in enumerate(canned)]}
    page.goto(url + "/")
    made = page.evaluate("async (body) => (await import('/static/js/api.js')).api('POST', '/api/import', body)",
                         exported)
    page.goto(f"{url}/c/{made['conversations'][0]['id']}")
    wait_for(page, "document.querySelectorAll('.message').length === 26")


def row_action(page, row: str, action: str) -> None:
    """Pin, rename or delete a chat from the list: its ⋯ menu, then the action (`pin`, `rename` or `delete`).
    `row` is a selector of its <li>."""
    page.click(f"{row} .row-menu")
    page.click(f"#row-actions .{action}")


def serious_violations(page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    page.evaluate(AXE.read_text())
    found = page.evaluate("""async (tags) => {
        const result = await axe.run(document, { runOnly: { type: "tag", values: tags } });
        return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => `${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    }""", AXE_RULES)
    return found
