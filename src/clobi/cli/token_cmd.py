"""`clobi token create|revoke|ls` (access tokens of a session) and `clobi login URL`.

A token is printed once, on stdout only, when it is created. `clobi login` reads a token from
stdin or a prompt (never from the command line, where other users could see it), checks it
with the server, and saves it for that server URL with 0600 permissions.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError
from clobi.model.auth import Role

DEFAULT_BOOTSTRAP_EXPIRY = "1h"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="create, revoke and list access tokens")
    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    create = sub.add_parser(
        "create",
        help="create a token and print it (once)",
        description="Create a token. It is printed on stdout, only this once. Agent tokens are "
        "not made here: an agent gets one when it joins with a bootstrap token.",
    )
    output.add_session(create)
    create.add_argument(
        "--role",
        required=True,
        choices=[r.value for r in Role if r is not Role.AGENT],
        help="admin: everything; user: own jobs; bootstrap: one agent joins with it",
    )
    create.add_argument("--name", help="user tokens: the user (default: you)")
    create.add_argument(
        "--pool", default="", help="bootstrap tokens: the agent's pool (default: default)"
    )
    create.add_argument(
        "--expires",
        metavar="DURATION",
        help=f"e.g. 1h, 30d (default: never; bootstrap tokens {DEFAULT_BOOTSTRAP_EXPIRY})",
    )
    create.set_defaults(func=create_cmd)

    revoke = sub.add_parser("revoke", help="revoke a token by its id")
    output.add_session(revoke)
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(func=revoke_cmd)

    ls = sub.add_parser("ls", help="list tokens (never their secrets)")
    output.add_session(ls)
    output.add_json(ls)
    ls.set_defaults(func=ls_cmd)

    login = subparsers.add_parser(
        "login",
        help="save a token for a Clobi server",
        description="Read a token from stdin (or a prompt), check it with the server at URL and "
        "save it for later commands with --session URL.",
    )
    login.add_argument("url", metavar="URL")
    login.set_defaults(func=login_cmd)


def _open_store(args: argparse.Namespace) -> Any:
    from clobi.session import find_session

    return find_session(getattr(args, "session", None)).open_store()


def create_cmd(args: argparse.Namespace) -> int:
    from clobi.auth import issue

    role = Role(args.role)
    expires_s = _expires_s(args.expires, role)
    name = args.name or _default_name(role, args.pool)
    pool = args.pool or ("default" if role is Role.BOOTSTRAP else "")
    store = _open_store(args)
    try:
        text = issue(store, role, name, pool, expires_s)
    finally:
        store.close()
    print(text, flush=True)
    scope = f" in pool {pool}" if pool else ""
    until = f", expires in {args.expires or DEFAULT_BOOTSTRAP_EXPIRY}" if expires_s else ""
    print(f"created {role} token for {name}{scope}{until}; it is shown only now", file=sys.stderr)
    return ExitCode.OK


def _expires_s(text: str | None, role: Role) -> float | None:
    from clobi.model.units import parse_duration_s

    if text is None and role is Role.BOOTSTRAP:
        text = DEFAULT_BOOTSTRAP_EXPIRY
    if text is None:
        return None
    try:
        seconds = parse_duration_s(text)
    except ValueError as exc:
        raise UsageError(f"--expires: {text!r}: {exc}") from None
    if seconds <= 0:
        raise UsageError("--expires: must be longer than 0s")
    return seconds


def _default_name(role: Role, pool: str) -> str:
    if role is Role.USER:
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return str(os.getuid())
    return f"{role.value}-{pool}" if pool else role.value


def revoke_cmd(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        revoked = store.revoke_token(args.token_id)
    finally:
        store.close()
    if not revoked:
        from clobi.errors import NotFound

        raise NotFound(f"token {args.token_id}: no such token, or already revoked")
    print(f"revoked token {args.token_id}", file=sys.stderr)
    return ExitCode.OK


def ls_cmd(args: argparse.Namespace) -> int:
    from clobi.auth import token_state

    store = _open_store(args)
    try:
        tokens = store.list_tokens()
    finally:
        store.close()
    if args.json:
        output.print_json([{**output.plain(t), "state": token_state(t)} for t in tokens])
    elif not tokens:
        print("no tokens (create one with `clobi token create --role …`)", file=sys.stderr)
    else:
        output.print_table(
            ("id", "role", "name", "pool", "state", "created", "expires"),
            (
                (
                    t.id,
                    t.role.value,
                    t.name,
                    t.pool,
                    token_state(t),
                    output.fmt_time(t.created_at),
                    output.fmt_time(t.expires_at),
                )
                for t in tokens
            ),
        )
    return ExitCode.OK


def login_cmd(args: argparse.Namespace) -> int:
    from clobi.remote.connect import server_info
    from clobi.remote.credentials import save_token
    from clobi.remote.http import Credentials, normalize_url

    url = normalize_url(args.url)
    token = _read_token(url)
    info = server_info(url, Credentials(token))
    path = save_token(url, token)
    who = info.get("principal", {})
    print(
        f"logged in to {url} as {who.get('role')} {who.get('name')!r}; token saved in {path}",
        file=sys.stderr,
    )
    return ExitCode.OK


def _read_token(url: str) -> str:
    prompt = sys.stdin.isatty()
    token = (getpass.getpass(f"token for {url}: ") if prompt else sys.stdin.readline()).strip()
    if not token:
        raise UsageError("login: no token given (pipe it to stdin or type it at the prompt)")
    return token
