"""Accounts, the shared password and who sees what, against real server processes (`python app.py`) and the
real `flask --app app users` command: users are made by the CLI, sign in through the forms, and every
route of one user's conversation is tried by another. The routes are read from the app's URL map, so a
route added later is covered without editing this file.
"""

import html
import re

import pytest
import requests

from harness.server_process import PageSession
from tests.helpers import users_cli
from webbot.storage.database import connect
from webbot.storage.users import Users

FIELD_TOKEN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def form_token(html: str) -> str:
    return FIELD_TOKEN.search(html).group(1)


def sign_in(server, name: str | None, password: str, client: PageSession | None = None) -> requests.Response:
    """Fill in the sign-in form as a browser does; returns the (unfollowed) answer."""
    client = client if client is not None else PageSession()
    form = client.get(server.url + "/signin")
    data = {"csrf_token": form_token(form.text), "password": password, **({"name": name} if name else {})}
    response = client.post(server.url + "/signin", data=data, allow_redirects=False)
    response.client = client
    return response


def signed_in(server, name: str, password: str) -> PageSession:
    response = sign_in(server, name, password)
    assert response.status_code == 302 and response.headers["Location"] == "/", response.text
    response.client.headers.pop("X-CSRFToken", None)  # the page's token is read again from the signed-in page
    return response.client


def post_form(client, url: str, page: str, **data) -> requests.Response:
    """Send a form of `page` (its CSRF field included) as a browser does."""
    return client.post(url, data={"csrf_token": form_token(client.get(page).text), **data}, allow_redirects=False)


def chat(client, server, text: str = "hello") -> str:
    """A conversation with one exchange; returns its id."""
    cid = client.post(server.url + "/api/conversations", json={}).json()["id"]
    reply = client.post(f"{server.url}/api/conversations/{cid}/messages", json={"content": text, "max_tokens": 3})
    assert reply.status_code == 200 and "event: done" in reply.text
    return cid


def conversation_routes(tiny_bot, tmp_path) -> list[tuple[str, str]]:
    """(method, rule) for every route that takes a conversation id, read from the real app."""
    from app import create_app

    app = create_app({"WEBBOT_DATA_DIR": str(tmp_path / "map"), "WEBBOT_CERT": "", "WEBBOT_KEY": ""}, bot=tiny_bot)
    return sorted((method, rule.rule) for rule in app.url_map.iter_rules() if "conversation_id" in rule.arguments
                  for method in rule.methods - {"HEAD", "OPTIONS"})


@pytest.fixture(scope="module")
def accounts(tiny_model_dir, tmp_path_factory):
    """A server in accounts mode with an admin (root) and two users (alice, bob) made by the CLI."""
    from harness.server_process import Server

    tmp = tmp_path_factory.mktemp("accounts")
    for args, password in [(("create", "root", "--admin"), "root-password"), (("create", "alice"), "alice-password"),
                           (("create", "Bob"), "bob-password")]:
        made = users_cli(tmp / "data", *args, password=password)
        assert made.returncode == 0, made.stderr
    server = Server(tiny_model_dir, tmp / "data", tmp / "server.log", WEBBOT_AUTH="accounts",
                    WEBBOT_RATE_SIGNIN="off").start()  # the sign-in limit has its own test
    yield server
    server.stop()


@pytest.mark.slow
def test_the_cli_makes_users_and_admins_and_refuses_bad_ones(accounts):
    data = accounts.env["WEBBOT_DATA_DIR"]
    listed = users_cli(data, "list")
    assert listed.returncode == 0 and "root\tadmin\tactive" in listed.stdout and "bob\tuser\tactive" in listed.stdout
    taken = users_cli(data, "create", "ALICE", password="another-password")
    assert taken.returncode == 1 and "The name 'alice' is taken; choose another." in taken.stderr
    short = users_cli(data, "create", "carol", password="short")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    odd = users_cli(data, "create", "<script>", password="long-enough-1")
    assert odd.returncode == 1 and "letters, digits, dots, dashes or underscores" in odd.stderr
    missing = users_cli(data, "disable", "nobody")
    assert missing.returncode == 1 and "There is no user named 'nobody'" in missing.stderr


@pytest.mark.slow
def test_signed_out_visitors_are_sent_to_sign_in_or_get_401(accounts, tiny_bot, tmp_path):
    anonymous = requests.Session()
    page = anonymous.get(accounts.url + "/", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"] == "/signin?next=/"
    deep = anonymous.get(accounts.url + "/c/abc?x=1", allow_redirects=False)
    assert deep.headers["Location"] == "/signin?next=/c/abc?x%3D1"
    listing = anonymous.get(accounts.url + "/api/conversations")
    assert listing.status_code == 401 and "sign in again" in listing.json()["error"]["message"]
    for method, rule in conversation_routes(tiny_bot, tmp_path):
        path = rule.replace("<conversation_id>", "0" * 32).replace("<int:message_id>", "1")
        answer = anonymous.request(method, accounts.url + path, json={}, allow_redirects=False)
        assert answer.status_code in (302, 401), (method, rule, answer.status_code)
    assert anonymous.post(accounts.url + "/api/conversations", json={}).status_code == 401
    assert anonymous.post(accounts.url + "/api/transcriptions").status_code == 401
    for path in ("/api/speech", "/v1/audio/speech"):
        assert anonymous.post(accounts.url + path, json={"input": "Hello."}).status_code == 401
    api = anonymous.get(accounts.url + "/v1/models")
    assert api.status_code == 401 and "a key made on your account page" in api.json()["error"]["message"]
    assert anonymous.get(accounts.url + "/healthz").status_code == 200
    assert anonymous.get(accounts.url + "/static/chat.css").status_code == 200
    # after signing in, the visitor lands where they were going, never on another site
    for target, landing in [("/c/abc", "/c/abc"), ("//evil.example/x", "/"), ("https://evil.example/", "/")]:
        client = PageSession()
        client.get(f"{accounts.url}/signin", params={"next": target})
        token = form_token(client.get(f"{accounts.url}/signin").text)
        answer = client.post(f"{accounts.url}/signin", params={"next": target}, allow_redirects=False,
                             data={"csrf_token": token, "name": "alice", "password": "alice-password"})
        assert answer.headers["Location"] == landing


def test_wrong_passwords_and_the_session_id_at_sign_in(accounts):
    wrong = sign_in(accounts, "alice", "not-her-password")
    assert wrong.status_code == 401 and "Wrong name or password." in wrong.text
    unknown = sign_in(accounts, "nobody", "whatever-password")
    assert unknown.status_code == 401 and "Wrong name or password." in unknown.text
    empty = sign_in(accounts, "alice", "")
    assert empty.status_code == 400 and "Type your password." in empty.text
    client = PageSession()
    client.get(accounts.url + "/signin")
    assert "webbot_session" not in client.cookies  # a visitor has nothing stored on the server
    before = client.cookies["webbot_visitor"]
    assert sign_in(accounts, "alice", "alice-password", client).status_code == 302
    first = client.cookies["webbot_session"]  # signed in: a session on the server, under a new random id
    assert "webbot_visitor" not in client.cookies
    planted = requests.Session()
    planted.cookies.set("webbot_visitor", before)  # what the browser held before is worth nothing after
    assert planted.get(accounts.url + "/api/conversations").status_code == 401
    assert sign_in(accounts, "alice", "alice-password", client).status_code == 302
    assert client.cookies["webbot_session"] != first  # signing in again makes a new id too
    stale = requests.Session()
    stale.cookies.set("webbot_session", first)
    assert stale.get(accounts.url + "/api/conversations").status_code == 401


def test_another_user_gets_404_on_every_route_of_my_conversation(accounts, tiny_bot, tmp_path):
    alice, bob = signed_in(accounts, "alice", "alice-password"), signed_in(accounts, "bob", "bob-password")
    cid = chat(alice, accounts, "my secret plan")
    before = alice.get(f"{accounts.url}/api/conversations/{cid}").json()
    routes = conversation_routes(tiny_bot, tmp_path)
    assert {("GET", "/c/<conversation_id>"), ("DELETE", "/api/conversations/<conversation_id>"),
            ("GET", "/api/conversations/<conversation_id>/export")} <= set(routes)
    bodies = {"PATCH": {"title": "mine now"}, "POST": {"content": "let me in", "max_tokens": 2}}
    message_id = str(before["messages"][0]["id"])  # a real message of Alice's: its id alone opens nothing
    for method, rule in routes:
        url = accounts.url + rule.replace("<conversation_id>", cid).replace("<int:message_id>", message_id)
        answer = bob.request(method, url, json=bodies.get(method))
        assert answer.status_code == 404, (method, rule, answer.status_code, answer.text[:200])
        assert "my secret plan" not in answer.text
    for kind in ("json", "markdown"):
        assert bob.get(f"{accounts.url}/api/conversations/{cid}/export", params={"format": kind}).status_code == 404
    assert cid not in bob.get(accounts.url + "/").text
    assert bob.get(accounts.url + "/api/conversations").json()["conversations"] == []
    # nothing of Alice's changed, and she still has every route
    assert alice.get(f"{accounts.url}/api/conversations/{cid}").json() == before
    exported = alice.get(f"{accounts.url}/api/conversations/{cid}/export", params={"format": "markdown"})
    assert exported.status_code == 200 and "my secret plan" in exported.text
    assert exported.headers["Content-Disposition"].startswith('attachment; filename="my_secret_plan.md"')
    exported = alice.get(f"{accounts.url}/api/conversations/{cid}/export").json()["conversations"][0]
    assert exported["messages"][0]["content"] == "my secret plan"


def test_a_disabled_user_is_out_at_once_and_back_when_enabled(accounts):
    admin = signed_in(accounts, "root", "root-password")
    bob = signed_in(accounts, "bob", "bob-password")
    key = post_form(bob, accounts.url + "/account/keys", accounts.url + "/account", name="laptop")
    token = re.search(r'id="new-key">([^<]+)<', key.text).group(1)
    api = {"Authorization": f"Bearer {token}"}
    assert requests.post(accounts.url + "/v1/chat/completions", json=BODY, headers=api).status_code == 200
    cid = chat(bob, accounts)
    users_page = admin.get(accounts.url + "/admin").text
    bob_id = re.search(r'/admin/users/(\d+)/disable', users_page[users_page.index('data-name="bob"'):]).group(1)
    refused = post_form(bob, f"{accounts.url}/admin/users/{bob_id}/disable", accounts.url + "/account")
    assert refused.status_code == 403 and "Only an admin" in refused.text  # users cannot disable each other
    disabled = post_form(admin, f"{accounts.url}/admin/users/{bob_id}/disable", accounts.url + "/admin")
    assert disabled.status_code == 302 and "bob is disabled" in admin.get(accounts.url + "/admin").text
    # the very next request of every kind is refused
    assert bob.get(f"{accounts.url}/api/conversations/{cid}").status_code == 401
    assert bob.get(accounts.url + "/", allow_redirects=False).status_code == 302
    assert requests.post(accounts.url + "/v1/chat/completions", json=BODY, headers=api).status_code == 401
    again = sign_in(accounts, "bob", "bob-password")
    assert again.status_code == 403 and "This account is disabled" in again.text
    post_form(admin, f"{accounts.url}/admin/users/{bob_id}/enable", accounts.url + "/admin")
    back = signed_in(accounts, "bob", "bob-password")
    assert [c["id"] for c in back.get(accounts.url + "/api/conversations").json()["conversations"]] == [cid]
    assert requests.post(accounts.url + "/v1/chat/completions", json=BODY, headers=api).status_code == 200
    # an admin cannot lock themselves out: no button on their own row, and a hand-made request is refused
    root_row = users_page[users_page.index('data-name="root"'):]
    assert "<form" not in root_row[:root_row.index("</tr>")]
    root_id = Users(connect(f"sqlite:///{accounts.env['WEBBOT_DATA_DIR']}/webbot.db")).by_name("root")["id"]
    itself = post_form(admin, f"{accounts.url}/admin/users/{root_id}/disable", accounts.url + "/admin")
    assert itself.status_code == 400 and "You cannot disable your own account" in itself.text


def test_an_admin_adds_people_on_the_admin_page_and_nobody_else_can(accounts):
    admin = signed_in(accounts, "root", "root-password")
    users = Users(connect(f"sqlite:///{accounts.env['WEBBOT_DATA_DIR']}/webbot.db"))
    # A password left empty is made, shown once, and works; the page's own form is what is sent
    made = post_form(admin, accounts.url + "/admin/users", accounts.url + "/admin", name="Carol")
    password = re.search(r'id="new-password">([^<]+)<', made.text).group(1)
    assert made.status_code == 200 and "carol is added." in made.text and len(password) >= 16
    assert password not in admin.get(accounts.url + "/admin").text  # shown once
    carol = signed_in(accounts, "carol", password)
    assert carol.get(accounts.url + "/account").status_code == 200 and not users.by_name("carol")["is_admin"]
    # A chosen password and the admin box
    chosen = post_form(admin, accounts.url + "/admin/users", accounts.url + "/admin", name="dave",
                       password="dave-password", admin="y")
    assert "dave is added as an admin." in chosen.text and 'id="new-password"' not in chosen.text
    assert signed_in(accounts, "dave", "dave-password") and users.by_name("dave")["is_admin"]
    # Refusals: a sentence, the form filled in again, nobody added or changed
    before = users.all()
    for fields, sentence in [({"name": "carol"}, "The name 'carol' is taken; choose another."),
                             ({"name": ""}, "Name the person."),
                             ({"name": "eve", "password": "short"}, "Choose a password of at least 8 characters."),
                             ({"name": "eve\x00"}, "A user name is 1 to 64 letters"),
                             ({"name": "e" * 65}, "Field cannot be longer than 64 characters.")]:
        refused = post_form(admin, accounts.url + "/admin/users", accounts.url + "/admin", **fields)
        assert refused.status_code == 400 and sentence in html.unescape(refused.text), fields
    assert users.all() == before
    # Not an admin: 403; no CSRF token: 400; signed out: sent to sign in. None of them adds anyone
    alice = signed_in(accounts, "alice", "alice-password")
    assert post_form(alice, accounts.url + "/admin/users", accounts.url + "/account", name="mallory"
                     ).status_code == 403
    forged = requests.post(accounts.url + "/admin/users", data={"name": "mallory"}, cookies=admin.cookies,
                           allow_redirects=False)  # the admin's cookies, sent by another site's form
    assert forged.status_code == 400 and "security token is missing" in forged.text
    assert requests.post(accounts.url + "/admin/users", data={"name": "mallory"}, allow_redirects=False
                         ).status_code in (302, 400, 401)
    assert users.by_name("mallory") is None and len(users.all()) == len(before)


def test_api_keys_belong_to_one_user_and_stop_when_revoked(accounts):
    alice = signed_in(accounts, "alice", "alice-password")
    made = post_form(alice, accounts.url + "/account/keys", accounts.url + "/account", name="script")
    token = re.search(r'id="new-key">([^<]+)<', made.text).group(1)
    assert token.startswith("wb-") and token not in alice.get(accounts.url + "/account").text  # shown once
    from openai import OpenAI

    client = OpenAI(base_url=accounts.url + "/v1", api_key=token, max_retries=0)
    assert client.models.list().data[0].object == "model"
    key_id = re.search(r'/account/keys/(\d+)/revoke', alice.get(accounts.url + "/account").text).group(1)
    bob = signed_in(accounts, "bob", "bob-password")
    assert post_form(bob, f"{accounts.url}/account/keys/{key_id}/revoke", accounts.url + "/account"
                     ).status_code == 404  # not his to revoke
    assert client.models.list().data
    post_form(alice, f"{accounts.url}/account/keys/{key_id}/revoke", accounts.url + "/account")
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        client.models.list()
    assert requests.get(accounts.url + "/v1/models", headers={"Authorization": "Bearer wb-made-up"}
                        ).status_code == 401


def test_changing_the_password_signs_out_other_browsers(accounts, tmp_path):
    made = users_cli(accounts.env["WEBBOT_DATA_DIR"], "create", "dora", password="dora-password")
    assert made.returncode == 0, made.stderr
    here, there = signed_in(accounts, "dora", "dora-password"), signed_in(accounts, "dora", "dora-password")
    mismatch = post_form(here, accounts.url + "/account/password", accounts.url + "/account",
                         current="dora-password", password="new-password-1", confirm="new-password-2")
    assert mismatch.status_code == 400 and "The two new passwords differ." in mismatch.text
    wrong = post_form(here, accounts.url + "/account/password", accounts.url + "/account",
                      current="not-it-at-all", password="new-password-1", confirm="new-password-1")
    assert wrong.status_code == 400 and "The current password is wrong." in wrong.text
    changed = post_form(here, accounts.url + "/account/password", accounts.url + "/account",
                        current="dora-password", password="new-password-1", confirm="new-password-1")
    assert changed.status_code == 302
    assert here.get(accounts.url + "/api/conversations").status_code == 200  # this browser stays in
    assert there.get(accounts.url + "/api/conversations").status_code == 401  # the other one is out
    assert sign_in(accounts, "dora", "dora-password").status_code == 401
    signed_in(accounts, "dora", "new-password-1")


def test_sign_out(accounts):
    alice = signed_in(accounts, "alice", "alice-password")
    page = alice.get(accounts.url + "/").text
    assert 'id="account-link"' in page and ">alice<" in page and ">Admin<" not in page
    out = alice.post(accounts.url + "/signout", data={"csrf_token": form_token(page)}, allow_redirects=False)
    assert out.status_code == 302 and out.headers["Location"] == "/signin"
    assert alice.get(accounts.url + "/api/conversations").status_code == 401


@pytest.mark.slow
def test_sign_up_is_closed_by_default_and_open_when_configured(accounts, start_server, tiny_model_dir):
    closed = requests.get(accounts.url + "/signup")
    assert closed.status_code == 403 and "Sign-up is closed on this server" in closed.text
    server = start_server(tiny_model_dir, WEBBOT_AUTH="accounts", WEBBOT_SIGNUP="open", WEBBOT_RATE_SIGNIN="5/minute")
    client = PageSession()
    assert "No accounts exist yet" in client.get(server.url + "/signin").text
    mismatch = post_form(client, server.url + "/signup", server.url + "/signup", name="erin",
                         password="erin-password", confirm="erin-passwort")
    assert mismatch.status_code == 400 and "The two passwords differ." in mismatch.text
    made = post_form(client, server.url + "/signup", server.url + "/signup", name="erin",
                     password="erin-password", confirm="erin-password")
    assert made.status_code == 302
    client.headers.pop("X-CSRFToken", None)
    chat(client, server)
    taken = post_form(PageSession(), server.url + "/signup", server.url + "/signup", name="Erin",
                      password="other-password", confirm="other-password")
    assert taken.status_code == 400 and "The name &#39;erin&#39; is taken" in taken.text
    # sign-in attempts (sign-ups share them) are limited per address: 3 made above and below, then 429
    statuses = [sign_in(server, "erin", "guess-number-x").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    limited = sign_in(server, "erin", "erin-password")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "Too many sign-in attempts" in limited.text


@pytest.mark.slow
def test_anonymous_conversations_are_claimed_on_first_sign_in(start_server, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    server = start_server(tiny_model_dir, data)  # open mode, as the core issue built it
    browser = PageSession()
    cids = {chat(browser, server, "before accounts"), chat(browser, server, "me too")}
    server.stop()
    assert users_cli(data, "create", "owner", "--admin", password="owner-password").returncode == 0
    server = start_server(tiny_model_dir, data, WEBBOT_AUTH="accounts")
    assert browser.get(server.url + "/api/conversations").status_code == 401
    response = sign_in(server, "owner", "owner-password", browser)
    assert response.status_code == 302
    page = browser.get(server.url + "/").text
    assert "2 conversations from this browser are now in your account." in page
    browser.headers.pop("X-CSRFToken", None)
    assert {c["id"] for c in browser.get(server.url + "/api/conversations").json()["conversations"]} == cids
    # a second browser of the same user sees them too; a new anonymous browser claims nothing
    other = signed_in(server, "owner", "owner-password")
    assert {c["id"] for c in other.get(server.url + "/api/conversations").json()["conversations"]} == cids


@pytest.mark.slow
def test_shared_password_mode(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir, WEBBOT_AUTH="password", WEBBOT_PASSWORD="family-secret-7")
    form = requests.get(server.url + "/signin").text
    assert 'name="name"' not in form and 'name="password"' in form
    assert sign_in(server, None, "wrong").status_code == 401
    kitchen = sign_in(server, None, "family-secret-7").client
    kitchen.headers.pop("X-CSRFToken", None)
    cid = chat(kitchen, server)
    lounge = sign_in(server, None, "family-secret-7").client
    lounge.headers.pop("X-CSRFToken", None)
    assert lounge.get(f"{server.url}/api/conversations/{cid}").status_code == 404  # each browser its own chats
    assert requests.get(server.url + "/v1/models").status_code == 401
    ok = requests.get(server.url + "/v1/models", headers={"Authorization": "Bearer family-secret-7"})
    assert ok.status_code == 200
    assert requests.get(server.url + "/account", allow_redirects=False).status_code == 302
    assert kitchen.get(server.url + "/account").status_code == 404


def test_password_mode_without_a_password_stops_with_a_sentence(make_app):
    with pytest.raises(ValueError, match="WEBBOT_AUTH=password needs the shared password in WEBBOT_PASSWORD"):
        make_app(WEBBOT_AUTH="password")
    with pytest.raises(ValueError, match="WEBBOT_AUTH must be one of open, password, accounts"):
        make_app(WEBBOT_AUTH="users")
