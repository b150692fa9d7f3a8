"""The ``sharekan`` command line: ``run`` (the pipeline), ``server`` (local Prefect server, work
pool, worker and Ray head), ``study pareto | shared`` (the study flows), ``deploy``
(deployments/prefect.yaml), ``export`` (a compressed head as one file) and ``artifacts ls | show |
lineage | verify | tag | gc``."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import click

from sharekan.kmeans_options import BACKENDS, MODES
from storage.store import ArtifactStore, StoreError, VersionNotFound, parse_location


def _store(location: str | None) -> ArtifactStore:
    try:
        return ArtifactStore(parse_location(location), create=False)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None


@click.group()
def main() -> None:
    """SHARe-KAN: KAN heads compressed by Gain-Shape-Bias VQ."""
    # Ray reads its authentication mode once, when it is imported: set before anything imports it
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def _json_params(text: str | None) -> dict:
    """``--params``: a JSON object given inline (starts with ``{``) or the path of a JSON file."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        source, body = "the --params text", text
    else:
        path = Path(text)
        if not path.is_file():
            raise click.BadParameter(f"{text!r} is neither a JSON object nor an existing file", param_hint="--params")
        try:
            source, body = str(path), path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--params") from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{source} is not valid JSON: {e}", param_hint="--params") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{source} must be a JSON object, got {type(data).__name__}", param_hint="--params")
    return data


def _params(overrides: dict, params_json: str | None):
    from pydantic import ValidationError

    from flows.params import PipelineParams

    base = _json_params(params_json)
    for key, value in overrides.items():
        if value is not None:
            section, _, name = key.rpartition(".")
            (base.setdefault(section, {}) if section else base)[name] = value
    try:
        return PipelineParams.model_validate(base)
    except ValidationError as e:
        raise click.BadParameter(str(e), param_hint="parameters") from None


@main.command()
@click.option("--data", help="VOCdevkit root (default: the embedded synthetic data set)")
@click.option("--n-train", type=int, help="synthetic training images [1000]")
@click.option("--n-test", type=int, help="synthetic test images [200]")
@click.option("--epochs", type=int, help="training epochs [6]")
@click.option("--seed", type=int, help="seed for training and k-means [0]")
@click.option("--k", "ks", type=int, multiple=True, help="codebook size (repeatable) [256, 4096, min(edges, 65536)]")
@click.option("--kmeans-mode", type=click.Choice(MODES), help="[full]")
@click.option("--kmeans-backend", type=click.Choice(["auto", *BACKENDS]),
              help="where k-means assigns points [auto: the Ray workers' GPUs if any, else CPU]")
@click.option("--store", help="artifact store folder or s3://bucket/prefix [$SHAREKAN_STORE or artifacts/store]")
@click.option("--out", help="report folder [artifacts/detection]")
@click.option("--params", "params_json", help="all parameters as JSON (a file or a string); options override it")
@click.option("--address", help="Ray cluster: 'auto' or ray://host:port [a local cluster]")
@click.option("--no-lutham", is_flag=True, help="skip the LUTHAM compile/validate stage")
@click.option("--lutham-k", type=int, help="codebook size LUTHAM runs [the best-mAP VQ variant ≥ 2x smaller]")
def run(data, n_train, n_test, epochs, seed, ks, kmeans_mode, kmeans_backend, store, out, params_json, address,
        no_lutham, lutham_k) -> None:
    """Run the whole pipeline (local Ray, Prefect's API: $PREFECT_API_URL or a temporary local server)."""
    params = _params({"data.root": data, "data.n_train": n_train, "data.n_test": n_test, "train.epochs": epochs,
                      "train.seed": seed, "compress.seed": seed, "compress.ks": list(ks) or None,
                      "compress.kmeans_mode": kmeans_mode, "compress.kmeans_backend": kmeans_backend,
                      "lutham_k": lutham_k}, params_json)
    params = params.model_copy(update={k: v for k, v in {"store": store, "out": out}.items() if v is not None}
                               | ({"lutham": False} if no_lutham else {}))
    from flows.plan import PlanError, plan_pipeline

    try:
        plan_pipeline(params)  # the flow plans again; here it fails before any server starts
    except PlanError as e:
        raise click.UsageError(str(e)) from None
    report = _run_flow(_pipeline_flow, params, params.out, address)
    from flows.run_report import table_rows, variant_columns
    from sharekan.table import format_table

    click.echo(f"\ndense head: mAP@0.5 {report.map50:.4f} ({report.metric}), "
               f"torchmetrics COCO-style AP50 {report.torchmetrics_map50:.4f}")
    click.echo(format_table(table_rows(report.variants), variant_columns(report.variants)))
    click.echo("\nartifact versions:")
    width = max(map(len, report.stages))
    for name, s in report.stages.items():
        click.echo(f"  {name:{width}s} {s.version or '-':30s} {s.state:8s} {s.seconds:7.1f}s")
    if report.skipped_samples:
        click.echo(f"\nskipped {len(report.skipped_samples)} bad samples (all listed in report.md), "
                   f"e.g. {report.skipped_samples[0]}")
    click.echo(f"\nreport: {Path(params.out) / 'report.json'} (and report.md) in {report.seconds:.0f}s")


# The flows are imported only once the Prefect API's address is in the environment (see _run_flow).
def _pipeline_flow():
    from flows.pipeline import sharekan_pipeline

    return sharekan_pipeline


def _study_flow(which: str):
    from flows.studies import pareto_sweep, shared_codebook

    return {"pareto": pareto_sweep, "shared": shared_codebook}[which]


def _run_flow(load_flow, params, out: str, address: str | None):
    """``load_flow()(params)`` on Ray (``address``, or a local cluster) reporting to Prefect's API
    ($PREFECT_API_URL, or a temporary server of this run's own); its result, or a one-line error.
    The flow is imported only once the API's address is in the environment (Prefect reads its
    settings when first imported, and would otherwise start a server of its own) and runs under
    that address's settings too."""
    from cli.services import api_problem, api_watchdog, prefect_env, starting_prefect_server, temporary_home, watchdog
    from tasks.cluster import address_problem, check_reachable, connect, head_address

    if address:  # before any service starts (Ray would retry an address where nothing listens for minutes)
        try:
            check_reachable(address)
        except ConnectionError as e:
            raise click.ClickException(str(e)) from None
    api = os.environ.get("PREFECT_API_URL")
    if api and (problem := api_problem(api)):
        raise click.ClickException(f"cannot reach the Prefect API at {api} (PREFECT_API_URL): {problem}; start it "
                                   "(`sharekan server`) or unset PREFECT_API_URL for a temporary one")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(f"cannot create {out}: {e}", param_hint="--out") from None
    with ExitStack() as services:
        # a temporary server of this run's own (its own database: concurrent runs never share one),
        # stopped on exit and by the kernel if this process is killed; Ray starts while it boots
        home = None if api else services.enter_context(temporary_home())
        server = None if api else services.enter_context(starting_prefect_server(
            home=home, log=Path(out) / "prefect-server.log", die_with_parent=True))
        url = api or server.url
        os.environ.update({k: v for k, v in prefect_env(url).items() if k.startswith(("PREFECT_", "RAY_"))})
        try:
            resources = connect(address)
            if server:
                server.wait()
                click.echo(f"Prefect API (temporary, for this run): {url}")
            services.enter_context(api_watchdog(url, functools.partial(_lost_api, url, home)))
            head = head_address(address)
            services.enter_context(watchdog(lambda: address_problem(head, timeout=3), functools.partial(
                _lost_ray_head, head, home), "ray-head-watchdog", interval=2, grace=6))
            click.echo(f"Ray: {address or 'local'} cluster, {resources.get('CPU', 0):.0f} CPUs, "
                       f"{resources.get('GPU', 0):.0f} GPUs")
            flow = load_flow()
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: url}):  # even where Prefect read its settings earlier
                state = flow(params, return_state=True)
        finally:
            _flush_logs()  # before a temporary server stops, failed or not
    if not state.is_completed():
        raise click.ClickException(f"the run failed: {_cause(state)}")
    return state.result()


@main.command()
@click.argument("which", type=click.Choice(["pareto", "shared"]))
@click.option("--params", "params_json", help="the study's parameters as JSON (a file or a string)")
@click.option("--address", help="Ray cluster: 'auto' or ray://host:port [a local cluster]")
def study(which: str, params_json: str | None, address: str | None) -> None:
    """Run a study flow: ``pareto`` (K×G sweep over seeds, with the Pareto front) or ``shared`` (one
    codebook for many heads, and a head it never saw)."""
    from pydantic import ValidationError

    from flows.params import ParetoParams, SharedParams
    from flows.plan import PlanError
    from flows.study_plan import pareto_plans, shared_plan

    model, plans = {"pareto": (ParetoParams, pareto_plans), "shared": (SharedParams, shared_plan)}[which]
    try:
        params = model.model_validate(_json_params(params_json))
        plans(params)  # the flow plans again; here it fails before any server starts
    except ValidationError as e:
        raise click.BadParameter(str(e), param_hint="--params") from None
    except PlanError as e:
        raise click.UsageError(str(e)) from None
    result = _run_flow(lambda: _study_flow(which), params, params.out, address)
    from flows.study_report import PARETO_COLUMNS, shared_columns, table_rows
    from sharekan.table import format_table

    rows = table_rows(result)
    click.echo(format_table(rows, PARETO_COLUMNS if which == "pareto" else shared_columns(rows)))
    click.echo(f"\nreport: {Path(params.out) / (which + '.json')} (and {which}.md)")


def _cause(state) -> str:
    """One line naming why a run failed (the task's traceback is in the log above it)."""
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        return state.message or state.name
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _lost_api(url: str, home: str | None, reason: str) -> None:
    """The run's Prefect API stopped answering: say so in one line, stop this run's Ray cluster and
    leave (exit 1). Every stage finished so far is in the store; a re-run resumes from it."""
    import ray

    _give_up(f"lost the Prefect API at {url} ({reason}); the stages finished so far are in the store: start the "
             "API again (or unset PREFECT_API_URL for a temporary one) and re-run to resume", home, ray.shutdown)


def _lost_ray_head(head: str, home: str | None, reason: str) -> None:
    """The Ray cluster's head stopped answering (Ray's driver would wait a minute, then exit without a
    word): say so in one line, stop every process this run started and leave (exit 1). Every stage
    finished so far is in the store (each is committed whole or not at all); a re-run resumes."""
    import psutil

    def stop_children():
        children = psutil.Process().children(recursive=True)
        for p in children:
            with suppress(psutil.Error):
                p.terminate()
        for p in psutil.wait_procs(children, timeout=5)[1]:
            with suppress(psutil.Error):
                p.kill()

    _give_up(f"lost the Ray cluster's head at {head} ({reason}); the stages finished so far are in the store: "
             "start the cluster again and re-run to resume", home, stop_children)


def _give_up(message: str, home: str | None, stop) -> None:
    """One ``Error:`` line, ``stop()`` what this run started, remove its temporary Prefect home, exit 1
    at once (from a watchdog thread: the main thread is blocked in the flow)."""
    import shutil

    click.echo(f"Error: {message}", err=True)
    try:
        stop()
    finally:
        if home:
            shutil.rmtree(home, ignore_errors=True)
        os._exit(1)


def _flush_logs() -> None:
    """Send buffered run logs to the API (before a temporary server stops) and leave Ray."""
    import ray
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    ray.shutdown()


@main.command()
@click.option("--port", default=4200, show_default=True, help="Prefect server port")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address the Prefect server (UI and API) listens on; 0.0.0.0 exposes it to the network")
@click.option("--database", help="PostgreSQL URL for the Prefect server, for a team "
                                 "(postgresql://USER:PASSWORD@HOST:5432/DB) [SQLite in ~/.prefect]")
@click.option("--ray-port", default=6379, show_default=True, help="Ray head port")
@click.option("--no-ray", is_flag=True, help="do not start a Ray head (flows then start a local one)")
@click.option("--logs", "logs_dir", default=str(Path("~/.sharekan/logs")), show_default=True,
              help="folder for the Prefect server's and worker's logs")
def server(port: int, host: str, database: str | None, ray_port: int, no_ray: bool, logs_dir: str) -> None:
    """Start a Prefect server, the process work pool and a worker, and a Ray head (127.0.0.1; Ray
    with token authentication). Ctrl-C, SIGINT or SIGTERM stops them all, and only them; so does
    the server or the worker dying (exit 1, naming which)."""
    from cli.services import POOL, PortInUse, database_url, ray_head, starting_prefect_server, worker

    if database:
        try:
            database_url(database)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--database") from None

    logs = Path(logs_dir).expanduser()
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(f"cannot create {logs}: {e}", param_hint="--logs") from None

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # also where it arrives ignored (started in a script's background)
    try:
        with ExitStack() as stack:
            started = stack.enter_context(starting_prefect_server(
                port, host=host, log=logs / "prefect-server.log", die_with_parent=True, database=database))
            if not no_ray:  # the Ray head starts while the Prefect server boots
                os.environ["SHAREKAN_RAY_ADDRESS"] = stack.enter_context(ray_head(ray_port))
            url = started.wait()
            children = {"Prefect server": started.proc,
                        "Prefect worker": stack.enter_context(worker(url, log=logs / "prefect-worker.log"))}
            click.echo(f"Prefect UI:  {url.removesuffix('/api')}\n"
                       f"API:         export PREFECT_API_URL={url}\n"
                       f"work pool:   {POOL} (process), worker log {logs / 'prefect-worker.log'}\n"
                       f"Ray head:    {os.environ.get('SHAREKAN_RAY_ADDRESS', 'none')} (token authentication; "
                       f"the token is in ~/.ray/auth_token)\n"
                       f"next:        sharekan deploy   (Ctrl-C stops everything)", )
            try:
                while not (dead := [f"the {name} exited with code {p.returncode}"
                                    for name, p in children.items() if p.poll() is not None]):
                    time.sleep(1)
            except KeyboardInterrupt:
                click.echo("stopping ...")
            else:
                click.echo(f"{dead[0]}: stopping everything (its log is in {logs}) ...")
                stack.close()
                raise click.ClickException(f"{dead[0]}; stopped everything `sharekan server` started")
    except PortInUse as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("stopped before it was ready")


@main.command()
@click.option("--file", "prefect_file", default="deployments/prefect.yaml", show_default=True)
@click.option("--name", "names", multiple=True, help="only this deployment (repeatable) [all]")
def deploy(prefect_file: str, names: tuple[str, ...]) -> None:
    """Register the deployments of deployments/prefect.yaml with the Prefect API ($PREFECT_API_URL)."""
    from cli.services import bin_path, prefect_env

    if not os.environ.get("PREFECT_API_URL"):
        raise click.ClickException("PREFECT_API_URL is not set: start `sharekan server` and export the URL it prints")
    if not Path(prefect_file).is_file():
        raise click.ClickException(f"no deployment file {prefect_file}")
    cmd = [bin_path("prefect"), "--no-prompt", "deploy", "--prefect-file", prefect_file]
    cmd += [a for n in names for a in ("--name", n)] or ["--all"]
    done = subprocess.run(cmd, env=prefect_env(os.environ["PREFECT_API_URL"]))
    if done.returncode:
        raise click.ClickException(f"prefect deploy failed (exit {done.returncode})")


@main.command()
@click.argument("version")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="the file to write [VERSION.safetensors]")
@click.option("--store", "location", envvar="SHAREKAN_STORE", default="artifacts/store", show_default=True,
              help="store folder or s3://bucket/prefix (env SHAREKAN_STORE)")
def export(version: str, out_file: str | None, location: str) -> None:
    """Write the compressed head VERSION (an `encoded` or `finetune` artifact) as one self-contained
    file: `sharekan.load(FILE)` and `LuthamKAN.from_file(FILE)` run it with the library alone."""
    from tasks.compress import export as export_head

    store = _store(location)
    _get(store, version)
    path = Path(out_file or f"{version}.safetensors")
    try:
        head = export_head(store, version, path)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    v = head.meta["variant"]
    click.echo(f"wrote {path} ({path.stat().st_size:,} B): K={v['k']} {v['dtype']}"
               f"{' fine-tuned' if v['finetuned'] else ''}, {len(head.kan.layers)} layers "
               f"{[head.kan.layers[0].in_features] + [lay.out_features for lay in head.kan.layers]}")


@main.group()
@click.option("--store", "location", envvar="SHAREKAN_STORE", default="artifacts/store", show_default=True,
              help="store folder or s3://bucket/prefix (env SHAREKAN_STORE)")
@click.pass_context
def artifacts(ctx: click.Context, location: str) -> None:
    """Inspect and manage the versioned artifact store."""
    ctx.obj = location


def _pass_store(f):
    """The store an ``artifacts`` command works on: its own ``--store``, else the group's."""
    @click.option("--store", "store_option", help="store folder or s3://bucket/prefix [the group's --store]")
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(location: str, store_option: str | None, **kwargs):
        return f(store_option or location, **kwargs)
    return wrapper


def _get(store: ArtifactStore, version: str):
    try:
        return store.get(version)
    except VersionNotFound as e:
        raise click.ClickException(str(e)) from None


@artifacts.command("ls")
@click.option("--stage", help="only this stage")
@_pass_store
def ls(location: str, stage: str | None) -> None:
    """List complete artifact versions, oldest first."""
    store = _store(location)
    rows = store.ls(stage)
    if not rows:
        click.echo("no artifacts")
    for a in rows:
        click.echo(f"{a.version:40s} {a.created[:19]}  inputs: {', '.join(a.inputs) or '-'}")


@artifacts.command()
@click.argument("version")
@_pass_store
def show(location: str, version: str) -> None:
    """Attributes and arrays of VERSION."""
    a = _get(_store(location), version)
    arrays = {n: {"shape": list(a.group[n].shape), "dtype": str(a.group[n].dtype)}
              for n in sorted(a.group.array_keys())}
    click.echo(json.dumps({"version": a.version, "stage": a.stage, "created": a.created, "code": a.code,
                           "inputs": a.inputs, "params": a.params, "meta": a.meta, "arrays": arrays},
                          indent=2, default=str))


@artifacts.command()
@click.argument("version")
@_pass_store
def lineage(location: str, version: str) -> None:
    """The versions VERSION was made from, as a tree."""
    store = _store(location)
    _get(store, version)

    def walk(node: dict, depth: int) -> None:
        click.echo("  " * depth + f"{node['version']}")
        for child in node["inputs"]:
            walk(child, depth + 1)
    walk(store.lineage(version), 0)


@artifacts.command()
@click.argument("versions", nargs=-1)
@_pass_store
def verify(location: str, versions: tuple[str, ...]) -> None:
    """Read every chunk of VERSIONS (default: every version) and name each corrupt array; exit 1 if any."""
    store = _store(location)
    for v in versions:
        _get(store, v)
    found = store.verify(list(versions) or None)
    for version, problems in found.items():
        click.echo(f"{'CORRUPT' if problems else 'ok':7s} {version}")
        for p in problems:
            click.echo(f"        {p}")
    bad = [v for v, p in found.items() if p]
    if bad:
        raise click.ClickException(f"{len(bad)} of {len(found)} versions have corrupt arrays: {', '.join(bad)}")
    click.echo(f"all {len(found)} versions intact")


@artifacts.command()
@click.argument("version")
@click.argument("name")
@_pass_store
def tag(location: str, version: str, name: str) -> None:
    """Tag the commit that stored VERSION as NAME (tagged versions survive gc)."""
    store = _store(location)
    _get(store, version)
    try:
        snap = store.tag(version, name)
    except Exception as e:
        raise click.ClickException(f"cannot tag {version} as {name!r}: {e}") from None
    click.echo(f"tagged {version} as {name} (snapshot {snap})")


@artifacts.command()
@click.option("--keep", multiple=True, help="a version to keep besides tagged ones (repeatable)")
@click.option("--dry-run", is_flag=True, help="report what would be deleted")
@_pass_store
def gc(location: str, keep: tuple[str, ...], dry_run: bool) -> None:
    """Delete versions that no tag or --keep needs, then unreachable data (refused while a run
    holds the store)."""
    try:
        summary = _store(location).gc(list(keep), dry_run=dry_run)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(summary['deleted_versions'])} versions, kept {len(summary['kept'])}")
    for v in summary["deleted_versions"]:
        click.echo(f"  {v}")


if __name__ == "__main__":
    main()
