"""Which module implements which provider. Imported lazily, so that a pool of one kind never
needs the libraries of another (boto3, paramiko)."""

from __future__ import annotations

import importlib

from clobi.errors import ConfigError, MissingExtra
from clobi.manager.providers.base import Provider
from clobi.model.pools import PoolSpec

# provider name -> (module, class, the extra that brings its libraries)
PROVIDERS: dict[str, tuple[str, str, str | None]] = {
    "local": ("clobi.manager.providers.local", "LocalProvider", None),
    "simulated": ("clobi.manager.providers.simulated", "SimulatedProvider", None),
    "ssh": ("clobi.manager.providers.ssh", "SshProvider", "ssh"),
    "ec2": ("clobi.manager.providers.ec2", "Ec2Provider", "s3"),
}


def provider_class(name: str) -> type[Provider]:
    """The provider class of that name; `ConfigError` for an unknown name, `MissingExtra`
    when its libraries are not installed."""
    try:
        module_name, class_name, extra = PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError([f"provider: unknown provider {name!r} (known: {known})"]) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or exc.name is None or exc.name.startswith("clobi"):
            raise
        raise MissingExtra(
            f"provider {name} needs {exc.name}: pip install 'clobi[{extra}]'"
        ) from None
    cls = getattr(module, class_name)
    assert isinstance(cls, type) and issubclass(cls, Provider)
    return cls


def check_provider(pool: PoolSpec) -> list[str]:
    """Problems with the pool's provider and its settings, each as "key: message"."""
    if pool.provider not in PROVIDERS:
        known = ", ".join(sorted(PROVIDERS))
        return [f"provider: unknown provider {pool.provider!r} (known: {known})"]
    try:
        cls = provider_class(pool.provider)
    except (MissingExtra, ModuleNotFoundError) as exc:
        return [f"provider: {exc}"]
    return cls.check_settings(pool.settings)
