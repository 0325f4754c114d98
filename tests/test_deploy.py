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

from harness.edge import NGINX, Nginx, Tunnel, session_from, slow_client, timed_health
from harness.server_process import GUNICORN, ROOT, PageSession, read_sse
from tests.helpers import requires

pytestmark = requires(GUNICORN, "run_webbot.sh needs .venv (run_tests.sh makes it)")


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
    session = PageSession()
    session.trust_env = False
    session.verify = str(cert_dir / "cert.pem")
    return session


def stream_reply(session, url, cid, text, max_tokens=None):
    body = {"content": text, **({"max_tokens": max_tokens} if max_tokens else {})}
    return session.post(f"{url}/api/conversations/{cid}/messages", json=body, stream=True, timeout=60)


@pytest.mark.slow
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
        events = read_sse(stream_reply(session, server.url, cid, "Hello there", max_tokens=20).iter_lines())
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


@pytest.mark.slow
def test_without_a_certificate_python_app_py_says_plain_http(start_server, tiny_model_dir):
    server = start_server(tiny_model_dir)
    assert f"serving plain HTTP (no certificate in certs/) on http://127.0.0.1:{server.port}" in \
        server.log_path.read_text()


@pytest.mark.slow
def test_sigterm_mid_stream_stores_the_partial_reply_and_a_restart_serves_it(https_server, cert_dir, tmp_path):
    data_dir = tmp_path / "deploy-data"
    server = https_server(data_dir=data_dir, WEBBOT_GRACE_S="10")
    with tls_session(cert_dir) as session:
        cid = session.post(server.url + "/api/conversations", json={}).json()["id"]
        session.post(server.url + "/api/conversations", json={})  # another, untouched conversation
        response = stream_reply(session, server.url, cid, "Tell me a very long story", max_tokens=4000)
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
                 "ProtectSystem=strict", "PrivateTmp=true", "ReadWritePaths=/opt/webbot/instance", "User=webbot",
                 # behind nginx: loopback only, plain HTTP, one proxy trusted
                 "Environment=WEBBOT_HOST=127.0.0.1", "Environment=WEBBOT_PROXY_HOPS=1", "Environment=WEBBOT_CERT=",
                 "Wants=network-online.target nginx.service"):
        assert line in unit
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(ROOT / "deploy" / "webbot.service")],
                          capture_output=True, text=True) if Path("/usr/bin/systemd-analyze").exists() else None
    if done is not None:  # the unit's syntax; missing /opt/webbot paths are expected here
        assert "Unknown key" not in done.stderr and "Unknown section" not in done.stderr, done.stderr


@pytest.mark.slow
@requires(NGINX, "Debian's nginx is not installed (run_tests.sh installs it)")
def test_through_nginx_the_reply_streams_token_by_token(start_server, tiny_model_dir, cert_dir, tmp_path):
    app = start_server(tiny_model_dir, WEBBOT_PROXY_HOPS="1")
    proxy = Nginx(tmp_path / "nginx", app.port, cert_dir)
    try:
        url = proxy.url
        with tls_session(cert_dir) as session:
            proxy.wait(session)
            page = session.get(url + "/")
            assert "Secure" in page.headers["Set-Cookie"]  # the app saw X-Forwarded-Proto: https
            cid = session.post(url + "/api/conversations", json={}).json()["id"]
            started = time.monotonic()
            arrivals = []
            response = stream_reply(session, url, cid, "Tell me a story", max_tokens=300)
            for line in response.iter_lines():
                if line.startswith(b"event: "):
                    arrivals.append((line[7:].decode(), time.monotonic() - started))
        tokens = [t for kind, t in arrivals if kind == "token"]
        done = [t for kind, t in arrivals if kind == "done"]
        assert done and len(tokens) >= 5  # in pieces, each saved before it is sent (at most 10 a second)
        print(f"first token {tokens[0]:.2f} s, last token {tokens[-1]:.2f} s, done {done[0]:.2f} s")
        # Token by token, not all at once: the first token reached the client well before the end.
        assert tokens[0] < done[0] - 0.5 * (done[0] - arrivals[0][1]), arrivals[:3] + arrivals[-2:]
    finally:
        proxy.stop()


def frp_client() -> tuple[dict, dict]:
    """frpc.ini's [webbot] section and frpc.toml's proxy."""
    import configparser
    import tomllib

    ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    ini.read(ROOT / "frpc.ini")
    return ini, tomllib.loads((ROOT / "frpc.toml").read_text())


def test_frp_files_point_at_nginx_with_the_proxy_protocol_in_both_formats():
    import tomllib

    ini, toml = frp_client()
    server = tomllib.loads((ROOT / "deploy" / "frps.toml").read_text())
    proxy = toml["proxies"][0]
    assert ini["webbot"]["type"] == proxy["type"] == "tcp"
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    # nginx's port for frpc, which reads the PROXY header frpc sends
    assert int(ini["webbot"]["local_port"]) == proxy["localPort"] == 8443
    assert "listen 127.0.0.1:8443 ssl proxy_protocol;" in nginx and "real_ip_header proxy_protocol;" in nginx
    assert ini["webbot"]["proxy_protocol_version"] == proxy["transport"]["proxyProtocolVersion"] == "v2"
    assert int(ini["webbot"]["remote_port"]) == proxy["remotePort"] == server["allowPorts"][0]["single"]
    assert ini["common"]["token"] == toml["auth"]["token"] == server["auth"]["token"]
    assert int(ini["common"]["server_port"]) == toml["serverPort"] == server["bindPort"]


@pytest.mark.slow
@requires(NGINX, "Debian's nginx is not installed (run_tests.sh installs it)")
def test_the_public_port_answers_with_200_slow_clients_holding_it(start_server, tiny_model_dir, cert_dir, tmp_path):
    """The documented path, frp -> nginx -> gunicorn: 200 clients that send their headers a line every few
    seconds (more than gunicorn's 32 threads) leave /healthz answering within a second, and the app sees
    each visitor's own address (frp's PROXY header), so one address's sign-in limit holds back no other."""
    _, toml = frp_client()
    assert toml["proxies"][0]["transport"]["proxyProtocolVersion"] == "v2"
    app = start_server(tiny_model_dir, command=["./run_webbot.sh"], WEBBOT_PROXY_HOPS="1", WEBBOT_AUTH="password",
                       WEBBOT_PASSWORD="household-pass", WEBBOT_RATE_SIGNIN="2/minute")
    proxy = Nginx(tmp_path / "nginx", app.port, cert_dir, frp=True)
    tunnel = Tunnel(proxy.frp_port).start()  # the public port, as frps + frpc deliver it
    slow = []
    try:
        with tls_session(cert_dir) as session:
            proxy.wait(session)
        before = max(timed_health(tunnel.port, "127.0.2.1", cert_dir / "cert.pem") for _ in range(3))
        for n in range(200):  # each from its own address, as a botnet's would be
            slow.append(slow_client(tunnel.port, f"127.0.1.{n + 1}", cert_dir / "cert.pem"))
        during = []
        for round_ in range(3):
            for n, conn in enumerate(slow):
                conn.sendall(f"X-Slow-{round_}: {n}\r\n".encode())  # still not the end of the headers
            during.append(max(timed_health(tunnel.port, f"127.0.2.{k + 2}", cert_dir / "cert.pem", 5) or 99
                              for k in range(3)))
            time.sleep(2)
        print(f"/healthz through the public port: {before:.3f} s before, {max(during):.3f} s at most with "
              f"{len(slow)} slow clients")
        assert max(during) < 1.0, during

        # Sign-in attempts are counted per real address, not per tunnel.
        def sign_in(address: str) -> int:
            client = session_from(address, cert_dir / "cert.pem")
            url = f"https://127.0.0.1:{tunnel.port}/signin"
            page = client.get(url, timeout=30).text
            token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
            return client.post(url, data={"csrf_token": token, "password": "wrong"}, timeout=30).status_code

        assert [sign_in("127.0.3.1") for _ in range(3)] == [401, 401, 429]
        assert sign_in("127.0.3.2") == 401  # another visitor is not held back by the first one's tries
    finally:
        for conn in slow:
            conn.close()
        tunnel.stop()
        proxy.stop()


@pytest.mark.parametrize("hops,expected", [(0, "127.0.0.1 http"), (1, "203.0.113.7 https")])
def test_forwarded_headers_are_trusted_only_when_told_how_many_proxies(make_app, hops, expected):
    from flask import request

    app = make_app(WEBBOT_PROXY_HOPS=hops)
    app.add_url_rule("/_seen", "seen", lambda: f"{request.remote_addr} {request.scheme}")
    seen = app.test_client().get("/_seen", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert seen.get_data(as_text=True) == expected
