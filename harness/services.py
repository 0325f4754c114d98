"""Real Redis and PostgreSQL servers for tests, started from Debian's packages on loopback ports.

Each runs in a private directory, can be stopped and started again on the same port (to
test outages), and is killed at the end. PostgreSQL refuses to run as root, so when the
tests run as root (as in CI) it runs as the `postgres` user the Debian package made.
"""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.server_process import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout} s")


class RedisServer:
    """redis-server on a free port."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        """Start (or start again); an append-only file in `directory` keeps the data across restarts, as a
        production Redis would."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, "redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PostgresServer:
    """A throw-away PostgreSQL cluster (trust auth on loopback) in a temporary directory."""

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="webbot-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:  # the cluster's files must belong to the user that runs it
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.process: subprocess.Popen | None = None
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "webbot", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])

    def _command(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv

    def _run(self, argv: list[str]) -> None:
        subprocess.run(self._command(argv), check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://webbot@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        self.process = subprocess.Popen(self._command(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, "postgres")
        deadline = time.monotonic() + 30
        while not self._accepts():  # listening comes a moment before accepting queries
            if time.monotonic() > deadline:
                raise TimeoutError("postgres did not accept connections")
            time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # runuser stays the parent: signal the postmaster through its pid file; SIGINT is a fast
            # shutdown (SIGTERM would wait for every client to leave).
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            self.process.wait(30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
