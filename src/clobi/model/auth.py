"""Tokens, roles and who may do what. Pure: no I/O, no secrets handling beyond comparisons.

A token is shown to its holder once as `clobi_<id>_<secret>`; the store keeps only the id and
sha256 of the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # everything
    USER = "user"  # submits; sees and acts on its own jobs only
    AGENT = "agent"  # claims and reports for its pool only
    BOOTSTRAP = "bootstrap"  # single use, expiring: exchanged for an agent token on join


@dataclass(frozen=True)
class TokenRecord:
    """A token as stored (never with its secret)."""

    id: str
    role: Role
    name: str  # the user a user token acts as; the agent name for agent tokens
    pool: str = ""  # agent and bootstrap tokens: the pool they belong to
    created_at: float = 0.0
    expires_at: float | None = None
    revoked: bool = False
    used_at: float | None = None  # bootstrap tokens: when they were exchanged

    def usable(self, now: float) -> bool:
        """Not revoked, not expired, and (for bootstrap tokens) not used yet."""
        if self.revoked or (self.expires_at is not None and now >= self.expires_at):
            return False
        return not (self.role is Role.BOOTSTRAP and self.used_at is not None)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as established from a valid token."""

    token_id: str
    role: Role
    name: str
    pool: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_submit(self) -> bool:
        return self.role in (Role.ADMIN, Role.USER)

    def may_see_job_of(self, owner: str) -> bool:
        """Admins see every job; users their own; agents and bootstrap tokens none."""
        return self.is_admin or (self.role is Role.USER and owner == self.name)

    def owner_filter(self) -> str | None:
        """The owner a job listing is limited to (None: all jobs)."""
        return None if self.is_admin else self.name


INSTANCE_TOKEN_PREFIX = "instance-"


def instance_token_name(instance_id: int) -> str:
    """The name of the bootstrap token the manager mints for one instance."""
    return f"{INSTANCE_TOKEN_PREFIX}{instance_id}"


def instance_of_token(name: str) -> int | None:
    """The instance a bootstrap token was minted for (by its name), if any."""
    rest = name.removeprefix(INSTANCE_TOKEN_PREFIX)
    return int(rest) if rest != name and rest.isdigit() and len(rest) < 19 else None
