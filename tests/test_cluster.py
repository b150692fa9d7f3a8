"""Ray's authentication token is made before a local cluster starts and named for every process;
a local cluster keeps its idle workers warm."""

import os
import stat
import time

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


def test_a_local_cluster_reuses_its_idle_workers(ray_cluster):
    """More tasks at once than CPUs (more workers than Ray keeps by default), an idle pause past
    Ray's own 1 s, then as many tasks again: the same worker processes run them."""
    import ray

    @ray.remote(num_cpus=0)
    def pid(wait: float) -> int:
        time.sleep(wait)
        return os.getpid()

    first = set(ray.get([pid.remote(5.0) for _ in range(int(ray_cluster["CPU"]) + 2)]))
    assert len(first) > ray_cluster["CPU"]  # workers past the CPU count: Ray alone kills them after 1 s idle
    time.sleep(3)
    assert set(ray.get([pid.remote(0.5) for _ in range(len(first))])) <= first
