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

from tests.conftest import read_sse, requires
from tests.server_process import GUNICORN, ROOT, PageSession

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
                 "ProtectSystem=strict", "PrivateTmp=true", "ReadWritePaths=/opt/webbot/instance", "User=webbot"):
        assert line in unit
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(ROOT / "deploy" / "webbot.service")],
                          capture_output=True, text=True) if Path("/usr/bin/systemd-analyze").exists() else None
    if done is not None:  # the unit's syntax; missing /opt/webbot paths are expected here
        assert "Unknown key" not in done.stderr and "Unknown section" not in done.stderr, done.stderr


NGINX = "/usr/sbin/nginx"


def nginx_config(tmp: Path, listen_port: int, app_port: int, cert_dir: Path) -> Path:
    """deploy/nginx.conf with its CHANGE lines pointed at this test, inside a minimal main config."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = site.split("# Send plain HTTP to HTTPS")[0]  # the port-80 redirect needs root's port
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;").replace(
        "listen [::]:443 ssl;", "")
    site = site.replace("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert_dir / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(cert_dir / "key.pem"))
    site = site.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{app_port}")
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in kinds)
    main = (f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
            f"events {{ worker_connections 64; }}\n"
            f"http {{\n    access_log {tmp}/access.log;\n{temp}    include {tmp}/site.conf;\n}}\n")
    if os.geteuid() == 0:
        main = "user root;\n" + main
    (tmp / "site.conf").write_text(site)
    (tmp / "nginx.conf").write_text(main)
    return tmp / "nginx.conf"


@requires(NGINX, "Debian's nginx is not installed (run_tests.sh installs it)")
def test_through_nginx_the_reply_streams_token_by_token(start_server, tiny_model_dir, cert_dir, tmp_path):
    from tests.server_process import free_port

    app = start_server(tiny_model_dir, WEBBOT_PROXY_HOPS="1")
    port = free_port()
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    config = nginx_config(nginx_dir, port, app.port, cert_dir)
    proxy = subprocess.Popen([NGINX, "-p", str(nginx_dir), "-c", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        url = f"https://127.0.0.1:{port}"
        with tls_session(cert_dir) as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if session.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline and proxy.poll() is None, proxy.stderr.read()
                time.sleep(0.2)
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
        assert done and len(tokens) > 20
        print(f"first token {tokens[0]:.2f} s, last token {tokens[-1]:.2f} s, done {done[0]:.2f} s")
        # Token by token, not all at once: the first token reached the client well before the end.
        assert tokens[0] < done[0] - 0.5 * (done[0] - arrivals[0][1]), arrivals[:3] + arrivals[-2:]
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_frp_files_point_at_the_apps_port_in_both_formats():
    import configparser
    import tomllib

    ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    ini.read(ROOT / "frpc.ini")
    toml = tomllib.loads((ROOT / "frpc.toml").read_text())
    server = tomllib.loads((ROOT / "deploy" / "frps.toml").read_text())
    proxy = toml["proxies"][0]
    assert ini["webbot"]["type"] == proxy["type"] == "tcp"
    assert int(ini["webbot"]["local_port"]) == proxy["localPort"] == 5000  # WEBBOT_PORT's default
    assert int(ini["webbot"]["remote_port"]) == proxy["remotePort"] == server["allowPorts"][0]["single"]
    assert ini["common"]["token"] == toml["auth"]["token"] == server["auth"]["token"]
    assert int(ini["common"]["server_port"]) == toml["serverPort"] == server["bindPort"]


@pytest.mark.parametrize("hops,expected", [(0, "127.0.0.1 http"), (1, "203.0.113.7 https")])
def test_forwarded_headers_are_trusted_only_when_told_how_many_proxies(make_app, hops, expected):
    from flask import request

    app = make_app(WEBBOT_PROXY_HOPS=hops)
    app.add_url_rule("/_seen", "seen", lambda: f"{request.remote_addr} {request.scheme}")
    seen = app.test_client().get("/_seen", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert seen.get_data(as_text=True) == expected
