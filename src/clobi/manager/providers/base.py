"""The provider contract: launch machines that run a Clobi agent, say what became of them,
terminate them. Every call is a batch; ids are the provider's own strings.

A provider never decides anything (the policy does) and never holds the session's secrets:
a launched machine gets only its single-use bootstrap token and where to join.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from clobi.manager.plan import ProviderState
from clobi.model.pools import PoolSpec


@dataclass(frozen=True)
class JoinInfo:
    """How a new machine's agent reaches the session."""

    url: str | None  # the server to join (`clobi agent --join URL`); None: embedded session
    session_root: Path  # the session directory (embedded sessions; local agents)
    python: str  # the interpreter that runs `-m clobi` on this machine (local providers)
    session_id: str = ""  # names this session's machines (tags), so no other is ever touched


@dataclass(frozen=True)
class LaunchRequest:
    """One machine to start: our instance id and the single-use token its agent joins with.
    The token must reach the machine only (user-data, a 0600 file, the agent's stdin or env):
    never argv, logs, tags or error messages."""

    instance_id: int
    bootstrap: str


@dataclass(frozen=True)
class Launched:
    """A launch the provider accepted (`provider_id`) or refused (`error`, e.g. quota)."""

    instance_id: int
    provider_id: str = ""
    error: str = ""


class Provider(ABC):
    """Starts and stops the machines of one pool."""

    name: ClassVar[str]
    settings_keys: ClassVar[frozenset[str]] = frozenset()  # the pool keys it reads

    def __init__(self, pool: PoolSpec, join: JoinInfo) -> None:
        self.pool = pool
        self.join = join

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> list[str]:
        """Problems with the pool's provider settings, each as "key: message"."""
        unknown = sorted(set(settings) - cls.settings_keys)
        known = ", ".join(sorted(cls.settings_keys)) or "none"
        return [f"{k}: unknown key for provider {cls.name} (its keys: {known})" for k in unknown]

    @abstractmethod
    def launch(self, requests: Sequence[LaunchRequest]) -> list[Launched]:
        """Start one machine per request, each running an agent that joins with its
        bootstrap token; one answer per request, in order. Must not raise for one refused
        machine (answer its `error`); raises `ProviderError` when the provider is unreachable."""

    @abstractmethod
    def describe(self, provider_ids: Sequence[str]) -> dict[str, ProviderState]:
        """The state of each given machine; ids the provider does not know are `GONE`."""

    @abstractmethod
    def terminate(self, provider_ids: Sequence[str]) -> None:
        """Stop the given machines now (their agents die with them). Ids already gone are
        fine. Only machines this provider launched for this pool are ever touched."""

    def close(self) -> None:  # noqa: B027 - optional hook: most providers hold nothing
        """Release connections and helpers."""
