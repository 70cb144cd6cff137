"""Access tokens in the SQL store: only ids and sha256 of secrets are kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clobi.model.auth import Role, TokenRecord
from clobi.store.sqlcore import SqlCore


class SqlTokens(SqlCore):
    """Creating, finding, revoking and spending tokens."""

    def create_token(self, record: TokenRecord, secret_sha256: str) -> None:
        with self._tx() as cur:
            cur.execute(
                self.q["insert_token"],
                {
                    "id": record.id,
                    "secret_sha256": secret_sha256,
                    "role": record.role.value,
                    "name": record.name,
                    "pool": record.pool,
                    "now": record.created_at,
                    "expires_at": record.expires_at,
                },
            )
            self._event(
                cur,
                record.created_at,
                "token_created",
                detail=f"{record.role.value} token {record.id} for {record.name}",
            )

    def get_token(self, token_id: str) -> tuple[TokenRecord, str] | None:
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_token"], {"id": token_id})
            row = cur.fetchone()
        return None if row is None else (_token(row), str(row[8]))

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_tokens"])
            return [_token(r) for r in cur.fetchall()]

    def revoke_token(self, token_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(self.q["revoke_token"], {"id": token_id})
            done = cur.rowcount == 1
            if done:
                self._event(cur, self._now(), "token_revoked", detail=f"token {token_id}")
            return done

    def use_bootstrap(self, token_id: str) -> bool:
        with self._tx() as cur:
            now = self._now()
            cur.execute(self.q["use_bootstrap"], {"id": token_id, "now": now})
            return cur.rowcount == 1


def _token(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        role=Role(row[1]),
        name=row[2],
        pool=row[3],
        created_at=row[4],
        expires_at=row[5],
        revoked=bool(row[6]),
        used_at=row[7],
    )
