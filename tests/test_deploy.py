"""The deployment as a user runs it: certs/make_cert.sh, then run_webbot.sh (gunicorn with
deploy/gunicorn.conf.py) serving HTTPS on loopback, with a real TLS client that trusts only
that certificate; a SIGTERM while a reply streams. Real processes, the tiny random Llama.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import read_sse
from tests.server_process import ROOT

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
pytestmark = pytest.mark.skipif(not GUNICORN.exists(), reason="run_webbot.sh needs .venv (run_tests.sh makes it)")


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    done = subprocess.run([str(ROOT / "certs" / "make_cert.sh"), "chat.example.lan", "192.168.1.20"],
                          env={**os.environ, "CERT_DIR": str(out)}, capture_output=True, text=True, check=True)
    assert "wrote" in done.stdout
    return out


def test_make_cert_writes_a_private_key_and_a_certificate_for_the_given_names(cert_dir):
    assert (cert_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    text = subprocess.run(["openssl", "x509", "-in", str(cert_dir / "cert.pem"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:chat.example.lan", "IP Address:192.168.1.20"):
        assert name in text


@pytest.fixture
def https_server(start_server, tiny_model_dir, cert_dir, tmp_path):
    def start(**env):
        return start_server(tiny_model_dir, command=["./run_webbot.sh"], cafile=cert_dir / "cert.pem",
                            WEBBOT_CERT=str(cert_dir / "cert.pem"), WEBBOT_KEY=str(cert_dir / "key.pem"), **env)

    return start


def tls_session(cert_dir) -> requests.Session:
    """A client that trusts only our certificate (not REQUESTS_CA_BUNDLE, which would override it)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(cert_dir / "cert.pem")
    return session


def stream_reply(session, server, cid, text, max_tokens=None):
    body = {"content": text, **({"max_tokens": max_tokens} if max_tokens else {})}
    return session.post(f"{server.url}/api/conversations/{cid}/messages", json=body, stream=True, timeout=60)


def test_gunicorn_serves_https_streams_and_sets_a_secure_cookie(https_server, cert_dir):
    server = https_server()
    log = server.log_path.read_text()
    assert f"serving HTTPS on https://127.0.0.1:{server.port}" in log  # says which, with the URL
    with tls_session(cert_dir) as session:
        assert session.get(server.url + "/healthz").json()["status"] == "ok"
        page = session.get(server.url + "/")
        cookie = page.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
        events = read_sse(stream_reply(session, server, cid, "Hello there", max_tokens=20).iter_lines())
        kinds = [event for event, _ in events]
        assert kinds[0] == "start" and "token" in kinds and kinds[-1] == "done"
    # Nobody else's certificate is trusted, and plain HTTP to the TLS port fails at once, cleanly.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/healthz", timeout=10)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url.replace("https", "http") + "/healthz", timeout=10)
    assert time.monotonic() - started < 5
    assert requests.get(server.url + "/healthz", verify=str(cert_dir / "cert.pem"), timeout=10).status_code == 200


def test_without_a_certificate_python_app_py_says_plain_http(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir)
    assert f"serving plain HTTP (no certificate in certs/) on http://127.0.0.1:{server.port}" in \
        server.log_path.read_text()


def test_sigterm_mid_stream_stores_the_partial_reply_and_a_restart_serves_it(https_server, cert_dir, tmp_path):
    data_dir = tmp_path / "deploy-data"
    server = https_server(data_dir=data_dir, WEBBOT_GRACE_S="10")
    with tls_session(cert_dir) as session:
        cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
        session.post(server.url + "/api/conversations", json={})  # another, untouched conversation
        response = stream_reply(session, server, cid, "Tell me a very long story", max_tokens=4000)
        lines = response.iter_lines()
        seen = []
        for line in lines:  # wait until tokens flow
            seen.append(line)
            if line.startswith(b"event: token") and len(seen) > 20:
                break
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        events = read_sse(seen + list(lines))  # the stream ends with the stored partial reply
        server.process.wait(timeout=15)
        took = time.monotonic() - started
        cookies = session.cookies.copy()
    assert took < 10, f"gunicorn took {took:.1f} s to stop"
    done = [data for event, data in events if event == "done"]
    assert done and done[0]["message"]["status"] == "stopped"
    assert "shutting down: ended 1 replies in flight" in server.log_path.read_text()

    again = https_server(data_dir=data_dir)
    with tls_session(cert_dir) as session:
        session.cookies.update(cookies)
        conversations = session.get(again.url + "/api/conversations").json()["conversations"]
        assert len(conversations) == 2  # nothing else lost
        messages = session.get(f"{again.url}/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["status"] == "stopped" and messages[1]["content"]
    assert done[0]["message"]["content"] == messages[1]["content"]


def test_systemd_unit_runs_run_webbot_sh_hardened():
    unit = (ROOT / "deploy" / "webbot.service").read_text()
    for line in ("ExecStart=/opt/webbot/run_webbot.sh", "Restart=on-failure", "NoNewPrivileges=true",
                 "ProtectSystem=strict", "PrivateTmp=true", "ReadWritePaths=/opt/webbot/instance", "User=webbot"):
        assert line in unit
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(ROOT / "deploy" / "webbot.service")],
                          capture_output=True, text=True) if Path("/usr/bin/systemd-analyze").exists() else None
    if done is not None:  # the unit's syntax; missing /opt/webbot paths are expected here
        assert "Unknown key" not in done.stderr and "Unknown section" not in done.stderr, done.stderr
