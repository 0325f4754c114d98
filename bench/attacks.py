"""The attacks of the hardening issue, replayed at full size against the documented deployment, with figures.

    .venv/bin/python -m bench.attacks              # all of them, about 3 minutes here
    .venv/bin/python -m bench.attacks --only slow  # one: pin, sessions, keys, slow, history

The deployment is the one the README documents: gunicorn (run_webbot.sh, 32 threads) on
loopback behind Debian's nginx running deploy/nginx.conf, reached through a stand-in for the
frp tunnel that sends the PROXY protocol header, as frpc does (tests/edge.py). The model is
the 2-layer random Llama with the real Llama 3.2 tokenizer and template. Every client runs
on this machine and talks only to loopback addresses (127.x.y.z, each "visitor" its own).
Prints a table and writes bench/results/attacks.json.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import save_report
from harness import assets
from harness.edge import Nginx, Tunnel, session_from, slow_client, timed_health
from harness.server_process import Server


def make_cert(folder: Path) -> Path:
    import os
    import subprocess

    from harness.server_process import ROOT

    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / "certs" / "make_cert.sh")], env={**os.environ, "CERT_DIR": str(folder)},
                   check=True, capture_output=True)
    return folder


class Deployment:
    """gunicorn behind nginx behind the frp stand-in; `public` is the port visitors reach."""

    def __init__(self, root: Path, certs: Path, **env):
        self.certs = certs
        root.mkdir(parents=True, exist_ok=True)
        self.app = Server(assets.tiny_llama_dir(), root / "data", root / "app.log", command=["./run_webbot.sh"],
                          WEBBOT_PROXY_HOPS="1", **env).start()
        self.nginx = Nginx(root / "nginx", self.app.port, certs, frp=True)
        self.tunnel = Tunnel(self.nginx.frp_port).start()
        self.public = f"https://127.0.0.1:{self.tunnel.port}"
        self.nginx.wait(session_from("127.0.0.1", certs / "cert.pem"))

    def visitor(self, address: str):
        """A browser-like client from `address` that sends the page's CSRF token on writes."""
        session = session_from(address, self.certs / "cert.pem")
        page = session.get(self.public + "/", timeout=30).text
        session.headers["X-CSRFToken"] = page.split('<meta name="csrf-token" content="')[1].split('"')[0]
        return session

    def stop(self) -> None:
        self.tunnel.stop()
        self.nginx.stop()
        self.app.stop()


def pin(deployment: Deployment) -> dict:
    """A visitor's PIN against ten guesses, each from a fresh address, read from `cached_tokens` and the time
    to the first token."""
    victim = deployment.visitor("127.0.4.1")
    cid = victim.post(deployment.public + "/api/conversations", json={}, timeout=30).json()["id"]
    sent = victim.post(f"{deployment.public}/api/conversations/{cid}/messages", timeout=60,
                       json={"content": "My bank PIN is 4 7 1 9", "max_tokens": 2})
    assert "event: done" in sent.text, sent.text[:300]
    system = victim.get(deployment.public + "/api/settings", timeout=30).json()["defaults"]["system_prompt"]
    cached, seconds = {}, {}
    for digit in range(10):
        guesser = session_from(f"127.0.5.{digit + 1}", deployment.certs / "cert.pem")
        started = time.monotonic()
        answer = guesser.post(deployment.public + "/v1/chat/completions", timeout=60, json={
            "model": "x", "max_tokens": 1, "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": f"My bank PIN is {digit} zzqx"}]})
        seconds[digit] = time.monotonic() - started
        cached[digit] = answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    others = [seconds[d] for d in range(10) if d != 4]
    return {"cached_tokens_by_guess": cached, "cached_tokens_spread": max(cached.values()) - min(cached.values()),
            "right_guess_s": round(seconds[4], 4), "wrong_guesses_median_s": round(statistics.median(others), 4)}


def sessions(deployment: Deployment, root: Path, visitors: int) -> dict:
    """`visitors` cookieless page loads (and one in twenty writing), while a person keeps using the app."""
    person = deployment.visitor("127.0.6.1")
    cid = person.post(deployment.public + "/api/conversations", json={"title": "mine"}, timeout=30).json()["id"]
    times, stop = [], threading.Event()

    def keep_using():
        while not stop.is_set():
            started = time.monotonic()
            person.get(deployment.public + "/api/conversations", timeout=30)
            times.append(time.monotonic() - started)
            time.sleep(0.2)

    watcher = threading.Thread(target=keep_using)
    watcher.start()
    started = time.monotonic()
    for n in range(visitors):
        address = f"127.7.{n // 250}.{n % 250 + 1}"
        if n % 20:
            session_from(address, deployment.certs / "cert.pem").get(deployment.public + "/", timeout=30)
        else:
            deployment.visitor(address).post(deployment.public + "/api/conversations", json={}, timeout=30)
    flood_s = time.monotonic() - started
    stop.set()
    watcher.join()
    files = [p for p in (root / "data" / "sessions").glob("*") if p.stat().st_size > 64]
    still = [c["id"] for c in person.get(deployment.public + "/api/conversations", timeout=30).json()["conversations"]]
    return {"visitors": visitors, "flood_s": round(flood_s, 1), "session_files": len(files),
            "person_still_has_conversation": cid in still,
            "person_request_median_s": round(statistics.median(times), 4),
            "person_request_max_s": round(max(times), 4)}


def keys(deployment: Deployment, guesses: int) -> dict:
    """`guesses` wrong bearer keys from one address, then the right one from it and from another."""
    guesser = session_from("127.0.8.1", deployment.certs / "cert.pem")
    codes: dict[int, int] = {}
    started = time.monotonic()
    for n in range(guesses):
        code = guesser.get(deployment.public + "/v1/models", headers={"Authorization": f"Bearer guess{n}"},
                           timeout=30).status_code
        codes[code] = codes.get(code, 0) + 1
    right = {"Authorization": "Bearer household-pass"}
    return {"guesses": guesses, "seconds": round(time.monotonic() - started, 1), "answers": codes,
            "right_key_same_address": guesser.get(deployment.public + "/v1/models", headers=right,
                                                  timeout=30).status_code,
            "right_key_other_address": session_from("127.0.8.2", deployment.certs / "cert.pem").get(
                deployment.public + "/v1/models", headers=right, timeout=30).status_code}


def slow(deployment: Deployment, clients: int) -> dict:
    """`clients` that send their headers a line at a time: straight at gunicorn, and at the public port."""
    result = {}
    for name, port, cafile in (("straight at gunicorn", deployment.app.port, None),
                               ("public port (frp, nginx)", deployment.tunnel.port, deployment.certs / "cert.pem")):
        held = [slow_client(port, f"127.0.9.{n % 250 + 1}" if cafile else "127.0.0.1", cafile)
                for n in range(clients)]
        time.sleep(1)
        waited = [timed_health(port, "127.0.10.1", cafile, timeout=15) for _ in range(3)]
        result[name] = {"slow_clients": clients,
                        "healthz_s": [round(w, 3) if w is not None else "no answer in 15 s" for w in waited]}
        for conn in held:
            conn.close()
        time.sleep(2)
    return result


def history(deployment: Deployment, requests_total: int) -> dict:
    """`requests_total` /v1 requests with ~2 MB of history, then as many just under the text cap, while a
    person opens their conversation."""
    person = deployment.visitor("127.0.11.1")
    cid = person.post(deployment.public + "/api/conversations", json={}, timeout=30).json()["id"]
    sent = person.post(f"{deployment.public}/api/conversations/{cid}/messages",
                       json={"content": "hello", "max_tokens": 2}, timeout=60)
    assert "event: done" in sent.text, sent.text[:300]
    sender = session_from("127.0.11.2", deployment.certs / "cert.pem")
    out = {}
    for name, chars in (("2 MB of history", 1_900_000), ("just under WEBBOT_MAX_REQUEST_CHARS", 190_000)):
        turn = "lorem ipsum dolor sit amet " * (chars // 2 // 27 // 10)
        messages = [{"role": r, "content": turn} for _ in range(10) for r in ("user", "assistant")]
        body = {"model": "x", "max_tokens": 1, "messages": messages + [{"role": "user", "content": "and?"}]}
        statuses, opens, stop = [], [], threading.Event()
        watcher = threading.Thread(target=keep_opening, args=(person, f"{deployment.public}/api/conversations/{cid}",
                                                              opens, stop))
        watcher.start()
        for _ in range(requests_total):
            statuses.append(sender.post(deployment.public + "/v1/chat/completions", json=body, timeout=120).status_code)
        stop.set()
        watcher.join()
        out[name] = {"requests": requests_total, "body_kb": len(json.dumps(body)) // 1024,
                     "answers": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                     "page_open_median_s": round(statistics.median(opens), 3),
                     "page_open_max_s": round(max(opens), 3)}
    return out


def keep_opening(person, url: str, times: list, stop: threading.Event) -> None:
    """Open `url` again and again until `stop`, noting how long each took."""
    while not stop.is_set():
        started = time.monotonic()
        person.get(url, timeout=60)
        times.append(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("pin", "sessions", "keys", "slow", "history"), action="append")
    parser.add_argument("--visitors", type=int, default=5000)
    parser.add_argument("--guesses", type=int, default=2001)
    parser.add_argument("--slow-clients", type=int, default=200)
    parser.add_argument("--big-requests", type=int, default=17)
    args = parser.parse_args()
    chosen = args.only or ["pin", "sessions", "keys", "slow", "history"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = make_cert(root / "certs")
        if {"pin", "sessions", "slow", "history"} & set(chosen):
            deployment = Deployment(root / "open", certs, WEBBOT_RATE_MESSAGES="off")
            try:
                for name in ("pin", "sessions", "slow", "history"):
                    if name in chosen:
                        print(f"{name} ...", flush=True)
                        results[name] = {"pin": lambda: pin(deployment),
                                         "sessions": lambda: sessions(deployment, root / "open", args.visitors),
                                         "slow": lambda: slow(deployment, args.slow_clients),
                                         "history": lambda: history(deployment, args.big_requests)}[name]()
            finally:
                deployment.stop()
        if "keys" in chosen:
            print("keys ...", flush=True)
            deployment = Deployment(root / "password", certs, WEBBOT_AUTH="password",
                                    WEBBOT_PASSWORD="household-pass")
            try:
                results["keys"] = keys(deployment, args.guesses)
            finally:
                deployment.stop()
    print(json.dumps(results, indent=2))
    save_report("attacks", {"setup": "gunicorn behind nginx behind the frp stand-in, tiny random Llama", **results})


if __name__ == "__main__":
    main()
