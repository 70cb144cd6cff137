"""The simulated cloud's boot: `python -m clobi.manager.providers.simboot DELAY_S -- ARGV...`
sleeps DELAY_S seconds, then becomes ARGV (the agent) by exec, keeping its pid and start time.

It runs detached, so a machine boots and its agent joins whether or not anyone watches.
While it sleeps its command line names this module: that is how the provider tells a booting
machine (pending) from a booted one. It imports nothing, so a boot costs one interpreter start.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(
            "usage: python -m clobi.manager.providers.simboot DELAY_S -- ARGV...", file=sys.stderr
        )
        return 2
    time.sleep(max(0.0, float(argv[0])))
    command = argv[2:]
    os.execve(command[0], command, os.environ)


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main(sys.argv[1:]))
