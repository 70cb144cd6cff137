"""Doorbells for agents of one machine: submitting rings them, so idle agents wake at once.

One unix datagram socket per waiting agent, in the abstract namespace (no 108-byte path
limit), found through a marker file per bell in a folder next to the database.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # socket and hashlib load when a bell is first used: a listing needs none
    import socket


class Bell:
    """One agent's doorbell: readable when someone rang."""

    def __init__(self, sock: socket.socket, marker: Path) -> None:
        self._sock, self._marker = sock, marker

    def fileno(self) -> int:
        return self._sock.fileno()

    def rang(self) -> bool:
        rang = False
        with contextlib.suppress(BlockingIOError, OSError):
            while self._sock.recv(64):
                rang = True
        return rang

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            self._marker.unlink()


class Bells:
    """All doorbells of one store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._prefix_text: str | None = None

    @property
    def _prefix(self) -> str:
        if self._prefix_text is None:
            import hashlib

            digest = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:16]
            self._prefix_text = "clobi." + digest
        return self._prefix_text

    def listen(self, name: str) -> Bell:
        """A new bell called `name` (unique per store)."""
        import socket

        self.folder.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._address(name))
        sock.setblocking(False)
        marker = self.folder / name
        marker.touch()
        return Bell(sock, marker)

    def ring(self) -> None:
        """Wake every listener; forget bells whose listener is gone."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for name in names:
                try:
                    sock.sendto(b"!", self._address(name))
                except ConnectionRefusedError:
                    with contextlib.suppress(OSError):
                        (self.folder / name).unlink()
                except OSError:
                    pass  # a full queue already means "wake up"

    def _address(self, name: str) -> str:
        return f"\0{self._prefix}.{name}"
