"""Local services for ``sharekan run`` and ``sharekan server``: a Prefect server, a process work
pool and worker, and a Ray head — each a real process on 127.0.0.1 (Ray with token
authentication, since some of its servers listen on every interface), refusing a port already in
use, and stopped on exit: only what was started here, never another user's Ray cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from tasks.cluster import SYSTEM_CONFIG, ensure_token

__all__ = ["database_url", "free_port", "port_in_use", "prefect_env", "prefect_server", "starting_prefect_server",
           "StartingServer", "worker", "ray_head", "bin_path", "POOL", "PortInUse", "api_problem", "api_watchdog", "watchdog",
           "temporary_home"]

POOL = "sharekan-pool"


def bin_path(name: str) -> str:
    """A console script of this environment (prefect, ray), beside the running interpreter."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class PortInUse(RuntimeError):
    """A service's port is taken (often: the same service already runs)."""


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _claim(port: int, what: str) -> None:
    if port_in_use(port):
        raise PortInUse(f"port {port} on 127.0.0.1 is in use: is {what} already running? "
                        f"Stop it or choose another port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(api_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0", "PREFECT_CLI_PROMPT": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


HOME_PREFIX = "sharekan-prefect-"  # a run's temporary Prefect home (its SQLite database)
OWNER = "owner.pid"


@contextmanager
def temporary_home() -> Iterator[str]:
    """A temporary ``PREFECT_HOME`` for one run, removed at its end. Homes that a run killed
    before its end left behind (their ``owner.pid`` no longer alive) are removed first."""
    for old in Path(tempfile.gettempdir()).glob(HOME_PREFIX + "*"):
        try:
            pid = int((old / OWNER).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge (an older layout, or still being created)
        if not psutil.pid_exists(pid):
            shutil.rmtree(old, ignore_errors=True)
    home = tempfile.mkdtemp(prefix=HOME_PREFIX)
    (Path(home) / OWNER).write_text(str(os.getpid()))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def api_problem(url: str, timeout: float = 3) -> str | None:
    """Why the Prefect API at ``url`` does not answer its health check (``None``: it does)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return None if r.status == 200 else f"health check answered HTTP {r.status}"
    except OSError as e:
        return str(getattr(e, "reason", e))


@contextmanager
def watchdog(problem, on_lost, name: str, interval: float = 3, grace: float = 15) -> Iterator[None]:
    """Call ``problem()`` every ``interval`` seconds from a thread; once it has named a problem for
    ``grace`` seconds, call ``on_lost(reason)`` (which ends the process: the clients' own retries
    would last minutes and then end in a traceback, or in Ray's case a silent exit)."""
    stop = threading.Event()

    def watch():
        down_since = None
        while not stop.wait(interval):
            reason = problem()
            if reason is None:
                down_since = None
            elif time.monotonic() - (down_since := down_since or time.monotonic()) >= grace:
                on_lost(reason)
                return

    thread = threading.Thread(target=watch, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def api_watchdog(url: str, on_lost, interval: float = 3, grace: float = 15):
    """:func:`watchdog` on the Prefect API at ``url``."""
    return watchdog(lambda: api_problem(url), on_lost, "prefect-api-watchdog", interval, grace)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM it when the process that started it dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so a temporary server never outlives its ``sharekan run``."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:  # a process worker may ignore SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def database_url(url: str) -> str:
    """A Prefect database URL: ``postgresql://…`` gets Prefect's async driver; SQLite stays as given."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ValueError(f"database {url!r}: expected postgresql://USER[:PASSWORD]@HOST:PORT/DB "
                     "(or sqlite+aiosqlite:///FILE)")


class StartingServer:
    """A ``prefect server start`` process that may not answer yet: :meth:`wait` until it does.
    ``boot_lock``: the SQLite home's boot lock it holds until then (:func:`_boot_lock`)."""

    def __init__(self, proc: subprocess.Popen, port: int, timeout: float, log: Path | None, boot_lock=None):
        self.proc, self.port, self.timeout, self.log, self.boot_lock = proc, port, timeout, log, boot_lock
        self.url = f"http://127.0.0.1:{port}/api"

    def release(self) -> None:
        if self.boot_lock is not None:
            self.boot_lock.close()  # closing the file drops its flock
            self.boot_lock = None

    def wait(self) -> str:
        """Block until the API answers its health check; its URL."""
        try:
            return self._wait()
        finally:
            self.release()

    def _wait(self) -> str:
        deadline = time.time() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with code {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"prefect server on port {self.port} not healthy after {self.timeout:.0f}s")
            time.sleep(0.5)


def _boot_lock(home: str | None, timeout: float):
    """An exclusive lock on a SQLite Prefect home, held from launch until healthy: two servers that
    share a home (``sharekan server`` uses ``~/.prefect`` by default) would otherwise create and
    migrate its database at once, and one dies ("Online migration expected to match one row")."""
    import fcntl

    root = Path(home or os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / "sharekan-boot.lock", "a")
    deadline = time.time() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.time() > deadline:
                f.close()
                raise TimeoutError(f"another Prefect server on {root} did not finish starting in {timeout:.0f}s")
            time.sleep(0.2)


@contextmanager
def starting_prefect_server(port: int | None = None, home: str | None = None, timeout: float = 120,
                            log: Path | None = None, die_with_parent: bool = False, host: str = "127.0.0.1",
                            database: str | None = None) -> Iterator[StartingServer]:
    """A ``prefect server start`` on ``host`` (127.0.0.1 unless asked), yielded as soon as it is
    launched, so other start-up work overlaps its boot (its URL is known at once). ``database``: a
    PostgreSQL URL for team use (default: SQLite under ``PREFECT_HOME``). With ``die_with_parent``
    the kernel stops it if this process dies without cleaning up."""
    port = port or free_port()
    _claim(port, "a Prefect server")
    env = prefect_env()
    # the UI asks its own API, wherever it listens (Prefect's default is port 4200 on 127.0.0.1)
    ui_host = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    env["PREFECT_UI_API_URL"] = f"http://{ui_host}:{port}/api"
    if home:
        env["PREFECT_HOME"] = home
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(database)
    lock = None if database else _boot_lock(env.get("PREFECT_HOME"), timeout)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([bin_path("prefect"), "server", "start", "--host", host, "--port", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None)
    server = StartingServer(proc, port, timeout, log, lock)
    try:
        yield server
    finally:
        server.release()
        _stop(proc)
        if log:
            out.close()


@contextmanager
def prefect_server(port: int | None = None, home: str | None = None, timeout: float = 120,
                   log: Path | None = None, die_with_parent: bool = False, host: str = "127.0.0.1",
                   database: str | None = None) -> Iterator[str]:
    """:func:`starting_prefect_server`, yielding its API URL once healthy."""
    with starting_prefect_server(port, home, timeout, log, die_with_parent, host, database) as server:
        yield server.wait()


@contextmanager
def worker(api_url: str, pool: str = POOL, log: Path | None = None, cwd: str | None = None) -> Iterator[subprocess.Popen]:
    """Create the process work pool (if absent) and run a worker on it."""
    env = prefect_env(api_url)
    subprocess.run([bin_path("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                   env=env, check=True, capture_output=True, timeout=120)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([bin_path("prefect"), "worker", "start", "--pool", pool], env=env, cwd=cwd,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        yield proc
    finally:
        _stop(proc)
        if log:
            out.close()


def _wait_listening(port: int, what: str, timeout: float) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"{what} not listening on 127.0.0.1:{port} after {timeout:.0f}s") from None
            time.sleep(0.5)


def _stop_tree(roots: list, timeout: float = 15) -> None:
    """SIGTERM ``roots`` (psutil processes) and all their descendants, SIGKILL what remains."""
    procs = {p.pid: p for r in roots for p in [r, *_children(r)]}
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


def _children(proc) -> list:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _ray_processes(temp_dir: str, client_port: int) -> list:
    """The processes of the Ray head whose session lives under ``temp_dir`` (workers included) and
    its client server (whose command line names no session folder: found by its own port)."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        args = p.info["cmdline"] or []
        if any(temp_dir in arg for arg in args) or ("ray.util.client.server" in args
                                                    and f"--port={client_port}" in args):
            roots.append(p)
    return roots


@contextmanager
def ray_head(port: int = 6379, num_cpus: int | None = None, env: dict | None = None,
             dashboard_port: int | None = None, timeout: float = 180) -> Iterator[str]:
    """``ray start --head`` on 127.0.0.1 with token authentication and warm idle workers
    (``tasks.cluster.SYSTEM_CONFIG``); yields its address. At the end it stops this head's
    processes alone (found by its own session folder), never other clusters.

    With ``dashboard_port`` the dashboard and its job agent run too, and this waits until the
    agent listens: before that the dashboard answers ``ray job submit`` with "No available agent"
    (it waits only 10 s for the agent, which a busy 2-core machine can exceed)."""
    env = env or prefect_env()
    _claim(port, "a Ray head")
    ensure_token(env)
    temp_dir = tempfile.mkdtemp(prefix="skray-", dir="/tmp")  # short: Ray's socket paths live here
    client = None
    while client in (None, port, dashboard_port):  # a free port of its own, not Ray's fixed 10001
        client = free_port()
    cmd = [bin_path("ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           f"--ray-client-server-port={client}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           f"--system-config={json.dumps(SYSTEM_CONFIG)}"]
    agent = metrics = None
    while agent in (None, port, dashboard_port, client):  # free_port() can repeat itself
        agent = free_port()
    while metrics in (None, port, dashboard_port, client, agent):
        metrics = free_port()
    # ports of this head's own (Ray's fixed defaults clash between clusters on one machine)
    cmd += [f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}"]
    cmd += ([f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
            if dashboard_port else ["--include-dashboard=false"])
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if started.returncode:
            raise RuntimeError(f"ray start failed: {started.stderr[-2000:]}")
        if dashboard_port:
            _wait_listening(dashboard_port, "Ray dashboard", timeout)
            _wait_listening(agent, "Ray dashboard agent (job submission)", timeout)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_tree(_ray_processes(temp_dir, client))
        shutil.rmtree(temp_dir, ignore_errors=True)
