"""The `ec2` provider: machines from Amazon EC2, or any EC2-compatible API (`endpoint`).

```toml
[pools.cloud]
provider = "ec2"
instance_type = "c7i.large"             # required
image = "ami-0abcdef1234567890"         # required: an image with Clobi installed for `python`
region = "eu-west-1"                    # default us-east-1
subnet = "subnet-0abc"                  # optional, as are the four below
security_groups = ["sg-0abc"]
key_name = "ops"
spot = true
spot_max_price = 0.05                   # only with spot; default: the on-demand price
endpoint = "http://127.0.0.1:5000"      # another EC2-compatible API (tests use moto)
python = "/opt/clobi/bin/python"        # the image's interpreter with Clobi; default python3
```

Each machine gets a cloud-init script as its user-data (`ec2_userdata.sh`) holding where to
join, its slots, and its own single-use bootstrap token; never cloud or database credentials.
Every machine is tagged `clobi:session`, `clobi:pool` and `clobi:instance`: `describe` and
`terminate` look only at machines with this session's and this pool's tags, so machines of
other sessions, pools or people are never touched (they read as `GONE`).

Credentials come from boto3's standard chain (environment, profile, SSO, instance role), never
from the pool's settings. botocore's errors become `ProviderError`s (or a refused launch's
`error`) with one line naming the region or endpoint, without the token.

One RunInstances call per machine: user-data and tags are per call, and sharing one call would
put every sibling's token on each machine. The calls of one `launch` run in a few threads, and
each carries an idempotency token, so a retried request does not start a second machine.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)

from clobi.errors import ConfigError, ProviderError
from clobi.manager.plan import ProviderState
from clobi.manager.providers.base import JoinInfo, Launched, LaunchRequest, Provider
from clobi.model.pools import PoolSpec

TAG_SESSION = "clobi:session"
TAG_POOL = "clobi:pool"
TAG_INSTANCE = "clobi:instance"
USER_DATA_TEMPLATE = "ec2_userdata.sh"
_IDS_PER_CALL = 200  # filter values per DescribeInstances call (the API's limit)
_LAUNCH_THREADS = 8
_STATES = {"pending": ProviderState.PENDING, "running": ProviderState.RUNNING}
_OVER = ("shutting-down", "terminated")
_NOT_FOUND = "InvalidInstanceID.NotFound"
# a spot request's status once the cloud has decided to take the machine back (~2 min notice)
_NOTICE = {"marked-for-termination", "marked-for-stop", "marked-for-hibernation"}
# the API refuses who we are, so every request will fail alike
_UNUSABLE = {
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "RequestExpired",
    "UnrecognizedClientException",
    "OptInRequired",
}
_NO_CREDENTIALS = (
    "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "or use an instance role)"
)


@dataclass(frozen=True)
class Ec2Settings:
    """A pool's `ec2` settings, checked."""

    instance_type: str
    image: str
    region: str = "us-east-1"
    subnet: str | None = None
    security_groups: tuple[str, ...] = ()
    key_name: str | None = None
    spot: bool = False
    spot_max_price: str | None = None
    endpoint: str | None = None
    python: str = "python3"


# --- settings ---------------------------------------------------------------------------------


def _matching(pattern: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(pattern)

    def check(value: object) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return check


def _security_groups(value: object) -> tuple[str, ...]:
    check = _matching(r"sg-[0-9A-Za-z]{1,64}", "")
    try:
        if not isinstance(value, list) or not value:
            raise ValueError
        return tuple(check(v) for v in value)
    except ValueError:
        raise ValueError('must be a list of security group ids, e.g. ["sg-0abc123"]') from None


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _price(value: object) -> str:
    """A price per hour in dollars, as the API wants it (a decimal string)."""
    try:
        price = float(value) if isinstance(value, int | float | str) else float("nan")
    except ValueError:
        price = float("nan")
    if isinstance(value, bool) or not 0 < price < 1_000_000:
        raise ValueError("must be a price per hour in dollars, more than 0, e.g. 0.05")
    return f"{price:g}" if not isinstance(value, str) else value.strip()


def _endpoint(value: object) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:5000")
    if "@" in parts.netloc:  # do not echo it: it may hold a secret
        raise ValueError("must not hold credentials (they come from the AWS environment)")
    if parts.query or parts.fragment:
        raise ValueError("must be a plain http(s)://host:port URL")
    return str(value).rstrip("/")


_CHECKS: dict[str, Callable[[object], Any]] = {
    "instance_type": _matching(
        r"[a-z0-9-]{1,32}\.[a-z0-9-]{1,32}", "an instance type, e.g. t3.micro"
    ),
    "image": _matching(r"ami-[0-9A-Za-z]{1,64}", "an image id, e.g. ami-0abcdef1234567890"),
    "region": _matching(r"[A-Za-z0-9-]{1,64}", "a region name, e.g. us-east-1"),
    "subnet": _matching(r"subnet-[0-9A-Za-z]{1,64}", "a subnet id, e.g. subnet-0abc123"),
    "security_groups": _security_groups,
    "key_name": _matching(r"[ -~]{1,255}", "the name of a key pair"),
    "spot": _bool,
    "spot_max_price": _price,
    "endpoint": _endpoint,
    "python": _matching(
        r"[A-Za-z0-9_./+][A-Za-z0-9_./+-]{0,254}", "an interpreter's path or name, e.g. python3"
    ),
}
_REQUIRED = ("instance_type", "image")


def parse_settings(settings: Mapping[str, Any]) -> tuple[Ec2Settings | None, list[str]]:
    """The checked settings (None when any is wrong) and every problem as "key: message".
    Unknown keys are the base class's to report."""
    values: dict[str, Any] = {}
    problems = [
        f"{key}: missing (provider ec2 needs it)" for key in _REQUIRED if key not in settings
    ]
    for key, check in _CHECKS.items():
        if key in settings:
            try:
                values[key] = check(settings[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    if "spot_max_price" in settings and settings.get("spot") is not True:
        problems.append("spot_max_price: goes with spot = true")
    return (None if problems else Ec2Settings(**values)), problems


# --- user-data --------------------------------------------------------------------------------


def slot_flags(pool: PoolSpec) -> list[str]:
    """`clobi agent` flags offering one machine's slots of the pool."""
    flags = ["--cpus", f"{pool.cpus:g}", "--memory", str(pool.memory_bytes)]
    flags += ["--gpus", str(pool.gpus)]
    if pool.labels:
        flags += ["--labels", ",".join(sorted(pool.labels))]
    return flags


def render_user_data(url: str, bootstrap: str, pool: PoolSpec, python: str) -> str:
    """The cloud-init script that makes a new machine join `url` with its bootstrap token."""
    template = resources.files(__package__).joinpath(USER_DATA_TEMPLATE).read_text("utf-8")
    values = {
        "URL": shlex.quote(url),
        "TOKEN": shlex.quote(bootstrap),
        "PYTHON": shlex.quote(python),
        "SLOTS": shlex.join(slot_flags(pool)),
    }
    return re.sub(r"@([A-Z]+)@", lambda m: values[m.group(1)], template)


# --- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    message: str
    unusable: bool  # no request can work now: unreachable, no or refused credentials


def _problem(exc: Exception, where: str) -> _Problem:
    if isinstance(exc, NoCredentialsError):
        return _Problem(f"{where}: {_NO_CREDENTIALS}", True)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        text = str(error.get("Message", "")).split("Encoded authorization failure", 1)[0]
        return _Problem(f"{where}: {code}: {text.strip()}".rstrip(": "), code in _UNUSABLE)
    return _Problem(f"{where}: {exc}", not isinstance(exc, ParamValidationError))


def _scrub(message: str, secret: str) -> str:
    return message.replace(secret, "***") if secret else message


# --- the provider -----------------------------------------------------------------------------


class Ec2Provider(Provider):
    """Starts and stops the EC2 instances of one pool."""

    name: ClassVar[str] = "ec2"
    settings_keys: ClassVar[frozenset[str]] = frozenset(_CHECKS)

    def __init__(
        self,
        pool: PoolSpec,
        join: JoinInfo,
        *,
        boto_session: Any = None,
        max_attempts: int = 3,
    ) -> None:
        """`boto_session` defaults to `boto3.session.Session()` (the standard credential
        chain); `max_attempts` bounds the tries of each request."""
        super().__init__(pool, join)
        settings, problems = parse_settings(pool.settings)
        if settings is None:
            raise ConfigError(problems, f"pools.{pool.name}")
        if not join.url:
            raise ProviderError(
                f"pool {pool.name}: ec2 machines join a Clobi server: run `clobi server` "
                "(an embedded session cannot be reached from the cloud)"
            )
        if not join.session_id:  # without it, other sessions' machines would look like ours
            raise ProviderError(f"pool {pool.name}: no session id to tag ec2 machines with")
        self.settings = settings
        self.url, self.session_id = join.url, join.session_id
        where = f" at {settings.endpoint}" if settings.endpoint else ""
        self._where = f"ec2 {settings.region}{where}"
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=60,
        )
        with self._edge("set up a client"):
            session = boto_session or boto3.session.Session()
            self._client = session.client(
                "ec2", region_name=settings.region, endpoint_url=settings.endpoint, config=config
            )

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> list[str]:
        """Unknown keys, then each wrong or missing setting, as "key: message"."""
        return super().check_settings(settings) + parse_settings(settings)[1]

    def launch(self, requests: Sequence[LaunchRequest]) -> list[Launched]:
        """One RunInstances call per request (a few at a time). Raises `ProviderError` only
        when every request failed because the API cannot be used (unreachable, no or refused
        credentials); otherwise a refused request answers with its `error`."""
        if not requests:
            return []
        with ThreadPoolExecutor(min(_LAUNCH_THREADS, len(requests))) as threads:
            outcomes = list(threads.map(self._launch_one, requests))
        problems = [problem for _, problem in outcomes]
        first = problems[0]
        if first is not None and all(p is not None and p.unusable for p in problems):
            raise ProviderError(first.message)
        return [launched for launched, _ in outcomes]

    def describe(self, provider_ids: Sequence[str]) -> dict[str, ProviderState]:
        """`PENDING`/`RUNNING` for our machines that are starting or running (`PREEMPTING`
        for a spot machine with an interruption notice); `GONE` for everything else: machines
        shutting down, terminated or stopped, and ids without this session's and pool's tags."""
        states = dict.fromkeys(provider_ids, ProviderState.GONE)
        for instance_id, instance in self._ours(provider_ids).items():
            states[instance_id] = _STATES.get(instance["State"]["Name"], ProviderState.GONE)
        running = [i for i, state in states.items() if state is ProviderState.RUNNING]
        if self.settings.spot and running:
            for instance_id in self._noticed(running):
                states[instance_id] = ProviderState.PREEMPTING
        return states

    def terminate(self, provider_ids: Sequence[str]) -> None:
        """Terminate those of the ids that carry this session's and pool's tags and are not
        over yet; every other id is left alone."""
        live = [
            i for i, inst in self._ours(provider_ids).items() if inst["State"]["Name"] not in _OVER
        ]
        for chunk in _chunks(live):
            self._terminate(chunk)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    # --- requests ---------------------------------------------------------------------------

    def _launch_one(self, request: LaunchRequest) -> tuple[Launched, _Problem | None]:
        try:
            answer = self._client.run_instances(**self._run_params(request))
        except (ClientError, BotoCoreError) as exc:
            problem = _problem(exc, f"{self._where}: cannot launch an instance")
            problem = _Problem(_scrub(problem.message, request.bootstrap), problem.unusable)
            return Launched(request.instance_id, error=problem.message), problem
        provider_id = str(answer["Instances"][0]["InstanceId"])
        return Launched(request.instance_id, provider_id=provider_id), None

    def _run_params(self, request: LaunchRequest) -> dict[str, Any]:
        s = self.settings
        tags = [
            {"Key": TAG_SESSION, "Value": self.session_id},
            {"Key": TAG_POOL, "Value": self.pool.name},
            {"Key": TAG_INSTANCE, "Value": str(request.instance_id)},
            {"Key": "Name", "Value": f"clobi-{self.pool.name}-{request.instance_id}"},
        ]
        params: dict[str, Any] = {
            "ImageId": s.image,
            "InstanceType": s.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": render_user_data(self.url, request.bootstrap, self.pool, s.python),
            "ClientToken": self._client_token(request),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        optional = {"SubnetId": s.subnet, "KeyName": s.key_name}
        params.update({k: v for k, v in optional.items() if v})
        if s.security_groups:
            params["SecurityGroupIds"] = list(s.security_groups)
        if s.spot:
            params["InstanceMarketOptions"] = _spot_options(s.spot_max_price)
        return params

    def _client_token(self, request: LaunchRequest) -> str:
        """The same for every try of one launch (and only for it): EC2 starts one machine."""
        key = f"{self.session_id}\0{self.pool.name}\0{request.instance_id}"
        return hashlib.sha256(key.encode()).hexdigest()[:64]

    def _ours(self, provider_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Those of the ids that carry our tags, with what DescribeInstances says of them."""
        found: dict[str, dict[str, Any]] = {}
        paginator = self._client.get_paginator("describe_instances")
        for chunk in _chunks(list(dict.fromkeys(provider_ids))):
            with self._edge("describe instances"):
                for page in paginator.paginate(Filters=self._filters(chunk)):
                    for reservation in page.get("Reservations", []):
                        found.update({i["InstanceId"]: i for i in reservation["Instances"]})
        return found

    def _filters(self, ids: list[str]) -> list[dict[str, Any]]:
        return [
            {"Name": "instance-id", "Values": ids},
            {"Name": f"tag:{TAG_SESSION}", "Values": [self.session_id]},
            {"Name": f"tag:{TAG_POOL}", "Values": [self.pool.name]},
        ]

    def _noticed(self, ids: list[str]) -> set[str]:
        """Spot machines the cloud has decided to take back. Best effort: without the
        permission to ask, no machine is reported as preempting."""
        noticed: set[str] = set()
        paginator = self._client.get_paginator("describe_spot_instance_requests")
        try:
            for chunk in _chunks(ids):
                with self._edge("describe spot requests"):
                    pages = paginator.paginate(Filters=[{"Name": "instance-id", "Values": chunk}])
                    requests = [r for page in pages for r in page["SpotInstanceRequests"]]
                noticed |= {
                    r["InstanceId"] for r in requests if r.get("Status", {}).get("Code") in _NOTICE
                }
        except _Refused:
            return set()
        return noticed

    def _terminate(self, ids: list[str]) -> None:
        try:
            with self._edge("terminate instances"):
                self._client.terminate_instances(InstanceIds=ids)
        except _Refused as exc:
            if exc.code != _NOT_FOUND:
                raise
            if len(ids) > 1:  # one gone meanwhile fails the whole call: the others one by one
                for instance_id in ids:
                    self._terminate([instance_id])

    @contextmanager
    def _edge(self, action: str) -> Iterator[None]:
        """botocore's errors as `ProviderError`s naming the region and the action."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise _Refused(_problem(exc, f"{self._where}: cannot {action}").message, code) from None
        except BotoCoreError as exc:
            raise ProviderError(_problem(exc, f"{self._where}: cannot {action}").message) from None


class _Refused(ProviderError):
    """The API answered with an error (as opposed to not answering)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _spot_options(max_price: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "SpotInstanceType": "one-time",
        "InstanceInterruptionBehavior": "terminate",
    }
    if max_price is not None:
        options["MaxPrice"] = max_price
    return {"MarketType": "spot", "SpotOptions": options}


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IDS_PER_CALL):
        yield ids[start : start + _IDS_PER_CALL]
