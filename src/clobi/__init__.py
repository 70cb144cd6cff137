"""Clobi: pool machines from anywhere into one elastic pool and run batch jobs on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from clobi.client import Client


def __getattr__(name: str) -> Any:
    # Lazy so that `import clobi` stays cheap for the agent and the CLI.
    if name == "Client":
        from clobi.client import Client

        return Client
    raise AttributeError(name)
