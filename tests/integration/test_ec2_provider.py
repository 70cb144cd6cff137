"""The `ec2` provider against moto's EC2 server: tags, user-data, spot, describe, terminate
(never someone else's machine), errors; and, end to end, a launched instance whose user-data
boots a real agent that joins a real `clobi server` and runs a job."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clobi.errors import ConfigError, ProviderError
from clobi.manager.plan import ProviderState
from clobi.manager.providers.base import JoinInfo, LaunchRequest
from clobi.manager.providers.ec2 import Ec2Provider
from clobi.model.pools import GIB, PoolSpec
from tests.acceptance.harness import wait_for
from tests.ec2harness import (
    FAKE_CREDENTIALS,
    REGION,
    Booter,
    Moto,
    aws_env,
    free_port,
    running_moto,
    running_server,
)

TOKEN = "clobi_0123456789abcdef_s3cr3t-bootstrap_secret-value-xyz"
URL = "http://clobi.example:8000"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's standard chain finds fake credentials, and nothing real."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in aws_env({}).items():
        monkeypatch.setenv(name, value)


def make_pool(moto: Moto | None, name: str = "cloud", **settings: Any) -> PoolSpec:
    base: dict[str, Any] = {"instance_type": "t3.micro", "image": "ami-12345678"}
    if moto is not None:
        base.update(endpoint=moto.endpoint, image=moto.image)
    return PoolSpec(
        name=name,
        provider="ec2",
        cpus=2,
        memory_bytes=3 * GIB,
        labels=frozenset({"ssd", "linux"}),
        settings={**base, **settings},
    )


def make_provider(
    pool: PoolSpec, session_id: str | None = None, url: str = URL, **options: Any
) -> Ec2Provider:
    join = JoinInfo(url, Path("/nonexistent"), sys.executable, session_id or uuid.uuid4().hex)
    return Ec2Provider(pool, join, **options)


def instances(moto: Moto, ids: list[str]) -> dict[str, dict[str, Any]]:
    pages = moto.client().describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i for r in pages for i in r["Instances"]}


def user_data(moto: Moto, instance_id: str) -> str:
    answer = moto.client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(answer["UserData"]["Value"]).decode()


def foreign_instance(moto: Moto, tags: dict[str, str] | None = None) -> str:
    """An instance someone else started (no tags of ours, or other values)."""
    params: dict[str, Any] = {"ImageId": moto.image, "MinCount": 1, "MaxCount": 1}
    if tags:
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tag_list}]
    return str(moto.client().run_instances(**params)["Instances"][0]["InstanceId"])


# --- settings ---------------------------------------------------------------------------------


def test_settings_problems_are_listed_by_key() -> None:
    problems = Ec2Provider.check_settings(
        {
            "instance_type": "huge",
            "region": "us east",
            "subnet": "net-1",
            "security_groups": "sg-1",
            "spot": "yes",
            "spot_max_price": -1,
            "endpoint": "http://key:secret@127.0.0.1:1",
            "python": "python3; rm -rf /",
            "colour": "blue",
        }
    )
    keys = [p.split(":", 1)[0] for p in problems]
    assert keys == [
        "colour",
        "image",
        "instance_type",
        "region",
        "subnet",
        "security_groups",
        "spot",
        "spot_max_price",
        "endpoint",
        "python",
        "spot_max_price",
    ]
    assert "secret" not in "\n".join(problems)
    good = {"instance_type": "c7i.large", "image": "ami-0abc", "spot": True, "spot_max_price": 0.1}
    assert Ec2Provider.check_settings(good) == []


def test_a_pool_with_bad_settings_or_no_server_to_join_cannot_make_a_provider() -> None:
    with pytest.raises(ConfigError, match="image: missing"):
        make_provider(PoolSpec(name="p", provider="ec2", settings={"instance_type": "t3.micro"}))
    with pytest.raises(ProviderError, match="clobi server"):
        make_provider(make_pool(None), url="")


# --- launch -----------------------------------------------------------------------------------


def test_launch_tags_each_instance_and_gives_the_token_only_to_its_user_data(moto: Moto) -> None:
    provider = make_provider(make_pool(moto), session_id="session-a")
    tokens = [TOKEN + "1", TOKEN + "2"]
    launched = provider.launch([LaunchRequest(7, tokens[0]), LaunchRequest(8, tokens[1])])
    assert [(x.instance_id, x.error) for x in launched] == [(7, ""), (8, "")]
    seen = instances(moto, [x.provider_id for x in launched])
    for answer, token, other in zip(launched, tokens, reversed(tokens), strict=True):
        instance = seen[answer.provider_id]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags == {
            "clobi:session": "session-a",
            "clobi:pool": "cloud",
            "clobi:instance": str(answer.instance_id),
            "Name": f"clobi-cloud-{answer.instance_id}",
        }
        assert instance["InstanceType"] == "t3.micro"
        assert "InstanceLifecycle" not in instance  # on demand
        assert TOKEN not in json.dumps(instance, default=str)

        script = user_data(moto, answer.provider_id)
        assert script.startswith("#!/bin/sh\n")
        assert script.count(token) == 1 and other not in script
        command = shlex.split(script.rstrip().splitlines()[-1])
        assert command[:6] == ["exec", "python3", "-m", "clobi", "agent", "--join"]
        assert command[6:] == [
            URL,
            *("--token-file", "$token_file"),
            *("--cpus", "2", "--memory", str(3 * GIB), "--gpus", "0", "--labels", "linux,ssd"),
        ]
        for secret in (*FAKE_CREDENTIALS.values(), "AWS_", "postgresql:", "sqlite:"):
            assert secret not in script
        subprocess.run(["sh", "-n"], input=script, text=True, check=True)  # it parses


def test_a_spot_pool_asks_for_spot_instances_at_its_price(moto: Moto) -> None:
    import boto3  # type: ignore[import-untyped, unused-ignore]

    sent: list[dict[str, Any]] = []
    session = boto3.session.Session()
    session.events.register(
        "provide-client-params.ec2.RunInstances", lambda params, **_: sent.append(params)
    )
    pool = make_pool(moto, spot=True, spot_max_price=0.05)
    (launched,) = make_provider(pool, boto_session=session).launch([LaunchRequest(1, TOKEN)])
    assert instances(moto, [launched.provider_id])[launched.provider_id]["InstanceLifecycle"] == (
        "spot"
    )
    assert sent[0]["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "MaxPrice": "0.05",
        },
    }


def test_a_refused_batch_answers_each_request_with_an_error(moto: Moto) -> None:
    provider = make_provider(make_pool(moto, subnet="subnet-0doesnotexist"))
    launched = provider.launch([LaunchRequest(1, TOKEN), LaunchRequest(2, TOKEN + "2")])
    assert [x.instance_id for x in launched] == [1, 2]
    for answer in launched:
        assert answer.provider_id == ""
        assert "InvalidSubnetID.NotFound" in answer.error
        assert answer.error.startswith(f"ec2 {REGION} at {moto.endpoint}: cannot launch")
        assert TOKEN not in answer.error


# --- describe and terminate -------------------------------------------------------------------


def test_describe_says_running_or_gone_and_foreign_ids_are_gone(moto: Moto) -> None:
    session_id = uuid.uuid4().hex
    provider = make_provider(make_pool(moto), session_id)
    ours = [x.provider_id for x in provider.launch([LaunchRequest(i, TOKEN) for i in (1, 2, 3)])]
    moto.client().stop_instances(InstanceIds=[ours[1]])
    moto.client().terminate_instances(InstanceIds=[ours[2]])
    same_tags_other_pool = foreign_instance(
        moto, {"clobi:session": session_id, "clobi:pool": "other"}
    )
    others = [foreign_instance(moto), same_tags_other_pool, "i-0123456789abcdef0", "not-an-id"]
    states = provider.describe([*ours, *others])
    assert states == {
        ours[0]: ProviderState.RUNNING,
        ours[1]: ProviderState.GONE,
        ours[2]: ProviderState.GONE,
        **dict.fromkeys(others, ProviderState.GONE),
    }
    assert provider.describe([]) == {}


def test_terminate_touches_only_instances_of_this_session_and_pool(moto: Moto) -> None:
    session_id = uuid.uuid4().hex
    provider = make_provider(make_pool(moto), session_id)
    (ours,) = [x.provider_id for x in provider.launch([LaunchRequest(1, TOKEN)])]
    foreign = [
        foreign_instance(moto),
        foreign_instance(moto, {"clobi:session": session_id, "clobi:pool": "other"}),
        foreign_instance(moto, {"clobi:session": "another-session", "clobi:pool": "cloud"}),
    ]
    provider.terminate([ours, *foreign, "i-0123456789abcdef0"])
    provider.terminate([ours])  # already gone: fine
    states = {i: x["State"]["Name"] for i, x in instances(moto, [ours, *foreign]).items()}
    assert states == {ours: "terminated", **dict.fromkeys(foreign, "running")}
    assert provider.describe([ours]) == {ours: ProviderState.GONE}


def test_pending_reads_pending_and_a_spot_interruption_notice_reads_preempting() -> None:
    import boto3  # type: ignore[import-untyped, unused-ignore]
    from botocore.stub import Stubber  # type: ignore[import-untyped, unused-ignore]

    client = boto3.session.Session().client("ec2", region_name=REGION)
    states = {1: "running", 2: "running", 3: "pending", 4: "shutting-down"}
    reservation = {
        "Instances": [{"InstanceId": f"i-{n}", "State": {"Name": s}} for n, s in states.items()]
    }
    notices = [
        {"InstanceId": "i-1", "Status": {"Code": "marked-for-termination"}},
        {"InstanceId": "i-2", "Status": {"Code": "fulfilled"}},
    ]
    with Stubber(client) as stub:
        stub.add_response("describe_instances", {"Reservations": [reservation]})
        stub.add_response("describe_spot_instance_requests", {"SpotInstanceRequests": notices})
        stub.add_response("describe_instances", {"Reservations": [reservation]})
        stub.add_client_error("describe_spot_instance_requests", "UnauthorizedOperation")
        provider = make_provider(make_pool(None, spot=True), boto_session=_OneClient(client))
        ids = ["i-1", "i-2", "i-3", "i-4"]
        assert provider.describe(ids) == {
            "i-1": ProviderState.PREEMPTING,
            "i-2": ProviderState.RUNNING,
            "i-3": ProviderState.PENDING,
            "i-4": ProviderState.GONE,
        }
        # without the permission to see spot requests, no notice (and no failure)
        assert provider.describe(ids)["i-1"] is ProviderState.RUNNING
        stub.assert_no_pending_responses()


class _OneClient:
    """A stand-in boto3 session that hands out one given client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self, *args: Any, **kwargs: Any) -> Any:
        return self._client


# --- errors -----------------------------------------------------------------------------------


def test_an_unreachable_api_raises_provider_error_naming_it() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = make_provider(make_pool(None, endpoint=endpoint), max_attempts=1)
    calls = [
        lambda: provider.launch([LaunchRequest(1, TOKEN), LaunchRequest(2, TOKEN)]),
        lambda: provider.describe(["i-1"]),
        lambda: provider.terminate(["i-1"]),
    ]
    for call in calls:
        with pytest.raises(ProviderError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"ec2 {REGION} at {endpoint}: cannot ")
        assert "Could not connect" in message and "\n" not in message
        assert TOKEN not in message
        chained = caught.value.__cause__ or caught.value.__context__
        assert chained is None or caught.value.__suppress_context__  # no botocore traceback


def test_no_credentials_raise_provider_error_saying_how_to_give_them(
    moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in FAKE_CREDENTIALS:
        monkeypatch.delenv(name)
    provider = make_provider(make_pool(moto), max_attempts=1)
    with pytest.raises(ProviderError, match="no AWS credentials found"):
        provider.launch([LaunchRequest(1, TOKEN)])


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_launched_instance_boots_an_agent_that_runs_a_job_until_terminated(
    moto: Moto, tmp_path: Path
) -> None:
    session_id = uuid.uuid4().hex
    with (
        running_server(tmp_path) as server,
        Booter(moto, session_id, tmp_path / "machines").in_background() as booter,
    ):
        bootstrap = server.clobi(
            *("token", "create", "--role", "bootstrap", "--pool", "cloud", "--name", "instance-1")
        ).strip()
        pool = make_pool(moto)
        provider = make_provider(pool, session_id, url=server.url)
        (launched,) = provider.launch([LaunchRequest(1, bootstrap)])
        assert launched.error == ""

        def agents() -> list[dict[str, Any]]:
            return list(json.loads(server.clobi("agents", "--json")))

        wait_for(lambda: len(agents()) == 1, 20, "the instance's agent to join")
        (agent,) = agents()
        assert (agent["pool"], agent["instance_id"], agent["cpus"]) == ("cloud", 1, 2)
        assert agent["memory_bytes"] == 3 * GIB
        assert sorted(agent["labels"]) == ["linux", "ssd"]
        assert provider.describe([launched.provider_id]) == {
            launched.provider_id: ProviderState.RUNNING
        }

        user = server.clobi("token", "create", "--role", "user", "--name", "u").strip()
        server.clobi("submit", "--", "sh", "-c", "echo hi", token=user)
        assert "1 succeeded" in server.clobi("wait", "--timeout", "20", token=user)

        provider.terminate([launched.provider_id])
        machine = booter.machines[launched.provider_id]
        wait_for(lambda: machine.process.poll() is not None, 10, "the agent to die")
        assert provider.describe([launched.provider_id]) == {
            launched.provider_id: ProviderState.GONE
        }
        wait_for(lambda: agents() == [], 15, "the server to see the agent gone")

    secret = bootstrap.split("_", 2)[2]
    assert secret not in server.log.read_text() + machine.log.read_text()
    token_file = machine.folder / "var-lib-clobi" / "bootstrap.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
