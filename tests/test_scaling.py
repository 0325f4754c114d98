"""Past one machine, with real servers on loopback: two replicas sharing Redis and PostgreSQL, their outages,
and moving a SQLite deployment to PostgreSQL.

Redis and PostgreSQL come from Debian's packages (run_tests.sh installs them); the
replicas are real `python app.py` processes on the tiny random Llama.
"""

import itertools
import subprocess
import sys
import threading
import time

import pytest
import requests

from harness.server_process import ROOT, PageSession, read_sse
from tests.helpers import until_line

SECRET = "replicas-share-this-secret-key"


def shared_env(redis_server, pg_url) -> dict:
    return {"WEBBOT_REDIS_URL": redis_server.url, "WEBBOT_DATABASE_URL": pg_url, "WEBBOT_SECRET_KEY": SECRET}


def send(page: PageSession, server, cid: str, content: str, **extra) -> list:
    """Send a message through a replica and read its whole reply stream."""
    response = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=60,
                         json={"content": content, "temperature": 0, "max_tokens": 8, **extra})
    assert response.status_code == 200, response.text
    return read_sse(response.iter_lines(decode_unicode=True))


def conversation(page: PageSession, server, cid: str) -> dict:
    response = page.get(f"{server.url}/api/conversations/{cid}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_two_replicas_share_sessions_conversations_and_stop(start_server, tiny_model_dir, tmp_path, redis_server,
                                                            pg_url):
    env = shared_env(redis_server, pg_url)
    one = start_server(tiny_model_dir, tmp_path / "one", **env)
    two = start_server(tiny_model_dir, tmp_path / "two", **env)
    for replica in (one, two):
        checks = requests.get(replica.url + "/healthz", timeout=10).json()["checks"]
        assert checks["database"] == {"status": "ok", "kind": "postgresql"} and checks["redis"] == {"status": "ok"}

    page = PageSession()  # one browser: the same session cookie goes to whichever replica answers
    cid = page.post(one.url + "/api/conversations", json={}, timeout=30).json()["id"]
    assert send(page, one, cid, "Hello from the first replica.")[-1][0] == "done"
    assert [c["id"] for c in page.get(two.url + "/api/conversations", timeout=30).json()["conversations"]] == [cid]
    assert send(page, two, cid, "And now the second one.")[-1][0] == "done"  # the page's CSRF token works there too
    seen = [[(m["role"], m["content"]) for m in conversation(page, replica, cid)["messages"]] for replica in (one, two)]
    assert seen[0] == seen[1] and [m[1] for m in seen[0][::2]] == ["Hello from the first replica.",
                                                                   "And now the second one."]
    assert len(seen[0]) == 4

    # A long reply written by replica one is seen as running by replica two, which refuses a second send with
    # 409 and whose Stop ends it on replica one.
    long = page.post(f"{one.url}/api/conversations/{cid}/messages", stream=True, timeout=60,
                     json={"content": "Go on forever.", "temperature": 0, "max_tokens": 100_000})
    lines = long.iter_lines(decode_unicode=True)
    until_line(lines, "event: token")
    assert conversation(page, two, cid)["generating"] is True
    busy = page.post(f"{two.url}/api/conversations/{cid}/messages", json={"content": "Me too"}, timeout=30)
    assert busy.status_code == 409 and "still being written" in busy.json()["error"]["message"]
    asked = time.monotonic()
    assert page.post(f"{two.url}/api/conversations/{cid}/stop", timeout=30).json() == {"stopped": True}
    events = read_sse(lines)
    assert events[-1][0] == "done" and events[-1][1]["message"]["status"] == "stopped"
    assert time.monotonic() - asked < 3, "the stop took more than 3 s to reach the other replica"
    final = conversation(page, two, cid)
    assert final["generating"] is False and final["messages"][-1]["status"] == "stopped"
    assert len(final["messages"]) == 6

    # Another browser sees none of it on either replica.
    stranger = PageSession()
    assert stranger.get(two.url + "/api/conversations", timeout=30).json()["conversations"] == []
    assert stranger.get(f"{one.url}/api/conversations/{cid}", timeout=30).status_code == 404


@pytest.mark.slow
def test_redis_outage_is_a_clear_503_and_the_app_recovers(start_server, tiny_model_dir, tmp_path, redis_server,
                                                          pg_url):
    server = start_server(tiny_model_dir, tmp_path / "data", **shared_env(redis_server, pg_url))
    page = PageSession()
    cid = page.post(server.url + "/api/conversations", json={}, timeout=30).json()["id"]
    send(page, server, cid, "Before the outage.")

    redis_server.stop()
    # A visitor's session is a cookie, so the list still opens; what needs Redis (which replica writes which
    # reply) is a clear 503.
    assert page.get(server.url + "/api/conversations", timeout=30).status_code == 200
    for method, path, body in (("GET", f"/api/conversations/{cid}", None),
                               ("POST", f"/api/conversations/{cid}/messages", {"content": "During the outage."})):
        response = page.request(method, server.url + path, json=body, timeout=30)
        assert response.status_code == 503, (path, response.text)
        assert "Redis" in response.json()["error"]["message"] and response.headers["Retry-After"]
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["checks"]["redis"]["status"] == "error"
    assert "Redis cannot be reached" in health.json()["error"]

    redis_server.start()  # the same port, its append-only file intact
    deadline = time.monotonic() + 15
    while requests.get(server.url + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the app did not recover after Redis came back"
        time.sleep(0.2)
    messages = conversation(page, server, cid)["messages"]  # the same session, nothing half-written
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Before the outage."]
    assert send(page, server, cid, "After the outage.")[-1][0] == "done"
    assert len(conversation(page, server, cid)["messages"]) == 4


@pytest.mark.slow
def test_postgres_outage_is_a_clear_503_and_a_streaming_reply_lands_when_it_returns(
        start_server, tiny_model_dir, tmp_path, redis_server, pg_url, postgres):
    server = start_server(tiny_model_dir, tmp_path / "data", **shared_env(redis_server, pg_url))
    page = PageSession()
    cid = page.post(server.url + "/api/conversations", json={}, timeout=30).json()["id"]
    send(page, server, cid, "Before the outage.")

    # A reply is streaming when the database goes away: it goes on, and is stored once the database is back.
    streaming = page.post(f"{server.url}/api/conversations/{cid}/messages", stream=True, timeout=60,
                          json={"content": "Write a while.", "temperature": 0, "max_tokens": 1500})
    lines = streaming.iter_lines(decode_unicode=True)
    until_line(lines, "event: token")
    postgres.stop()
    outage = time.monotonic()
    for method, path, body in (("GET", f"/api/conversations/{cid}", None), ("POST", "/api/conversations", {}),
                               ("POST", f"/api/conversations/{cid}/messages", {"content": "During the outage."})):
        response = page.request(method, server.url + path, json=body, timeout=30)
        assert response.status_code in (409, 503), (path, response.text)
        if response.status_code == 503:
            assert "database cannot be reached" in response.json()["error"]["message"]
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["checks"]["database"]["status"] == "error"
    assert time.monotonic() - outage < 20, "requests hung while the database was down"
    events = read_sse(itertools.chain(["event: token"], lines))  # the first token's event line was read above
    assert events[-1][0] == "done"
    streamed = "".join(data["text"] for event, data in events if event == "token")

    postgres.start()
    deadline = time.monotonic() + 20
    while requests.get(server.url + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the app did not recover after PostgreSQL came back"
        time.sleep(0.2)
    while (last := conversation(page, server, cid)["messages"][-1])["status"] == "streaming":
        assert time.monotonic() < deadline + 10, "the finished reply was never stored"
        time.sleep(0.5)
    messages = conversation(page, server, cid)["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Before the outage.", "Write a while."]
    assert last["status"] in ("complete", "length") and last["content"] == streamed and streamed
    assert send(page, server, cid, "After the outage.")[-1][0] == "done"


def flask_cli(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
def test_a_sqlite_deployment_moves_to_postgres_with_one_command(start_server, tiny_model_dir, tmp_path, pg_url):
    data = tmp_path / "data"
    sqlite_env = {"WEBBOT_DATA_DIR": str(data), "WEBBOT_MODEL": str(tiny_model_dir)}
    made = flask_cli("users", "create", "ada", "--admin", "--password-stdin", env=sqlite_env,
                     stdin="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    server = start_server(tiny_model_dir, data)
    page = PageSession()
    before = {}
    for n in range(3):
        cid = page.post(server.url + "/api/conversations", json={"title": f"Chat {n}"}, timeout=30).json()["id"]
        for turn in range(n + 1):
            send(page, server, cid, f"Message {turn} of chat {n}.")
        before[cid] = conversation(page, server, cid)["messages"]
    saved = page.put(server.url + "/api/settings", json={"temperature": 0.3, "system_prompt": "Be terse."},
                     timeout=30).json()["saved"]
    server.stop()
    # A title with a NUL, as versions before NUL was refused stored on SQLite; PostgreSQL cannot keep it.
    import sqlite3

    with sqlite3.connect(data / "webbot.db") as db:
        db.execute("UPDATE conversations SET title = ? WHERE title = 'Chat 0'", ("Chat\x000",))

    moved = flask_cli("db", "copy-from", f"sqlite:///{data}/webbot.db",
                      env={**sqlite_env, "WEBBOT_DATABASE_URL": pg_url})
    assert moved.returncode == 0, moved.stderr
    assert "messages: 12/12" in moved.stdout and "counts verified" in moved.stdout
    assert "preferences: 1/1" in moved.stdout  # every table of the schema, not a hand-written list
    assert "1 rows held NUL characters" in moved.stdout and "title replaced" in moved.stdout
    again = flask_cli("db", "copy-from", f"sqlite:///{data}/webbot.db",
                      env={**sqlite_env, "WEBBOT_DATABASE_URL": pg_url})
    assert again.returncode != 0 and "already holds" in again.stderr  # never copies twice

    on_pg = start_server(tiny_model_dir, data, WEBBOT_DATABASE_URL=pg_url)  # same data dir: same session files
    assert requests.get(on_pg.url + "/healthz", timeout=10).json()["checks"]["database"]["kind"] == "postgresql"
    for cid, messages in before.items():
        assert conversation(page, on_pg, cid)["messages"] == messages  # every message, ids and times included
    assert page.get(on_pg.url + "/api/settings", timeout=30).json()["saved"] == saved
    titles = sorted(c["title"] for c in page.get(on_pg.url + "/api/conversations", timeout=30).json()["conversations"])
    assert titles == ["Chat 1", "Chat 2", "Chat\ufffd0"]
    cid = next(iter(before))
    assert send(page, on_pg, cid, "Still here after the move.")[-1][0] == "done"  # ids continue past the copied
    listed = flask_cli("users", "list", env={**sqlite_env, "WEBBOT_DATABASE_URL": pg_url})
    assert "ada" in listed.stdout and "admin" in listed.stdout


def test_a_database_made_before_migrations_is_stamped_and_upgraded(tmp_path):
    from sqlalchemy import text

    from webbot.storage import conversations, database, users

    engine = database.connect(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as db:  # the schema as create_all made it before migrations existed
        db.execute(text("CREATE TABLE conversations (id VARCHAR(32) PRIMARY KEY, owner VARCHAR(64) NOT NULL, "
                        "title VARCHAR(200) NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"))
        db.execute(text("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id VARCHAR(32) "
                        "NOT NULL REFERENCES conversations (id) ON DELETE CASCADE, role VARCHAR(16) NOT NULL, "
                        "content TEXT NOT NULL, status VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL)"))
        db.execute(text("INSERT INTO conversations VALUES ('c1', 'o', 'Old chat', 1.0, 1.0)"))
        db.execute(text("INSERT INTO messages (conversation_id, role, content, status, created_at) "
                        "VALUES ('c1', 'user', 'kept', 'complete', 1.0)"))
    assert database.current_revision(engine) is None
    database.upgrade(engine)
    assert database.current_revision(engine) == database.head_revision()
    assert conversations.Store(engine).messages("c1")[0]["content"] == "kept"
    assert users.Users(engine).by_name("nobody") is None  # the accounts tables were added


def test_replicas_starting_together_migrate_once(postgres):
    url = postgres.create_database("migrate_together")
    from webbot.storage import database

    errors = []

    def start():
        try:
            database.upgrade(database.connect(url))
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and database.current_revision(database.connect(url)) == database.head_revision()
