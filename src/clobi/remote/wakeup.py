"""Wake-ups for a remote agent: a thread long-polls the server's `wait` route and makes a
socket readable when work may have appeared, so the agent's loop sleeps on it like on the
embedded session's doorbell (a waiting agent costs no CPU; a new job reaches it at once).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from clobi.errors import Unauthorized
from clobi.remote.http import Connection

log = logging.getLogger("clobi.remote")
WAIT_S = 25.0
ERROR_PAUSE_S = 2.0


class RemoteWakeup:
    """A `Wakeup` fed by long-polls of `/agents/<id>/wait` on its own connection."""

    def __init__(self, connection: Connection, agent_id: int) -> None:
        self._connection = connection
        self._agent_id = agent_id
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="clobi-wakeup", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._reader.fileno()

    def rang(self) -> bool:
        rang = False
        with contextlib.suppress(BlockingIOError, OSError):
            while self._reader.recv(64):
                rang = True
        return rang

    def close(self) -> None:
        self._stop.set()
        self._connection.close()  # breaks off a long-poll in flight
        self._reader.close()
        self._writer.close()

    def _poll(self) -> None:
        path = f"/agents/{self._agent_id}/wait"
        while not self._stop.is_set():
            try:
                answer = self._connection.call(
                    "POST", path, params={"wait_s": WAIT_S}, timeout_s=WAIT_S + 10
                )
            except Unauthorized:
                return  # the agent has left (its token is revoked)
            except Exception as exc:  # a background thread must not die loudly
                if self._stop.is_set():
                    return  # closed under a long-poll in flight
                log.debug("wake-up poll failed: %s", exc)
                self._stop.wait(ERROR_PAUSE_S)
                continue
            if answer.get("rang"):
                with contextlib.suppress(OSError):
                    self._writer.send(b"!")
