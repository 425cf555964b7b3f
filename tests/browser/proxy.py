"""A TCP forwarder between the browser and a server, which a test can cut, refuse through, and restore.

The page is loaded through the proxy, so its WebSocket goes through it too (the client connects to
the origin it was served from). ``cut()`` drops every open connection at once (the browser sees a
dropped socket, code 1006, as on a real network failure) and then turns every new connection away,
recording when each came; ``refuse_joins()`` answers WebSocket handshakes with the server's 403
while other requests (``/healthz``) still reach the server.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
DENIAL = json.dumps({"type": "error", "code": "forbidden", "detail": "name is not allowed here"}).encode()
WEBSOCKET_REQUEST = re.compile(r"GET \S*/ws(?:/|\?| )")
"""The request line of a WebSocket handshake: ``/ws?...`` (every room, v1.1) or ``/ws/{room}`` (v1)."""


@dataclass(frozen=True)
class TurnedAway:
    """A connection the proxy did not forward: when it came (monotonic seconds) and its request line."""

    at: float
    request: str

    @property
    def is_websocket(self) -> bool:
        return WEBSOCKET_REQUEST.match(self.request) is not None


class Proxy:
    """Forwards 127.0.0.1:port to the target port, until told otherwise."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self.turned_away: list[TurnedAway] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # --- what the test does --------------------------------------------------------------------------

    def cut(self) -> None:
        """Drop every forwarded connection and turn new ones away until ``restore()``."""
        with self._lock:
            self.mode = "down"
            doomed = list(self._open)
            self._open.clear()
        for sock in doomed:
            _shut(sock)

    def refuse_joins(self) -> None:
        """Answer WebSocket handshakes with 403 and the server's JSON body; forward everything else."""
        with self._lock:
            self.mode = "refuse"

    def restore(self) -> None:
        with self._lock:
            self.mode = "forward"

    def wait_turned_away(self, count: int, timeout: float = 15.0) -> list[TurnedAway]:
        """Block until ``count`` WebSocket handshakes were turned away; raise after ``timeout`` seconds."""

        def enough() -> bool:
            return len(self.websocket_attempts()) >= count

        with self._lock:
            if not self._lock.wait_for(enough, timeout):
                raise TimeoutError(f"{len(self.websocket_attempts())} of {count} handshakes in {timeout} s")
            return self.websocket_attempts()

    def websocket_attempts(self) -> list[TurnedAway]:
        with self._lock:
            return [item for item in self.turned_away if item.is_websocket]

    def close(self) -> None:
        self._closed = True
        _shut(self._listener)
        self._listener.close()
        self.cut()
        self._thread.join(5)

    # --- the forwarding ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
        if mode == "forward":
            self._forward(client, b"")
            return
        head = _read_head(client)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        websocket = WEBSOCKET_REQUEST.match(line) is not None
        if mode == "refuse" and not websocket:
            self._forward(client, head)
            return
        with self._lock:
            self.turned_away.append(TurnedAway(time.monotonic(), line))
            self._lock.notify_all()
        if mode == "refuse":
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(DENIAL)}\r\nconnection: close\r\n\r\n".encode()
                + DENIAL
            )
            client.close()
        else:
            _reset(client)

    def _forward(self, client: socket.socket, head: bytes) -> None:
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self.mode == "down":
                _reset(client)
                upstream.close()
                return
            self._open.update((client, upstream))
        if head:
            upstream.sendall(head)
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction until either side ends; then end both (the other pump then ends too)."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _shut(source)
            _shut(sink)


def _read_head(client: socket.socket) -> bytes:
    """The request's head (up to the blank line), or whatever came within two seconds."""
    client.settimeout(2)
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:
        pass
    client.settimeout(None)
    return head


def _shut(sock: socket.socket) -> None:
    """End both directions: a blocked ``recv`` on it returns, and the peer sees the connection end."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped network path looks to the other end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
