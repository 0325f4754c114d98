"""The KV cache's disk tier, on the real tiny Llama (real Llama 3.2 tokenizer and template): caches written
when they leave RAM and at shutdown, read back after a restart, kept apart by owner, bounded on disk, and
never trusted when a file is corrupt, cut short or made for another model."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from chat_bot import ChatBot
from harness.server_process import ROOT
from tests.helpers import QUESTIONS, converse, fake_kv, greedy, plain_greedy, scrape, value
from webbot.model.kv_disk import DiskTier


def disk_bot(model_dir, directory, **kw) -> ChatBot:
    return ChatBot(str(model_dir), max_tokens=2048, kv_disk_dir=directory, kv_disk_mb=64, **kw).load()


def files(directory) -> list:
    return sorted(p.name for p in directory.glob("*.safetensors"))


def test_a_restart_reads_the_caches_back_and_the_tokens_are_the_same(tiny_model_dir, tmp_path):
    folder = tmp_path / "kv"
    first = disk_bot(tiny_model_dir, folder)
    turns = converse(first, QUESTIONS[:3])
    first.close()
    assert len(files(folder)) == 1  # one conversation, its newest sequence
    history = []
    for (_, stream), question in zip(turns, QUESTIONS[:3], strict=True):
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": stream.text}]

    again = disk_bot(tiny_model_dir, folder)  # a new process would build exactly this
    plan = again.plan(history, QUESTIONS[3])
    stream = again.generate(plan, greedy())
    list(stream)
    warm = converse(ChatBot(str(tiny_model_dir), max_tokens=2048).load(), QUESTIONS[:4])[-1][1]
    # As much as a server that never stopped reuses (the tiny model's replies are trimmed by the template, so
    # that is the earlier prompt; SmolLM2's are kept whole: see the server test below), and the same tokens.
    assert stream.prompt_ids == warm.prompt_ids and stream.reused_tokens == warm.reused_tokens > 150
    assert value_of(again, "disk") == stream.reused_tokens
    assert stream.generated_ids == warm.generated_ids == plain_greedy(again, stream.prompt_ids, 24)
    again.close()


def value_of(bot, tier: str) -> float:
    return bot.metrics.reused_by_tier.labels(tier)._value.get()


def written_each_turn(bot: ChatBot, questions: list[str]) -> list:
    """`converse`, waiting after each turn until the kept cache is in its file (so the next turn reads it)."""
    history, turns = [], []
    for question in questions:
        stream = bot.generate(bot.plan(history, question), greedy())
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(stream)}]
        bot.cache._writes.join()
        turns.append((None, stream))
    return turns


def test_greedy_tokens_are_the_same_from_ram_disk_or_nowhere(tiny_model_dir, tmp_path):
    # A RAM budget smaller than one conversation: every kept cache leaves memory for the disk at once.
    spilled = ChatBot(str(tiny_model_dir), max_tokens=2048, kv_cache_mb=0.01, kv_disk_dir=tmp_path / "kv",
                      kv_disk_mb=64).load()
    in_ram = ChatBot(str(tiny_model_dir), max_tokens=2048).load()
    nothing = ChatBot(str(tiny_model_dir), max_tokens=2048, kv_reuse=False).load()
    runs = [written_each_turn(spilled, QUESTIONS), converse(in_ram, QUESTIONS), converse(nothing, QUESTIONS)]
    for turn in zip(*runs, strict=True):
        assert len({tuple(stream.generated_ids) for _, stream in turn}) == 1
    assert value_of(spilled, "disk") > 0 and value_of(in_ram, "disk") == 0
    # from the files, exactly as much is reused as from memory, turn by turn
    assert [s.reused_tokens for _, s in runs[0]] == [s.reused_tokens for _, s in runs[1]]
    for bot in (spilled, in_ram, nothing):
        bot.close()


def test_another_owner_never_reads_my_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "kv"
    bot = disk_bot(tiny_model_dir, folder)
    secret = "My locker code is 4 7 1 9."
    plan = bot.plan([], secret, "A private system prompt.", owner="alice")
    list(bot.generate(plan, greedy(), owner="alice"))
    bot.close()
    again = disk_bot(tiny_model_dir, folder)
    theirs = again.generate(again.plan([], secret, "A private system prompt.", owner="mallory"), greedy(),
                            owner="mallory")
    list(theirs)
    assert theirs.reused_tokens == 0 and value_of(again, "disk") == 0
    mine = again.generate(again.plan([], secret, "A private system prompt.", owner="alice"), greedy(), owner="alice")
    list(mine)
    assert mine.reused_tokens == mine.prompt_tokens - 1  # the owner's own file, all of it
    again.close()


def test_corrupt_cut_short_and_other_model_files_are_removed_never_used(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="webbot.model.kv_disk")
    folder = tmp_path / "kv"
    bot = disk_bot(tiny_model_dir, folder)
    converse(bot, QUESTIONS[:1])
    bot.close()
    (good,) = folder.glob("*.safetensors")
    data = good.read_bytes()
    corrupt = folder / ("c" * 40 + ".safetensors")
    corrupt.write_bytes(data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))  # the last values flipped
    (folder / ("t" * 40 + ".safetensors")).write_bytes(data[: len(data) // 2])  # cut short
    (folder / ("p" * 40 + ".safetensors.partial")).write_bytes(data)  # a writer killed before its rename
    other = DiskTier(folder, "another-model", 2**30)
    other.save([1, 2, 3], fake_kv(2), 2, "alice", 0, None)
    good.unlink()  # only the damaged copies are left to find

    again = disk_bot(tiny_model_dir, folder)
    assert files(folder) == ["c" * 40 + ".safetensors"]  # the header is whole; its tensors are checked when read
    assert "made for another model" in caplog.text and "unreadable KV cache file" in caplog.text
    assert not list(folder.glob("*.partial"))
    turns = converse(again, QUESTIONS[:2])
    assert turns[0][1].reused_tokens < turns[0][1].prompt_tokens - 5  # the corrupt copy was not used ...
    assert "does not match its checksum" in caplog.text and files(folder) != ["c" * 40 + ".safetensors"]
    assert turns[0][1].generated_ids == plain_greedy(again, turns[0][1].prompt_ids, 24)  # ... nor the answer
    again.close()


def test_the_disk_budget_removes_the_biggest_owners_oldest_files_first(tmp_path):
    tier = DiskTier(tmp_path / "kv", "key", budget_bytes=2**30)
    alice = tier.save([1] * 1000, fake_kv(1000), 1000, "alice", 0, None)
    tier.budget = int(alice.nbytes * 3.5)  # three files of this size fit, five do not
    for n in range(4):
        tier.save([10 + n] * 1000, fake_kv(1000), 1000, "mallory", 0, None)
        time.sleep(0.01)
    owners = sorted(r.owner for r in tier.records.values())
    assert tier.nbytes <= tier.budget and "alice" in owners and alice.path.exists()
    assert owners.count("mallory") == 2 and len(list((tmp_path / "kv").glob("*.safetensors"))) == 3


WRITER = textwrap.dedent("""
    import sys, time, torch
    from webbot.model import kv_disk
    real_save = kv_disk.save_file
    saved = []
    def slow_disk(*args, **kwargs):  # a slow disk: the first file waits 2 s under its temporary name, the
        real_save(*args, **kwargs)   # next ones a minute (the test kills the writer long before that ends)
        saved.append(args)
        time.sleep(2 if len(saved) == 1 else 60)
    kv_disk.save_file = slow_disk
    tier = kv_disk.DiskTier(sys.argv[1], "key", 2**40)
    big = [(torch.randn(1, 8, 4096, 64), torch.randn(1, 8, 4096, 64)) for _ in range(6)]  # ~100 MB a file
    print("writing", flush=True)
    for n in range(1000):
        tier.save([n] * 4097, big, 4097, "alice", 0, None)
""")


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_no_file_that_is_read(tmp_path):
    folder = tmp_path / "kv"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 120
    # Kill it while its second file is still under the temporary name and the first is in place. The first
    # file's own temporary name is seen before it is renamed, so look for the finished file first: a temporary
    # file seen after it is the second one's (checked the other way round, the rename could fall between).
    while not (list(folder.glob("*.safetensors")) and list(folder.glob("*.partial"))):
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    assert list(folder.glob("*.partial"))
    tier = DiskTier(folder, "key", 2**40)
    records = tier.open()
    assert not list(folder.glob("*.partial"))  # the unfinished file is gone, never read
    assert len(records) == 1 and tier.load(records[0], "cpu") is not None  # the finished one is whole


def test_deleting_a_conversation_for_good_removes_its_files(make_app, tiny_model_dir, tmp_path, monkeypatch):
    from webbot.storage import conversations as store_module

    monkeypatch.setattr(store_module, "UNDO_S", 0.0)
    folder = tmp_path / "data" / "kv-cache"
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, kv_disk_dir=folder, kv_disk_mb=64).load()
    app = make_app(bot=bot, data_dir=tmp_path / "data", WEBBOT_RATE_MESSAGES="off")
    page = app.test_client()
    kept, gone = (page.post("/api/conversations", json={}).json["id"] for _ in range(2))
    for cid in (kept, gone):
        for text in ("hello there", "and again"):
            page.post(f"/api/conversations/{cid}/messages", json={"content": text, "max_tokens": 3}).get_data()
    bot.cache.spill_all()
    # One file per kept sequence: usually one per conversation, two when a sampled reply's text does not
    # re-tokenise to its own ids (the random model writes odd tokens), so count by conversation.
    records = bot.cache.disk.records.values()
    assert {r.conversation for r in records} == {kept, gone} and len(files(folder)) == len(records)
    written = len(files(folder))
    assert page.delete(f"/api/conversations/{gone}").status_code == 204  # hidden; Undo could still bring it back
    assert len(files(folder)) == written
    other = page.post("/api/conversations", json={}).json["id"]
    assert page.delete(f"/api/conversations/{other}").status_code == 204  # this purge takes `gone` for good
    records = bot.cache.disk.records.values()
    assert {r.conversation for r in records} == {kept} and len(files(folder)) == len(records) < written
    assert all(e.conversation != gone for e in bot.cache._entries)
    bot.close()


@pytest.mark.slow
def test_a_restarted_server_goes_on_from_its_files(start_server, smollm2_dir, tmp_path):
    data = tmp_path / "data"  # SmolLM2: a real model whose ChatML template keeps replies as written
    server = start_server(smollm2_dir, data, WEBBOT_MAX_TOKENS="2048")
    messages = []
    for question in QUESTIONS[:4]:
        messages.append({"role": "user", "content": question})
        answer = requests.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "x", "messages": messages, "max_tokens": 12, "temperature": 0}).json()
        messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
    seen = answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]  # what the model has read
    server.stop()  # SIGTERM: replies end, the kept caches are written
    assert "wrote 1 kept KV caches to disk" in server.log_path.read_text()
    again = start_server(smollm2_dir, data, WEBBOT_MAX_TOKENS="2048")
    messages.append({"role": "user", "content": QUESTIONS[4]})
    answer = requests.post(again.url + "/v1/chat/completions", timeout=60, json={
        "model": "x", "messages": messages, "max_tokens": 12, "temperature": 0}).json()
    usage = answer["usage"]
    # Everything before the new message came from the file: the last prompt and reply but their last token.
    assert usage["prompt_tokens_details"]["cached_tokens"] >= seen - 2, (usage, seen)
    samples = scrape(again)
    assert value(samples, "webbot_reused_prompt_tokens_total", tier="disk") == \
        usage["prompt_tokens_details"]["cached_tokens"]
    # the file it came from is superseded by the longer conversation, which is written at the next stop
    again.stop()
    assert "wrote 1 kept KV caches to disk" in again.log_path.read_text() and os.listdir(data / "kv-cache")
