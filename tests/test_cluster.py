"""Ray's authentication token is made before a local cluster starts and named for every process."""

import stat

from tasks.cluster import ensure_token


def test_a_token_is_made_once_owner_only_and_named_for_every_ray_process(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {}
    ensure_token(env)
    path = tmp_path / ".ray" / "auth_token"
    token = path.read_text()
    assert env["RAY_AUTH_TOKEN_PATH"] == str(path) and len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ensure_token(env)
    assert path.read_text() == token  # an existing token is kept: running clusters stay reachable


def test_no_token_when_authentication_is_off_or_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for env in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "abc"}):
        ensure_token(env)
        assert "RAY_AUTH_TOKEN_PATH" not in env
    assert not (tmp_path / ".ray").exists()
