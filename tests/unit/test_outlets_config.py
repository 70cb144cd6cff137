"""Event outlets: the `[events]` table of clobi.toml, routing keys, topic patterns, and how
URLs and secrets are kept out of messages. Pure."""

from __future__ import annotations

import pytest

from clobi.errors import ConfigError
from clobi.model.records import Event
from clobi.outlets.base import Backoff, matches, message, redact, routing_key, scrub
from clobi.outlets.config import DEFAULT_AMQP_URL, parse_outlets

SECRET = "0123456789abcdef0123"


def event(kind: str, job_id: int | None = 7) -> Event:
    return Event(1, 2.5, job_id, None, None, kind, "", "", "")


@pytest.mark.parametrize(
    ("kind", "job_id", "key"),
    [
        ("succeeded", 7, "job.succeeded"),
        ("timed_out", 7, "job.timed_out"),
        ("kill_requested", 7, "job.kill_requested"),
        ("agent_lost", None, "agent.lost"),
        ("instance_running", None, "instance.running"),
        ("manager_config_error", None, "manager.config_error"),
        ("token_created", None, "token.created"),
        ("something", None, "session.something"),
    ],
)
def test_routing_keys_come_from_the_event_kind(kind: str, job_id: int | None, key: str) -> None:
    assert routing_key(event(kind, job_id)) == key
    assert message(event(kind, job_id))["type"] == key


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("#", "job.succeeded", True),
        ("job.*", "job.succeeded", True),
        ("job.*", "agent.lost", False),
        ("*.lost", "agent.lost", True),
        ("job.#", "job", True),
        ("#.succeeded", "job.succeeded", True),
        ("job.succeeded", "job.succeeded.x", False),
    ],
)
def test_topic_patterns_match_as_amqp_bindings_do(pattern: str, key: str, expected: bool) -> None:
    assert matches(pattern, key) is expected


def test_without_url_or_url_env_the_broker_is_clobi_amqp_url_else_the_local_default() -> None:
    config = parse_outlets({"amqp": {}}, {})
    assert config.amqp is not None and config.amqp.url == DEFAULT_AMQP_URL
    assert config.amqp.exchange == "clobi.events" and config.names == ["amqp"]
    from_env = parse_outlets({"amqp": {}}, {"CLOBI_AMQP_URL": "amqps://u:p@mq/%2F"})
    assert from_env.amqp is not None and from_env.amqp.url == "amqps://u:p@mq/%2F"
    assert "p@mq" not in repr(from_env)


def test_a_url_env_naming_an_unset_variable_is_an_error_not_a_fall_back() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_outlets({"amqp": {"url_env": "MQ_URL"}}, {})
    assert caught.value.problems == ["events.amqp.url_env: $MQ_URL is not set"]


def test_every_problem_is_listed_by_key() -> None:
    table = {
        "amqp": {"url": "http://mq", "exchange": "bad name!", "retry_min": "1m", "colour": 1},
        "webhooks": [
            {"url": "ftp://x", "secret_env": "UNSET", "events": ["job..x"], "timeout": "-1s"},
            {"url": "https://hooks.example.org/a?token=t0k3n", "secret_env": "SHORT"},
        ],
        "kafka": {},
    }
    with pytest.raises(ConfigError) as caught:
        parse_outlets(table, {"SHORT": "x"})
    problems = caught.value.problems
    keys = [p.split(":")[0] for p in problems]
    assert keys == [
        "events.kafka",
        "events.amqp.colour",
        "events.amqp.url",
        "events.amqp.exchange",
        "events.amqp.retry_min",
        "events.webhooks[0].url",
        "events.webhooks[0].name",
        "events.webhooks[0].secret_env",
        "events.webhooks[0].events",
        "events.webhooks[0].timeout",
        "events.webhooks[1].secret_env",
    ], problems
    assert "t0k3n" not in str(caught.value) and "$SHORT is too short" in str(caught.value)


def test_webhooks_are_named_from_their_url_unless_named_and_names_are_unique() -> None:
    env = {"S": SECRET}
    hooks = [
        {"url": "https://hooks.example.org/clobi?token=x", "secret_env": "S"},
        {"name": "billing", "url": "http://127.0.0.1:9/b", "secret_env": "S", "events": ["job.*"]},
    ]
    config = parse_outlets({"webhooks": hooks}, env)
    assert config.names == ["webhook:hooks.example.org/clobi", "billing"]
    assert config.webhooks[0].secret == SECRET.encode() and SECRET not in repr(config)
    assert config.webhooks[1].patterns == ("job.*",)
    with pytest.raises(ConfigError, match="two outlets are named 'billing'"):
        parse_outlets({"webhooks": [hooks[1], hooks[1]]}, env)


def test_urls_in_messages_show_no_password_query_or_fragment() -> None:
    url = "amqp://clobi:pa%2Fss@mq.example.org:5671/%2F?heartbeat=10"
    assert redact(url) == "amqp://clobi:***@mq.example.org:5671/%2F"
    assert redact("https://h.example.org/hook?token=abc#x") == "https://h.example.org/hook"
    text = scrub(f"cannot reach {url}: login pa/ss refused (pa%2Fss)", url)
    assert "pa/ss" not in text and "pa%2Fss" not in text and "mq.example.org:5671" in text


def test_backoff_doubles_from_its_minimum_up_to_its_cap() -> None:
    backoff = Backoff(1.0, 10.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (500, 10.0)]:
        delays = [backoff.delay_s(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, delays)
