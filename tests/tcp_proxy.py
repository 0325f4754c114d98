"""A loopback TCP proxy for tests that need a connection to drop mid-reply, as a flaky network drops it:
`drop()` resets every open connection; new ones go through as before."""

import socket
import struct
import threading

LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends a reset instead of an orderly end


class Proxy:
    """Forwards 127.0.0.1:<port> to `target_port`."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.generation = 0  # drop() moves it on; connections from an older generation reset themselves
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for end in (client, upstream):
                end.settimeout(0.05)
            born = self.generation
            threading.Thread(target=self._pump, args=(client, upstream, born), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, born), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, born: int) -> None:
        try:
            while self.generation == born:
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):  # dropped (or broken): reset both sides
            try:
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                end.close()
            except OSError:
                pass

    def drop(self) -> None:
        """Reset every open connection, as a network that went away does."""
        self.generation += 1

    def close(self) -> None:
        self.listener.close()
        self.drop()
