"""Doorbells for agents of one machine: submitting rings them, so idle agents wake at once.

One unix datagram socket per waiting listener, in the abstract namespace (no 108-byte path
limit), found through a marker file per bell in a folder next to the database.

Two kinds of listener. A *relay* (a server handing wake-ups on to its long-polls) hears every
ring. An *agent* is one of many: waking every idle agent for one new job costs as many claims,
all but one finding nothing (and each taking the write lock). So a ring wakes one agent whose
marker says it wants work (`<name>.idle`: its last claim got less than it asked for, or it is
claiming right now), not the busy ones (`<name>.busy`: their last claim was full, so they claim
again as soon as they have room, rung or not), or a busy one when none is idle. The woken agent
passes the ring on when it takes a full batch (more may be queued) or nothing (the work did not
fit it): each ring carries a hop count and is passed on at most once per agent. An agent that
died is skipped (its socket refuses the datagram, its marker is removed); one that hangs
swallows a ring, which the others' idle polls make good within a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
from pathlib import Path

_IDLE, _BUSY = ".idle", ".busy"


class Bell:
    """One listener's doorbell: readable when someone rang."""

    def __init__(self, sock: socket.socket, folder: Path, name: str, agent: bool) -> None:
        self._sock, self._folder, self.name = sock, folder, name
        self._suffix = _IDLE if agent else ""
        self.woken_hops: int | None = None  # hops of the rings taken since `take_ring`

    @property
    def marker(self) -> Path:
        return self._folder / (self.name + self._suffix)

    def fileno(self) -> int:
        return self._sock.fileno()

    def rang(self) -> bool:
        rang = False
        with contextlib.suppress(BlockingIOError, OSError):
            while data := self._sock.recv(64):
                rang = True
                hops = _hops_of(data)
                self.woken_hops = hops if self.woken_hops is None else min(hops, self.woken_hops)
        return rang

    def take_ring(self) -> int | None:
        """The hop count of the ring that woke this agent since the last call (None: none)."""
        hops, self.woken_hops = self.woken_hops, None
        return hops

    def want(self, idle: bool) -> None:
        """An agent's marker: rings may come here (`idle`), or need not (busy)."""
        suffix = _IDLE if idle else _BUSY
        if not self._suffix or suffix == self._suffix:
            return
        old = self.marker
        self._suffix = suffix
        with contextlib.suppress(OSError):
            old.rename(self.marker)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            self.marker.unlink()


class Bells:
    """All doorbells of one store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._prefix = "clobi." + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]

    def listen(self, name: str, agent: bool = False) -> Bell:
        """A new bell called `name` (unique per store); an agent's starts out idle."""
        self.folder.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._address(name))
        sock.setblocking(False)
        bell = Bell(sock, self.folder, name, agent)
        bell.marker.touch()
        return bell

    def ring(self, hops: int = 0, skip: str = "") -> None:
        """Wake every relay and one idle agent (not `skip`); forget bells whose listener is
        gone. `hops`: how often this ring was passed on already; it stops once it has been
        passed on as often as there are agents."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return
        idle: list[str] = []
        busy: list[str] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            message = b"!" + str(hops).encode()
            for entry in entries:
                if entry.endswith(_IDLE) or entry.endswith(_BUSY):
                    if entry[: -len(_IDLE)] != skip:
                        (idle if entry.endswith(_IDLE) else busy).append(entry)
                else:
                    self._send(sock, entry, entry, message)
            if hops > len(idle) + len(busy):
                return
            # Idle agents first, in random order (spreading sporadic work over them); a busy
            # one if none is idle: it may be between two markers, or about to have room.
            random.shuffle(idle)
            random.shuffle(busy)
            for entry in idle + busy:
                if self._send(sock, entry[: -len(_IDLE)], entry, message):
                    return

    def _send(self, sock: socket.socket, name: str, marker: str, message: bytes) -> bool:
        """Ring `name`; False if nobody listens there any more (its marker is removed)."""
        try:
            sock.sendto(message, self._address(name))
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                (self.folder / marker).unlink()
            return False
        except OSError:
            pass  # a full queue already means "wake up"
        return True

    def _address(self, name: str) -> str:
        return f"\0{self._prefix}.{name}"


def _hops_of(data: bytes) -> int:
    try:
        return int(data[1:] or b"0")
    except ValueError:
        return 0
