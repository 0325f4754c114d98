"""The public side of the documented deployment, for tests and benchmarks: Debian's nginx running
deploy/nginx.conf, and a stand-in for the frp tunnel in front of it.

The stand-in is a loopback TCP forwarder that, like frpc with `transport.proxyProtocolVersion =
"v2"`, starts each forwarded connection with a PROXY protocol v2 header naming the real client's
address and port. frp itself is not here to run (no Debian or PyPI package carries a Linux build),
so this plays frps + frpc: what a visitor reaches on the public port arrives at nginx as frpc would
deliver it. Clients can come from many addresses: any 127.x.y.z source works on Linux's loopback.
"""

import asyncio
import http.client
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import requests
import requests.adapters

from harness.server_process import ROOT, free_port

NGINX = "/usr/sbin/nginx"

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The PROXY protocol v2 header for a TCP over IPv4 connection (version 2, command PROXY)."""
    addresses = (socket.inet_aton(source[0]) + socket.inet_aton(destination[0])
                 + struct.pack("!HH", source[1], destination[1]))
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class Tunnel:
    """Listens on a free loopback port (the public port) and forwards to `target_port`, PROXY header first."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frp-standin", daemon=True)

    def start(self) -> "Tunnel":
        self._thread.start()
        assert self._ready.wait(10), "the tunnel did not start"
        return self

    def stop(self) -> None:
        """Close the public port and every forwarded connection."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._forward, "127.0.0.1", 0, backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _forward(self, client_reader, client_writer) -> None:
        source = client_writer.get_extra_info("peername")[:2]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        upstream_writer.write(proxy_v2_header(source, ("127.0.0.1", self.port)))
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer),
                             return_exceptions=True)


async def _pipe(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass  # the other side closed, or the tunnel is stopping
    finally:
        try:
            writer.close()
        except Exception:  # the other side may be gone already
            pass


def nginx_config(tmp: Path, listen_port: int, app_port: int, cert_dir: Path, frp_port: int | None = None) -> Path:
    """deploy/nginx.conf with its CHANGE lines pointed at this test, inside a minimal main config with
    Debian's 768 connections per worker."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = site.split("# Send plain HTTP to HTTPS")[0]  # the port-80 redirect needs root's port
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;").replace(
        "listen [::]:443 ssl;", "")
    site = site.replace("listen 127.0.0.1:8443 ssl proxy_protocol;",
                        f"listen 127.0.0.1:{frp_port} ssl proxy_protocol;" if frp_port else "")
    site = site.replace("/opt/webbot/certs/cert.pem", str(cert_dir / "cert.pem"))
    site = site.replace("/opt/webbot/certs/key.pem", str(cert_dir / "key.pem"))
    site = site.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{app_port}")
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in kinds)
    main = (f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
            f"events {{ worker_connections 768; }}\n"
            f"http {{\n    access_log {tmp}/access.log;\n{temp}    include {tmp}/site.conf;\n}}\n")
    if os.geteuid() == 0:
        main = "user root;\n" + main
    (tmp / "site.conf").write_text(site)
    (tmp / "nginx.conf").write_text(main)
    return tmp / "nginx.conf"


class Nginx:
    """Debian's nginx running deploy/nginx.conf (see nginx_config) until stopped."""

    def __init__(self, tmp: Path, app_port: int, cert_dir: Path, frp: bool = False):
        self.port, self.frp_port = free_port(), free_port() if frp else None
        tmp.mkdir(exist_ok=True)
        config = nginx_config(tmp, self.port, app_port, cert_dir, self.frp_port)
        self.process = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        self.url = f"https://127.0.0.1:{self.port}"

    def wait(self, session) -> "Nginx":
        deadline = time.monotonic() + 20
        while True:
            try:
                if session.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and self.process.poll() is None, self.process.stderr.read()
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def slow_client(port: int, address: str, cafile: Path | None = None) -> socket.socket:
    """A client that connects from `address` (TLS when `cafile` is given) and then sends its request headers
    a line at a time, slowly: send it more lines with `sendall`, never the blank line that ends them."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))
    conn = ssl.create_default_context(cafile=str(cafile)).wrap_socket(raw, server_hostname="127.0.0.1") \
        if cafile else raw
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return conn


def timed_health(port: int, address: str, cafile: Path | None = None, timeout: float = 30) -> float | None:
    """Seconds for a 200 from GET /healthz through `port` from `address`; None when none came within `timeout`."""
    started = time.monotonic()
    if cafile:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(cafile)),
                                           timeout=timeout, source_address=(address, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(address, 0))
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except (TimeoutError, OSError):
        return None
    finally:
        conn.close()
    return time.monotonic() - started if status == 200 else None


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """requests from a chosen local address (any 127.x.y.z works on Linux's loopback)."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str, cafile: Path) -> requests.Session:
    """A requests session that connects from `address` and trusts only `cafile`."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(cafile)
    session.mount("https://", SourceAddressAdapter(address))
    return session

