"""The job spec: what a user asks to run. Parsing and validation live in `specparse`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resources:
    """What one job needs from an agent's slots."""

    cpus: float = 1.0
    memory_bytes: int = 0
    gpus: int = 0
    walltime_s: float | None = None


@dataclass(frozen=True)
class Retries:
    """User-failure retries: `count` more attempts, waiting `backoff_s * 2**n` before each."""

    count: int = 0
    backoff_s: float = 1.0
    max_backoff_s: float = 3600.0

    def delay_s(self, retry_number: int) -> float:
        """Seconds to wait before retry number `retry_number` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, retry_number - 1)))


@dataclass(frozen=True)
class InputItem:
    """A local file or directory packed into the input sandbox at `dest` (relative)."""

    source: str
    dest: str


@dataclass(frozen=True)
class ArraySpec:
    """An array makes one job per index (`count`) or per value (`values`)."""

    count: int | None = None
    values: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.values) if self.values is not None else int(self.count or 0)

    def value(self, index: int) -> str | None:
        return self.values[index] if self.values is not None else None


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. `command` is an argv list, or one string run by `sh -c` when
    `shell` is true."""

    command: tuple[str, ...]
    name: str = ""
    shell: bool = False
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "."
    inputs: tuple[InputItem, ...] = ()
    outputs: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    requires: tuple[str, ...] = ()
    priority: int = 0
    retries: Retries = field(default_factory=Retries)
    array: ArraySpec | None = None
    tags: tuple[str, ...] = ()

    @property
    def job_count(self) -> int:
        return self.array.size if self.array else 1

    def to_json(self) -> str:
        """The spec as stored: inputs are recorded by their destinations only."""
        data: dict[str, Any] = asdict(self)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return spec_from_dict(json.loads(text))


def spec_from_dict(data: dict[str, Any]) -> JobSpec:
    """Rebuild a spec from `to_json` output (trusted data, no validation)."""
    array = data.get("array")
    return JobSpec(
        command=tuple(data["command"]),
        name=data.get("name", ""),
        shell=bool(data.get("shell", False)),
        env=dict(data.get("env", {})),
        workdir=data.get("workdir", "."),
        inputs=tuple(InputItem(**i) for i in data.get("inputs", ())),
        outputs=tuple(data.get("outputs", ())),
        resources=Resources(**data.get("resources", {})),
        requires=tuple(data.get("requires", ())),
        priority=int(data.get("priority", 0)),
        retries=Retries(**data.get("retries", {})),
        array=None
        if array is None
        else ArraySpec(
            count=array.get("count"),
            values=None if array.get("values") is None else tuple(array["values"]),
        ),
        tags=tuple(data.get("tags", ())),
    )


def substitute(text: str, index: int | None, value: str | None) -> str:
    """Replace `{index}` and `{value}` in one argument; other braces stay as they are."""
    if index is not None:
        text = text.replace("{index}", str(index))
    if value is not None:
        text = text.replace("{value}", value)
    return text


def expand_command(spec: JobSpec, index: int | None) -> list[str]:
    """The argv one array member runs (`sh -c` for shell specs)."""
    value = spec.array.value(index) if (spec.array and index is not None) else None
    argv = [substitute(a, index, value) for a in spec.command]
    return ["/bin/sh", "-c", argv[0]] if spec.shell else argv


def expand_env(spec: JobSpec, index: int | None, job_id: int) -> dict[str, str]:
    """The environment one array member runs with: the spec's env, substituted, plus Clobi's."""
    value = spec.array.value(index) if (spec.array and index is not None) else None
    env = {k: substitute(v, index, value) for k, v in spec.env.items()}
    env["CLOBI_JOB_ID"] = str(job_id)
    if index is not None:
        env["CLOBI_ARRAY_INDEX"] = str(index)
    if value is not None:
        env["CLOBI_ARRAY_VALUE"] = value
    return env
