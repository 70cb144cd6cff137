"""The README's two commands stay true: the main job runs, the test command exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n\s*```", section, flags=re.DOTALL)


def test_the_readme_has_exactly_two_commands() -> None:
    assert len(_commands()) == 2


def test_the_readme_main_job_runs_and_succeeds(tmp_path: Path) -> None:
    main = _commands()[0].strip()
    run = main.split("&& ")[-1]
    assert run.startswith(".venv/bin/clobi run ")
    argv = [sys.executable, "-m", "clobi", *shlex.split(run)[1:]]
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "100 jobs: 100 succeeded" in done.stdout


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    test = _commands()[1].strip()
    assert test == "./scripts/test"
    assert os.access(ROOT / "scripts" / "test", os.X_OK)
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
