"""Tokens saved by `clobi login`: one per server, 0600, under $XDG_CONFIG_HOME."""

from __future__ import annotations

import stat
from pathlib import Path

from clobi.remote.credentials import credentials_path, load_token, save_token


def test_a_saved_token_is_private_and_found_by_its_url(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    path = save_token("https://Clobi.example.org/", "clobi_a_b", env)
    assert path == tmp_path / "cfg" / "clobi" / "credentials.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_token("https://clobi.example.org", env) == "clobi_a_b"
    assert load_token("https://other.example.org", env) is None


def test_saving_again_replaces_one_server_s_token_and_keeps_the_others(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    save_token("http://a:1", "one", env)
    save_token("http://b:2", 'two"quoted', env)
    save_token("http://a:1", "three", env)
    assert load_token("http://a:1", env) == "three"
    assert load_token("http://b:2", env) == 'two"quoted'


def test_clobi_token_in_the_environment_comes_first(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CLOBI_TOKEN": " from-env\n"}
    save_token("http://a:1", "saved", env)
    assert load_token("http://a:1", env) == "from-env"


def test_without_xdg_config_home_tokens_live_in_the_home_config(tmp_path: Path) -> None:
    assert credentials_path({}) == Path.home() / ".config" / "clobi" / "credentials.toml"
