"""Local services as an operator sees them: Ray's token authentication is on, a Ray head stops
alone, a temporary Prefect server listens on 127.0.0.1 and dies with the process that started
it (one that dies while booting is reported with its log), a second server refuses a port in
use, two `sharekan server`s run side by side on ports of their own and each stops everything it started
on SIGTERM, or on SIGINT even when started in the background, and when its Prefect server dies, a killed run's temporary Prefect home is removed by the next run,
and a local run never attaches to a cluster it did not ask for."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from cli.services import free_port, port_in_use, prefect_env, ray_head

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    return {**prefect_env(), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.5)


def test_ray_refuses_a_client_without_the_token(tmp_path):
    head = textwrap.dedent("""
        import subprocess, sys, os
        import ray
        from tasks.cluster import connect
        connect(num_cpus=1)
        gcs = ray.get_runtime_context().gcs_address
        client = "import ray, sys; ray.init(address=sys.argv[1]); print('CONNECTED')"
        for label, extra in (("wrong", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}), ("right", {})):
            r = subprocess.run([sys.executable, "-c", client, gcs], env={**os.environ, **extra},
                               capture_output=True, text=True, timeout=150)
            print(label, "CONNECTED" in r.stdout, flush=True)
        ray.shutdown()
    """)
    env = {k: v for k, v in _env().items() if k != "RAY_AUTH_MODE"}  # Ray's own default for a local cluster
    out = subprocess.run([sys.executable, "-c", head], env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wrong False" in out.stdout and "right True" in out.stdout, out.stdout


def test_a_temporary_prefect_server_listens_on_loopback_and_dies_with_its_parent(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from cli.services import prefect_server
        with prefect_server(home=sys.argv[1], die_with_parent=True) as url:
            print(url, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "home")], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    url = parent.stdout.readline().strip()
    port = int(url.split(":")[2].split("/")[0])
    assert port != 4200
    with urllib.request.urlopen(url.removesuffix("/api") + "/ui-settings", timeout=10) as r:
        assert json.loads(r.read())["api_url"] == url  # the UI talks to this server's API, not to :4200
    server = [p for p in psutil.Process(parent.pid).children(recursive=True)]
    listening = {c.laddr.ip for p in server for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(server, timeout=60)
    for p in alive:
        p.kill()
    assert not alive and not port_in_use(port), "the Prefect server outlived the process that started it"


def test_a_starting_prefect_server_names_its_exit_and_its_log(tmp_path):
    from cli.services import starting_prefect_server

    log = tmp_path / "server.log"
    with starting_prefect_server(home=str(tmp_path / "home"), log=log) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/api"  # known before the server answers
        server.proc.kill()  # dies while booting: waiting for it fails at once, naming the log
        with pytest.raises(RuntimeError, match=re.escape(f"prefect server exited with code -9; see {log}")):
            server.wait()
    assert not port_in_use(server.port)


def test_a_second_server_refuses_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "cli.main", "server", "--port", str(port), "--no-ray"],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in out.stderr, out.stderr[-2000:]
    assert "Prefect UI" not in out.stdout


def _start(tmp_path, *args, ignore_sigint: bool = False, **env) -> subprocess.Popen:
    """`sharekan server` with its logs under ``tmp_path``. ``ignore_sigint``: started as a script's
    background job is (SIGINT ignored when it starts); ``env``: added to its environment."""
    def background():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "cli.main", "server", "--logs", str(tmp_path / "logs"), *args],
                            cwd=tmp_path, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=background if ignore_sigint else None)


def _ready(proc: subprocess.Popen) -> list[str]:
    """Its output until it says it is ready."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("next:"):
            break
    return lines


def _server(tmp_path, *args, ignore_sigint: bool = False) -> tuple[subprocess.Popen, list[str]]:
    proc = _start(tmp_path, *args, ignore_sigint=ignore_sigint)
    return proc, _ready(proc)


def _client_servers() -> dict[int, list[str]]:
    """Ray client servers running now (Ray starts them detached: no child of the head's starter)."""
    return {p.pid: p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if "ray.util.client.server" in (p.info["cmdline"] or [])}


def _listening(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for p in procs:
        try:
            ports |= {c.laddr.port for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return ports


def test_two_sharekan_servers_side_by_side_each_stop_everything_they_started(tmp_path):
    """Two servers on one host at once: every port each listens on (Prefect, Ray, the client server,
    metrics) is its own; SIGTERM stops one and everything it started within 20 s, the other runs on;
    the other, started in the background (SIGINT ignored), stops on SIGINT; nothing is left. Both
    share one new Prefect home, as two servers under one user's ``~/.prefect`` do: its database is
    created and migrated once, not by both at once (which killed one of them)."""
    before = _client_servers()
    home = tmp_path / "prefect-home"
    ports = [free_port() for _ in range(4)]
    assert len(set(ports)) == 4
    procs = {}
    for name, (port, ray_port), background in (("a", ports[:2], False), ("b", ports[2:], True)):
        (tmp_path / name).mkdir()
        procs[name] = _start(tmp_path / name, "--port", str(port), "--ray-port", str(ray_port), ignore_sigint=background,
                             PREFECT_HOME=str(home))
    try:
        trees = {}
        for name, (port, ray_port) in zip(procs, (ports[:2], ports[2:])):
            lines = _ready(procs[name])
            assert any(f"Ray head:    127.0.0.1:{ray_port}" in x for x in lines), "".join(lines)[-3000:]
            assert port_in_use(port) and port_in_use(ray_port)
        ours = {pid: args for pid, args in _client_servers().items() if pid not in before}
        assert len(ours) == 2 and not any("--port=10001" in a for a in ours.values())  # free ports, not Ray's fixed one
        for (name, proc), (_, ray_port) in zip(procs.items(), (ports[:2], ports[2:])):
            client = [pid for pid, a in ours.items() if any(x.endswith(f":{ray_port}") for x in a)]  # its GCS address
            assert len(client) == 1, ours
            trees[name] = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(client[0])]
        a_ports, b_ports = _listening(trees["a"]), _listening(trees["b"])
        assert a_ports and b_ports and not a_ports & b_ports, (a_ports, b_ports)

        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(timeout=120) == 0
        _, alive = psutil.wait_procs(trees["a"], timeout=20)
        assert not alive, [p.cmdline() for p in alive]
        assert not any(port_in_use(p) for p in a_ports)
        assert all(p.is_running() for p in trees["b"]) and all(port_in_use(p) for p in ports[2:])  # b runs on

        procs["b"].send_signal(signal.SIGINT)
        assert procs["b"].wait(timeout=120) == 0
        _, alive = psutil.wait_procs(trees["b"], timeout=20)
        for p in alive:
            p.kill()
        assert not alive, [p.info for p in alive]
        assert not any(port_in_use(p) for p in b_ports)
        for name in procs:
            assert (tmp_path / name / "logs" / "prefect-server.log").is_file()
            assert not (tmp_path / name / "artifacts").exists()
    finally:  # a failed assertion leaves no server running
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # stops everything that server started
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def test_sharekan_server_stops_everything_when_its_prefect_server_dies(tmp_path):
    port = free_port()
    proc, lines = _server(tmp_path, "--port", str(port), "--no-ray")
    assert lines and lines[-1].startswith("next:"), "".join(lines)[-3000:]
    children = psutil.Process(proc.pid).children(recursive=True)
    prefect = next(p for p in children if "server" in p.cmdline() and "start" in p.cmdline())
    os.killpg(prefect.pid, signal.SIGKILL)  # the server runs in a session of its own
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert out.strip().splitlines()[-1] == ("Error: the Prefect server exited with code -9; stopped everything "
                                            "`sharekan server` started")
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, [p.info for p in alive]


def test_a_temporary_prefect_home_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    from cli.services import HOME_PREFIX, OWNER, temporary_home

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
    (stale / OWNER).write_text(str(dead.pid))
    live = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
    (live / OWNER).write_text(str(os.getpid()))
    try:
        with temporary_home() as home:
            assert (Path(home) / OWNER).read_text() == str(os.getpid())
            assert not stale.exists() and live.is_dir()  # a live run's home is kept
        assert not Path(home).exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def test_ray_heads_and_local_runs_keep_to_their_own_clusters():
    """A local run beside a live `ray start` head, or after one left a stale cluster file, starts its
    own cluster; stopping one head leaves another running."""
    stale = Path("/tmp/ray/ray_current_cluster")
    saved = stale.read_text() if stale.exists() else None
    script = textwrap.dedent("""
        import ray
        from tasks.cluster import connect
        connect(num_cpus=1)
        print("GCS", ray.get_runtime_context().gcs_address, flush=True)
        ray.shutdown()
    """)

    def local_run() -> str:
        out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "GCS" in out.stdout, (out.stdout[-1000:], out.stderr[-3000:])
        return out.stdout.split("GCS")[1].strip()

    try:
        with ray_head(port=free_port(), num_cpus=1, env=_env()) as other:
            other_port = int(other.rsplit(":", 1)[1])
            assert not local_run().endswith(f":{other_port}")
            with ray_head(port=free_port(), num_cpus=1, env=_env()) as mine:
                mine_port = int(mine.rsplit(":", 1)[1])
                assert port_in_use(mine_port) and port_in_use(other_port)
            _wait(lambda: not port_in_use(mine_port), 30, "our head still listens")
            assert port_in_use(other_port), "stopping our head stopped another cluster"
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("127.0.0.1:1\n")  # a cluster that no longer exists
        local_run()
    finally:
        if saved is None:
            stale.unlink(missing_ok=True)
        else:
            stale.write_text(saved)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's package); skipped where none is installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    base = Path(tempfile.mkdtemp(prefix="skpg-"))
    if as_pg:
        shutil.chown(base, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_pg, *map(str, cmd)], capture_output=True, text=True, timeout=120)  # noqa: E731
    done = run(initdb, "-D", base / "data", "-A", "trust", "-U", "postgres")
    assert done.returncode == 0, done.stderr[-2000:]
    done = run(pg_ctl, "-D", base / "data", "-l", base / "log", "-w", "-o", f"-p {port} -h 127.0.0.1 -k {base}",
               "start")
    assert done.returncode == 0, done.stderr[-2000:] + (base / "log").read_text()[-2000:]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", base / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_a_prefect_server_on_postgresql_records_flow_runs(postgres, tmp_path):
    import asyncio

    import asyncpg

    from cli.services import prefect_server

    flow = "from prefect import flow\n@flow(name='pg-check')\ndef f():\n    return 1\nf()\n"
    with prefect_server(home=str(tmp_path / "home"), database=postgres) as url:
        done = subprocess.run([sys.executable, "-c", flow], env=_env(PREFECT_API_URL=url), capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]

    async def runs():
        conn = await asyncpg.connect(postgres)
        try:
            return await conn.fetch("SELECT fr.state_type FROM flow_run fr JOIN flow ON flow.id = fr.flow_id "
                                    "WHERE flow.name = 'pg-check'")
        finally:
            await conn.close()
    assert [r["state_type"] for r in asyncio.run(runs())] == ["COMPLETED"]
    assert not (tmp_path / "home" / "prefect.db").exists()  # nothing went to SQLite


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process as another user (needs root)")
def test_auto_refuses_another_user_s_cluster_at_once_naming_its_owner(tmp_path):
    """`--address auto` on a host where the cluster Ray would pick belongs to someone else: refused
    before any service starts, naming the owner (Ray would retry its token for 20 s, then fail)."""
    from cli.services import free_port

    address = f"127.0.0.1:{free_port()}"
    # what a raylet of user 'nobody' looks like to `auto`: a process of theirs naming its GCS
    theirs = subprocess.Popen(["/bin/bash", "-c", "sleep 120; true", f"--gcs-address={address}"], cwd="/",
                              preexec_fn=lambda: os.setuid(65534))
    try:
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "cli.main", "run", "--address", "auto", "--out", str(tmp_path)],
                             cwd=tmp_path, env=_env(RAY_ADDRESS=address), capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and time.time() - t0 < 30, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1] == (
            f"Error: `auto` finds the Ray cluster at {address}, started by user 'nobody', not by you: give the "
            "address of a cluster of your own (and its token)")
        assert "Prefect API" not in out.stdout  # nothing started
    finally:
        theirs.kill()
        theirs.wait()
