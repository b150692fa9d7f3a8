"""The ``sharekan`` command line: ``sharekan artifacts ls | show | lineage | tag | gc``."""

from __future__ import annotations

import json

import click

from storage.store import ArtifactStore, StoreError, VersionNotFound, parse_location


def _store(location: str | None) -> ArtifactStore:
    try:
        return ArtifactStore(parse_location(location), create=False)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None


@click.group()
def main() -> None:
    """SHARe-KAN: KAN heads compressed by Gain-Shape-Bias VQ."""


@main.group()
@click.option("--store", "location", envvar="SHAREKAN_STORE", default="artifacts/store", show_default=True,
              help="store folder or s3://bucket/prefix (env SHAREKAN_STORE)")
@click.pass_context
def artifacts(ctx: click.Context, location: str) -> None:
    """Inspect and manage the versioned artifact store."""
    ctx.obj = location


def _get(store: ArtifactStore, version: str):
    try:
        return store.get(version)
    except VersionNotFound as e:
        raise click.ClickException(str(e)) from None


@artifacts.command("ls")
@click.option("--stage", help="only this stage")
@click.pass_obj
def ls(location: str, stage: str | None) -> None:
    """List complete artifact versions, oldest first."""
    store = _store(location)
    tags: dict[str, list[str]] = {}
    for name, snap in store.tags().items():
        tags.setdefault(snap, []).append(name)
    rows = store.ls(stage)
    if not rows:
        click.echo("no artifacts")
    for a in rows:
        click.echo(f"{a.version:40s} {a.created[:19]}  inputs: {', '.join(a.inputs) or '-'}")


@artifacts.command()
@click.argument("version")
@click.pass_obj
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
@click.pass_obj
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
@click.argument("version")
@click.argument("name")
@click.pass_obj
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
@click.pass_obj
def gc(location: str, keep: tuple[str, ...], dry_run: bool) -> None:
    """Delete versions that no tag or --keep needs, then unreachable data."""
    summary = _store(location).gc(list(keep), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(summary['deleted_versions'])} versions, kept {len(summary['kept'])}")
    for v in summary["deleted_versions"]:
        click.echo(f"  {v}")


if __name__ == "__main__":
    main()
