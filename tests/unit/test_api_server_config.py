"""`clobi server` settings: flags first, then CLOBI_* variables, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from clobi.cli.main import parse
from clobi.cli.server_cmd import DEFAULT_BIND, parse_bind, server_config
from clobi.errors import UsageError


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    env = {"CLOBI_BIND": "0.0.0.0:9000", "CLOBI_DB": "postgresql://db/clobi"}
    config = server_config(parse(["server", "--db", "sqlite:x.db"]), env)
    assert (config.host, config.port) == ("0.0.0.0", 9000)
    assert config.db == "sqlite:x.db" and config.storage is None
    assert config.scheme == "http"
    default = server_config(parse(["server"]), {})
    assert f"{default.host}:{default.port}" == DEFAULT_BIND


def test_tls_needs_both_a_certificate_and_a_key() -> None:
    with pytest.raises(UsageError):
        server_config(parse(["server", "--tls-cert", "c.pem"]), {})
    env = {"CLOBI_TLS_CERT": "c.pem", "CLOBI_TLS_KEY": "k.pem"}
    config = server_config(parse(["server"]), env)
    assert config.scheme == "https" and config.tls_key == Path("k.pem")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:0", "127.0.0.1", 0), ("[::1]:8443", "::1", 8443), (":80", "127.0.0.1", 80)],
)
def test_bind_addresses_parse(text: str, host: str, port: int) -> None:
    assert parse_bind(text) == (host, port)


@pytest.mark.parametrize("text", ["localhost", "h:http", "h:70000"])
def test_bad_bind_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_bind(text)
