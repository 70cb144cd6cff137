"""Reading clobi.toml: the file `init_session` writes is known without tomllib, to the same data."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clobi.errors import SessionError
from clobi.session import Settings, _config_text, _default_config, load_session


def _typed(data: object) -> object:
    """`data` with every leaf paired with its type: 20 and 20.0 must not compare equal."""
    if isinstance(data, dict):
        return {k: _typed(v) for k, v in data.items()}
    return (type(data), data)


def test_the_default_config_is_what_tomllib_reads_from_the_default_file() -> None:
    expected = tomllib.loads(_config_text(Settings()))
    assert _typed(_default_config()) == _typed(expected)


def test_an_edited_config_is_still_read_by_tomllib(tmp_path: Path) -> None:
    text = _config_text(Settings()).replace("lease_s = 20.0", "lease_s = 30.0")
    (tmp_path / "clobi.toml").write_text(text + 'extra = "x"  # a comment\n', encoding="utf-8")
    with pytest.raises(SessionError, match=r"agent\.extra: unknown key"):
        load_session(tmp_path)
    (tmp_path / "clobi.toml").write_text(text, encoding="utf-8")
    assert load_session(tmp_path).settings.lease_s == 30.0


def test_a_broken_config_names_the_file_and_tomllib_s_complaint(tmp_path: Path) -> None:
    (tmp_path / "clobi.toml").write_text("[session\n", encoding="utf-8")
    with pytest.raises(SessionError, match=r"clobi\.toml: .*line 1"):
        load_session(tmp_path)


def test_a_default_session_has_the_default_settings(tmp_path: Path) -> None:
    (tmp_path / "clobi.toml").write_text(_config_text(Settings()), encoding="utf-8")
    session = load_session(tmp_path)
    assert (session.store_url, session.sandbox_url) == ("sqlite:clobi.db", "file:sandbox")
    assert session.settings == Settings()
