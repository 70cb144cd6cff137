from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.session import Session
from tests.acceptance.harness import Agents, fast_session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return fast_session(tmp_path / "session")


@pytest.fixture
def agents(session: Session, tmp_path: Path) -> Iterator[Agents]:
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = Agents(session, logs)
    yield pool
    pool.stop_all()
