"""Event outlets as declared in the session's `clobi.toml`, parsed and checked.

```toml
[events.amqp]
url_env = "CLOBI_AMQP_URL"      # the variable holding the broker's URL (the default name)
# url = "amqp://clobi@mq.example.org/%2F"   # or the URL itself (keep passwords in url_env)
exchange = "clobi.events"       # a durable topic exchange, declared when missing
retry_min = "1s"                # backoff while the broker cannot be reached
retry_max = "30s"

[[events.webhooks]]
name = "billing"                # the outlet's name (default: from the URL's host and path)
url = "https://billing.example.org/clobi"
secret_env = "BILLING_WEBHOOK_SECRET"   # the HMAC-SHA256 key, from the environment
events = ["job.succeeded", "job.failed"]  # routing-key patterns (default: every event)
timeout = "10s"
retry_min = "1s"
retry_max = "5m"
```

Without `url` and `url_env`, the broker's URL is `$CLOBI_AMQP_URL`, else RabbitMQ's local
default, `amqp://guest:guest@127.0.0.1:5672/%2F`. A `url_env` that names an unset variable is
an error rather than a silent fall-back. Every problem is listed with its key before one
`ConfigError` is raised. Secrets are read here, once, and never shown.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clobi.errors import ConfigError
from clobi.model.units import parse_duration_s
from clobi.outlets.base import Backoff, check_pattern

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_AMQP_URL_ENV = "CLOBI_AMQP_URL"
DEFAULT_EXCHANGE = "clobi.events"
AMQP_OUTLET = "amqp"
AMQP_BACKOFF = Backoff(1.0, 30.0)  # a broker restarting is back within seconds
WEBHOOK_BACKOFF = Backoff(1.0, 300.0)
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class AmqpConfig:
    """Where the AMQP outlet publishes."""

    url: str = field(repr=False)  # may hold a password
    exchange: str = DEFAULT_EXCHANGE
    backoff: Backoff = AMQP_BACKOFF
    name: str = AMQP_OUTLET


@dataclass(frozen=True)
class WebhookConfig:
    """One web hook: where it POSTs, with which key it signs, which events."""

    name: str
    url: str = field(repr=False)  # its query may hold a token
    secret: bytes = field(repr=False)
    patterns: tuple[str, ...] = ("#",)
    timeout_s: float = 10.0
    backoff: Backoff = WEBHOOK_BACKOFF


@dataclass(frozen=True)
class OutletsConfig:
    """The `[events]` table: the outlets to run (none when it is absent)."""

    amqp: AmqpConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()

    @property
    def names(self) -> list[str]:
        return ([self.amqp.name] if self.amqp else []) + [w.name for w in self.webhooks]


class _Problems(list[str]):
    def add(self, key: str, message: str) -> None:
        self.append(f"{key}: {message}")

    def check(self, key: str, value: object, parse: Callable[[object], Any]) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            self.add(key, str(exc))
            return None


def read_outlets(path: Path, environ: Mapping[str, str]) -> OutletsConfig:
    """The outlets `path` (a clobi.toml) declares; none when it has no `[events]` table."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return OutletsConfig()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([str(exc)], str(path)) from None
    return parse_outlets(data.get("events", {}), environ, str(path))


def parse_outlets(
    table: object, environ: Mapping[str, str], source: str = "clobi.toml"
) -> OutletsConfig:
    """The `[events]` table; raises `ConfigError` listing every problem."""
    problems = _Problems()
    if not isinstance(table, Mapping):
        raise ConfigError(["events: must be a table, e.g. [events.amqp]"], source)
    amqp, hooks = None, []
    for key in table:
        if key not in ("amqp", "webhooks"):
            problems.add(f"events.{key}", "unknown key (known: amqp, webhooks)")
    if "amqp" in table:
        amqp = _amqp(table["amqp"], environ, problems)
    raw_hooks = table.get("webhooks", [])
    if not isinstance(raw_hooks, list):
        problems.add("events.webhooks", "must be an array of tables: [[events.webhooks]]")
        raw_hooks = []
    for i, body in enumerate(raw_hooks):
        hook = _webhook(f"events.webhooks[{i}]", body, environ, problems)
        if hook is not None:
            hooks.append(hook)
    _check_unique([*([amqp.name] if amqp else []), *(h.name for h in hooks)], problems)
    if problems:
        raise ConfigError(list(problems), source)
    return OutletsConfig(amqp, tuple(hooks))


def _amqp(body: object, environ: Mapping[str, str], problems: _Problems) -> AmqpConfig | None:
    where = "events.amqp"
    if not isinstance(body, Mapping):
        problems.add(where, "must be a table")
        return None
    before = len(problems)
    _unknown(where, body, ("url", "url_env", "exchange", "retry_min", "retry_max"), problems)
    url = _url(where, body, environ, problems)
    exchange = body.get("exchange", DEFAULT_EXCHANGE)
    if not isinstance(exchange, str) or not _EXCHANGE.fullmatch(exchange):
        problems.add(f"{where}.exchange", "must be an exchange name, e.g. clobi.events")
    backoff = _backoff(where, body, AMQP_BACKOFF, problems)
    if len(problems) > before or url is None or backoff is None:
        return None
    return AmqpConfig(url=url, exchange=str(exchange), backoff=backoff)


def _url(
    where: str, body: Mapping[str, Any], environ: Mapping[str, str], problems: _Problems
) -> str | None:
    if "url" in body and "url_env" in body:
        problems.add(where, "give url or url_env, not both")
        return None
    if "url" in body:
        url = body["url"]
        key = f"{where}.url"
    else:
        name = body.get("url_env", DEFAULT_AMQP_URL_ENV)
        key = f"{where}.url_env"
        if not isinstance(name, str) or not _ENV.fullmatch(name):
            problems.add(key, "must name an environment variable")
            return None
        url = environ.get(name) or ("" if "url_env" in body else DEFAULT_AMQP_URL)
        if not url:
            problems.add(key, f"${name} is not set")
            return None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("amqp", "amqps"):
        problems.add(key, "must be an amqp:// or amqps:// URL")  # (the URL is not shown)
        return None
    return url


def _webhook(
    where: str, body: object, environ: Mapping[str, str], problems: _Problems
) -> WebhookConfig | None:
    if not isinstance(body, Mapping):
        problems.add(where, "must be a table")
        return None
    before = len(problems)
    known = ("name", "url", "secret_env", "events", "timeout", "retry_min", "retry_max")
    _unknown(where, body, known, problems)
    url = body.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        problems.add(f"{where}.url", "missing, or not an http:// or https:// URL")
        url = None
    name = body.get("name") or (_name_of(url) if url else "")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == AMQP_OUTLET:
        problems.add(f"{where}.name", "1-200 letters, digits and _.:/- (and not 'amqp')")
    secret = _secret(f"{where}.secret_env", body.get("secret_env"), environ, problems)
    patterns = problems.check(f"{where}.events", body.get("events", ["#"]), _patterns)
    timeout = problems.check(f"{where}.timeout", body.get("timeout", 10.0), _positive_duration)
    backoff = _backoff(where, body, WEBHOOK_BACKOFF, problems)
    if len(problems) > before or url is None or secret is None or backoff is None:
        return None
    return WebhookConfig(str(name), url, secret, patterns, timeout, backoff)


def _name_of(url: str) -> str:
    parts = urlsplit(url)
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", f"webhook:{parts.hostname}{parts.path}")[:200]


def _secret(
    key: str, name: object, environ: Mapping[str, str], problems: _Problems
) -> bytes | None:
    if name is None:
        problems.add(key, "missing: the variable holding the key that signs each request")
        return None
    if not isinstance(name, str) or not _ENV.fullmatch(name):
        problems.add(key, "must name an environment variable")
        return None
    value = environ.get(name, "")
    if len(value) < 16:
        problems.add(
            key, f"${name} is {'too short (16 characters at least)' if value else 'not set'}"
        )
        return None
    return value.encode()


def _patterns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of routing-key patterns, e.g. ["job.*"]')
    return tuple(check_pattern(v) for v in value)


def _backoff(
    where: str, body: Mapping[str, Any], default: Backoff, problems: _Problems
) -> Backoff | None:
    lo = problems.check(
        f"{where}.retry_min", body.get("retry_min", default.min_s), _positive_duration
    )
    hi = problems.check(
        f"{where}.retry_max", body.get("retry_max", default.max_s), _positive_duration
    )
    if lo is None or hi is None:
        return None
    if lo > hi:
        problems.add(f"{where}.retry_min", f"{lo:g} s is more than retry_max ({hi:g} s)")
        return None
    return Backoff(lo, hi)


def _positive_duration(value: object) -> float:
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError('must be more than 0, e.g. "10s"')
    return seconds


def _unknown(
    where: str, body: Mapping[str, Any], known: tuple[str, ...], problems: _Problems
) -> None:
    for key in body:
        if key not in known:
            problems.add(f"{where}.{key}", f"unknown key (known: {', '.join(known)})")


def _check_unique(names: list[str], problems: _Problems) -> None:
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add("events.webhooks", f"two outlets are named {name!r}: give each a name")
