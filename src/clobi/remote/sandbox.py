"""`RemoteSandbox`: the sandbox store contract over a Clobi server.

Inputs go up with `PUT /inputs` and come down (for agents) with `GET /inputs/<sha256>`; an
agent's outputs go up with `PUT /agents/<agent>/attempts/<id>/output`. Users read outputs
through keys that `RemoteStore.output_ref` hands out (`jobs/<job>/attempts/<attempt>/output`):
the server serves them whether it keeps them inline in its store or in its own sandbox store.
Deleting outputs is the server's business when jobs are removed: `delete_output` does nothing.
"""

from __future__ import annotations

import re
from typing import BinaryIO

from clobi.errors import NotFound, SandboxError, StoreUnavailable
from clobi.remote.http import Connection
from clobi.remote.streams import HashingUpload, download
from clobi.sandbox.base import SandboxStore, StoredBlob

_OUTPUT_KEY = re.compile(r"jobs/(\d+)/attempts/(\d+)/output")
_SHA256 = re.compile(r"[0-9a-f]{64}")
UPLOAD_TIMEOUT_S = 3600.0


def output_key(job_id: int, attempt_id: int) -> str:
    """The key under which a remote session's users read an attempt's output."""
    return f"jobs/{job_id}/attempts/{attempt_id}/output"


class RemoteSandbox(SandboxStore):
    """Sandbox store engine for `http(s)://` sessions."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def close(self) -> None:
        self.connection.close()

    def put_input(self, src: BinaryIO) -> StoredBlob:
        """Stream an input archive to the server; check its sha256 against what was sent."""
        return self._upload("/inputs", src, "input archive")

    def has_input(self, sha256: str) -> bool:
        """True when the server holds the input archive."""
        request = self.connection.request("HEAD", f"/inputs/{_sha(sha256)}")
        try:
            self.connection.send(request, idempotent=True).close()
        except NotFound:
            return False
        return True

    def open_input(self, sha256: str) -> BinaryIO:
        """Stream an input archive down (agents); verified against its sha256."""
        request = self.connection.request("GET", f"/inputs/{_sha(sha256)}")
        response = self.connection.send(request, idempotent=True, stream=True)
        return download(response, f"input archive {sha256}")

    def put_output(self, attempt_id: int, src: BinaryIO) -> StoredBlob:
        """Stream the output archive of one of this agent's running attempts to the server."""
        agent_id = self.connection.credentials.agent_id
        if agent_id is None:
            raise SandboxError("only a joined agent stores outputs")
        path = f"/agents/{agent_id}/attempts/{int(attempt_id)}/output"
        return self._upload(path, src, "output archive")

    def open_output(self, key: str) -> BinaryIO:
        """Stream an attempt's output down by the key `RemoteStore.output_ref` gave."""
        match = _OUTPUT_KEY.fullmatch(key)
        if match is None:
            raise NotFound(f"no such output archive {key!r} on {self.connection.url}")
        job_id, attempt_id = match.groups()
        request = self.connection.request(
            "GET", f"/jobs/{job_id}/output", params={"attempt_id": attempt_id}
        )
        response = self.connection.send(request, idempotent=True, stream=True)
        return download(response, f"output of job {job_id} attempt {attempt_id}")

    def delete_output(self, key: str) -> None:
        """Nothing to do: the server deletes outputs when it removes their jobs."""

    def _upload(self, path: str, src: BinaryIO, what: str) -> StoredBlob:
        start = _position(src)
        for tries_left in range(self.connection.retries, -1, -1):
            body = HashingUpload(src)
            request = self.connection.request(
                "PUT",
                path,
                content=iter(body),
                headers={"Content-Type": "application/x-tar"},
                timeout_s=UPLOAD_TIMEOUT_S,
            )
            try:
                answer = self.connection.send(request, idempotent=False).json()
            except StoreUnavailable:
                if start is None or tries_left == 0:
                    raise
                src.seek(start)  # a seekable source can be sent again from its start
                continue
            blob = StoredBlob(str(answer["key"]), int(answer["size"]), str(answer["sha256"]))
            body.check(what, blob.size, blob.sha256)
            return blob
        raise AssertionError("unreachable")


def _position(src: BinaryIO) -> int | None:
    try:
        return src.tell() if src.seekable() else None
    except (OSError, ValueError):
        return None


def _sha(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise SandboxError(f"not a sha256 digest: {sha256!r}")
    return sha256
