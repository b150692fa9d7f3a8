import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main as cli
from storage.shards import put_rows, read_shard
from storage.store import ArtifactStore, StoreError, VersionNotFound, version_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def test_put_is_content_addressed_and_idempotent(store):
    f = np.arange(12, dtype=np.float32).reshape(3, 4)
    a, created = store.put("features", {"size": 3}, [], "c1", {"f": f})
    assert created and a.version == version_id("features", {"size": 3}, [], "c1")
    snapshots = len(store.history())
    again, created = store.put("features", {"size": 3}, [], "c1", {"f": f * 0})
    assert not created and again.version == a.version
    assert len(store.history()) == snapshots  # no work, no commit
    assert np.array_equal(store.get(a.version).arrays()["f"], f)
    other, _ = store.put("features", {"size": 4}, [], "c1", {"f": f})
    code, _ = store.put("features", {"size": 3}, [], "c2", {"f": f})
    assert len({a.version, other.version, code.version}) == 3


def test_lineage_and_missing_inputs(store):
    d, _ = store.put("dataset", {"n": 2}, [], "c", {})
    f, _ = store.put("features", {}, [d.version], "c", {"x": np.ones(2)})
    h, _ = store.put("head", {}, [f.version, d.version], "c", {"w": np.ones(3)})
    tree = store.lineage(h.version)
    assert tree["stage"] == "head"
    assert {c["version"] for c in tree["inputs"]} == {f.version, d.version}
    with pytest.raises(VersionNotFound, match="input artifact version 'features-nope'"):
        store.put("head", {}, ["features-nope"], "c", {})
    with pytest.raises(VersionNotFound, match="'head-0000' not found"):
        store.get("head-0000")


def test_sharded_rows_parallel_and_read_one_shard(store):
    rng = np.random.default_rng(0)
    coef = rng.standard_normal((1000, 13)).astype(np.float32)
    gains = rng.random(1000).astype(np.float16)
    a, created = put_rows(store, "splines", {"n": 1000}, [], "c", {"coefficients": coef, "gains": gains},
                          chunk_rows=100, chunks_per_shard=2, workers=2)
    assert created
    assert np.array_equal(a.array("coefficients")[...], coef)
    assert np.array_equal(a.array("gains")[...], gains)
    assert a.array("coefficients").shards == (200, 13)
    assert np.array_equal(read_shard(a, "coefficients", 4), coef[800:1000])
    with pytest.raises(IndexError, match="5 shards"):
        read_shard(a, "coefficients", 5)
    _, created = put_rows(store, "splines", {"n": 1000}, [], "c", {"coefficients": coef, "gains": gains},
                          chunk_rows=100, chunks_per_shard=2, workers=2)
    assert not created


def test_tag_gc_and_time_travel(store):
    keep, _ = store.put("dataset", {"n": 1}, [], "c", {"x": np.ones(2)})
    child, _ = store.put("head", {"n": 1}, [keep.version], "c", {"w": np.ones(2)})
    junk, _ = store.put("head", {"n": 2}, [keep.version], "c", {"w": np.zeros(2)})
    snap = store.tag(child.version, "release")
    assert store.tags() == {"release": snap}
    for bad in ("", ".", "..", "two\nlines", "a/b", "with space"):  # a tag that gc could not see protects nothing
        with pytest.raises(ValueError, match="tag name"):
            store.tag(child.version, bad)
    assert store.tags() == {"release": snap}
    summary = store.gc()
    assert summary["deleted_versions"] == [junk.version]
    assert store.has(child.version) and store.has(keep.version) and not store.has(junk.version)
    # the deleted version is still readable at an earlier snapshot reachable from the tag
    assert store.get(child.version, snapshot=snap).arrays()["w"].tolist() == [1.0, 1.0]


KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from storage.store import ArtifactStore
    from storage.shards import put_rows
    if __name__ == "__main__":
        store = ArtifactStore(sys.argv[1])
        rows = np.random.default_rng(1).standard_normal((4_000_000, 13)).astype(np.float32)
        print("writing", flush=True)
        if sys.argv[2] == "sharded":
            put_rows(store, "splines", {"n": 4}, [], "c", {"coefficients": rows}, chunk_rows=50_000,
                     chunks_per_shard=2, workers=2)
        else:
            store.put("features", {"n": 4}, [], "c", {"f": rows}, chunks={"f": (50_000, 13)})
        print("done", flush=True)
""")


@pytest.mark.parametrize("mode", ["single", "sharded"])
def test_sigkill_mid_write_leaves_store_intact(tmp_path, mode):
    path = tmp_path / "store"
    store = ArtifactStore(path)
    before, _ = store.put("dataset", {"n": 1}, [], "c", {"x": np.arange(5.0)})
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    chunks = path / "chunks"
    count = lambda: len(list(chunks.iterdir())) if chunks.is_dir() else 0
    baseline = count()
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while count() <= baseline:  # kill at the first data written: mid-write
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)  # the writer and its worker processes
    proc.wait()
    reopened = ArtifactStore(path)
    assert [a.version for a in reopened.ls()] == [before.version]
    assert reopened.get(before.version).arrays()["x"].tolist() == [0, 1, 2, 3, 4]
    done = subprocess.run([sys.executable, str(script), str(path), mode], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    stage = "splines" if mode == "sharded" else "features"
    (art,) = ArtifactStore(path).ls(stage)
    name = "coefficients" if mode == "sharded" else "f"
    expected = np.random.default_rng(1).standard_normal((4_000_000, 13)).astype(np.float32)
    assert np.array_equal(art.array(name)[-3:], expected[-3:])


CONCURRENT_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from storage.store import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    start = float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))
    a, created = store.put("features", {"writer": sys.argv[2]}, [], "c",
                           {"f": np.full((200_000, 13), float(len(sys.argv[2])), np.float32)})
    print(a.version, created)
""")


def test_two_writers_commit_at_once(tmp_path):
    path = tmp_path / "store"
    ArtifactStore(path)
    script = tmp_path / "w.py"
    script.write_text(CONCURRENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-X", "faulthandler", str(script), str(path), name, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in ("a", "bb", "a")]  # two distinct versions and one duplicate
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [(p.returncode, o[0][-300:], o[1][-500:]) for p, o in zip(procs, outs)]
    store = ArtifactStore(path)
    versions = sorted(a.version for a in store.ls())
    assert len(versions) == 2
    for a in store.ls():
        value = 1.0 if a.params["writer"] == "a" else 2.0
        assert float(a.array("f")[-1, -1]) == value
    created = [o[0].split()[1] for o in outs]
    assert created.count("True") == 2  # the duplicate waited for its twin and wrote nothing


OPEN_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from storage.store import ArtifactStore, parse_location
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    store = ArtifactStore(parse_location(sys.argv[1]))
    a, created = store.put("dataset", {"writer": sys.argv[2]}, [], "c", {"x": np.arange(3.0)})
    print(a.version, created)
""")


def open_a_new_store_at_once(location: str, tmp_path: Path, env: dict, runs: int = 4) -> list[str]:
    """``runs`` processes open the store at ``location`` (not yet made) at the same moment and each
    stores an artifact; every one succeeds (before, all but one failed in Icechunk's create or in the
    format marker's commit) and their versions."""
    script = tmp_path / "open.py"
    script.write_text(OPEN_SCRIPT)
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    start = time.time() + 4
    procs = [subprocess.Popen([sys.executable, str(script), location, str(i), str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(runs)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-600:] for p, o in zip(procs, outs) if p.returncode]
    results = [o[0].split()[-2:] for o in outs]  # the last line (Icechunk may warn before it)
    assert all(created == "True" for _, created in results), [o[0] for o in outs]
    return sorted(version for version, _ in results)


def test_runs_opening_a_new_store_at_once_all_succeed(tmp_path):
    versions = open_a_new_store_at_once(str(tmp_path / "store"), tmp_path, {})
    assert sorted(a.version for a in ArtifactStore(tmp_path / "store", create=False).ls()) == versions


SHARDED_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from storage.store import ArtifactStore, open_artifact_group, version_id
    store = ArtifactStore(sys.argv[1])
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    version = version_id("features", {"n": 1}, [], "c")
    def write(session, ranges):
        time.sleep(2)  # both writers are inside put_sharded at once
        fork = session.fork()
        for a, b in ranges:
            open_artifact_group(fork, version)["f"][a:b] = np.arange(a, b, dtype=np.float32)[:, None]
        return [fork]
    art, created = store.put_sharded("features", {"n": 1}, [], "c", {"f": ((1,), "<f4")}, 1000, 100, 1, write)
    print(art.version, created)
""")


def test_two_runs_writing_the_same_sharded_version_resolve_without_a_retry(tmp_path):
    """Two runs computing the same features at once: the second waits and reuses the first's artifact
    (before, its 'create arrays' commit conflicted and only a Prefect retry rescued the run)."""
    path = tmp_path / "store"
    ArtifactStore(path)
    script = tmp_path / "s.py"
    script.write_text(SHARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-X", "faulthandler", str(script), str(path), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [(p.returncode, o[1][-800:]) for p, o in zip(procs, outs)]
    assert sorted(o[0].split()[1] for o in outs) == ["False", "True"]
    (art,) = ArtifactStore(path).ls()
    assert art.array("f")[...].ravel().tolist() == list(range(1000))


def test_bad_locations_are_named(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ArtifactStore(f)
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    with pytest.raises(StoreError, match="not an artifact store"):
        ArtifactStore(other)
    with pytest.raises(StoreError, match="does not exist"):
        ArtifactStore(tmp_path / "absent", create=False)


def test_unsupported_format_and_corrupt_version(tmp_path):
    import zarr
    store = ArtifactStore(tmp_path / "s")
    a, _ = store.put("dataset", {}, [], "c", {"x": np.ones(2)})
    session = store.repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    del root[a.version].attrs["stage"]
    session.commit("damage")
    with pytest.raises(StoreError, match="corrupt: attribute 'stage' missing"):
        store.get(a.version)
    session = store.repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["format"] = "other/9"
    session.commit("other format")
    with pytest.raises(StoreError, match="unsupported store format 'other/9'"):
        ArtifactStore(tmp_path / "s")


def test_damaged_repository_files_are_named(tmp_path):
    path = tmp_path / "s"
    ArtifactStore(path).put("dataset", {}, [], "c", {"x": np.ones(2)})
    for snap in (path / "snapshots").iterdir():
        snap.write_bytes(b"garbage")
    with pytest.raises(StoreError, match=str(path.name)):
        ArtifactStore(path).ls()


def test_cli_ls_show_lineage_tag_gc(tmp_path):
    path = tmp_path / "s"
    store = ArtifactStore(path)
    d, _ = store.put("dataset", {"n": 1}, [], "c", {"x": np.ones(2)})
    h, _ = store.put("head", {"n": 1}, [d.version], "c", {"w": np.ones(3, np.float32)})
    j, _ = store.put("head", {"n": 2}, [d.version], "c", {"w": np.ones(3, np.float32)})
    run = lambda *args: CliRunner().invoke(cli, ["artifacts", "--store", str(path), *args])
    r = run("ls")
    assert r.exit_code == 0 and d.version in r.output and h.version in r.output
    shown = json.loads(run("show", h.version).output)
    assert shown["arrays"]["w"] == {"shape": [3], "dtype": "float32"} and shown["inputs"] == [d.version]
    assert run("lineage", h.version).output.splitlines() == [h.version, "  " + d.version]
    assert "tagged" in run("tag", h.version, "best").output
    r = run("gc", "--dry-run")
    assert "would delete 1 versions" in r.output and j.version in r.output
    assert "deleted 1 versions" in run("gc").output
    missing = run("show", "head-123")
    assert missing.exit_code != 0 and "head-123" in missing.output
    absent = CliRunner().invoke(cli, ["artifacts", "--store", str(tmp_path / "nope"), "ls"])
    assert absent.exit_code != 0 and "does not exist" in absent.output
    for args in (["ls", "--store", str(path)], ["show", h.version, "--store", str(path)]):  # where users type it
        r = CliRunner().invoke(cli, ["artifacts", "--store", str(tmp_path / "nope"), *args])
        assert r.exit_code == 0 and h.version in r.output, r.output


def _damage(store_path: Path, cut: bool) -> None:
    """Flip one byte in the middle of the largest chunk file (or cut it in half)."""
    chunk = max((p for p in (store_path / "chunks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(chunk.read_bytes())
    if cut:
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))


def test_the_artifacts_commands_load_no_torch(tmp_path):
    """`sharekan artifacts …` reads the store only: loading torch (≈ 1.4 s) made each call ≈ 2.5 s."""
    path = tmp_path / "s"
    d, _ = ArtifactStore(path).put("dataset", {"n": 1}, [], "c", {"x": np.ones(2)})
    probe = ("import runpy, sys; sys.argv = ['sharekan', 'artifacts', '--store', sys.argv[1], 'lineage', sys.argv[2]]\n"
             "try:\n    runpy.run_module('cli.main', run_name='__main__')\nexcept SystemExit as e:\n"
             "    assert not e.code, e.code\nassert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", probe, str(path), d.version], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == d.version, done.stderr[-1000:]


@pytest.mark.parametrize("cut", [False, True], ids=["flipped-byte", "cut-chunk"])
def test_corrupt_bytes_are_named_on_read_never_returned(tmp_path, cut):
    from storage.store import CorruptArtifact

    path = tmp_path / "store"
    data = np.random.default_rng(0).standard_normal((4000, 13)).astype(np.float32)
    a, _ = ArtifactStore(path).put("splines", {"n": 1}, [], "c", {"coefficients": data})
    assert np.array_equal(ArtifactStore(path).get(a.version).array("coefficients")[...], data)
    _damage(path, cut)
    with pytest.raises(CorruptArtifact, match=f"artifact {a.version} array 'coefficients': stored bytes are corrupt"):
        ArtifactStore(path).get(a.version).array("coefficients")[...]
    with pytest.raises(CorruptArtifact):
        ArtifactStore(path).get(a.version).arrays()
    intact, _ = ArtifactStore(path).put("head", {"n": 1}, [], "c", {"w": np.ones(3, np.float32)})
    verify = CliRunner().invoke(cli, ["artifacts", "--store", str(path), "verify"])  # reads every chunk: names it
    assert verify.exit_code == 1 and f"CORRUPT {a.version}" in verify.output, verify.output
    assert f"artifact {a.version} array 'coefficients': stored bytes are corrupt" in verify.output
    assert f"ok      {intact.version}" in verify.output and "1 of 2 versions have corrupt arrays" in verify.output
    alone = CliRunner().invoke(cli, ["artifacts", "--store", str(path), "verify", intact.version])
    assert alone.exit_code == 0 and "all 1 versions intact" in alone.output


def test_corrupt_shards_are_named_on_read(tmp_path):
    from storage.store import CorruptArtifact

    path = tmp_path / "store"
    shapes = np.random.default_rng(1).standard_normal((3000, 13)).astype(np.float32)
    a, _ = put_rows(ArtifactStore(path), "splines", {"n": 2}, [], "c", {"shapes": shapes}, chunk_rows=1000,
                    workers=1)
    _damage(path, cut=False)
    art = ArtifactStore(path).get(a.version)
    with pytest.raises(CorruptArtifact, match="array 'shapes'"):
        [read_shard(art, "shapes", i) for i in range(3)]


def test_gc_refuses_while_a_run_holds_the_store_and_clears_a_killed_runs_lease(tmp_path):
    from storage.leases import PREFIX
    from storage.store import StoreBusy

    store = ArtifactStore(tmp_path / "store")
    d, _ = store.put("dataset", {"n": 1}, [], "c", {"x": np.ones(2)})
    code = textwrap.dedent(f"""
        import sys, time
        from storage.leases import hold
        from storage.store import ArtifactStore
        hold(ArtifactStore({str(tmp_path / "store")!r}))
        print("held", flush=True)
        time.sleep(600)
    """)
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert run.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match=rf"1 run\(s\) hold .* process {run.pid} on "):
            store.gc()
        assert store.has(d.version) and store.tags() == {}  # a lease is no user tag
        with pytest.raises(ValueError, match="leases"):
            store.tag(d.version, PREFIX + "mine")
        result = CliRunner().invoke(cli, ["artifacts", "gc", "--store", str(tmp_path / "store")])
        assert result.exit_code == 1 and f"process {run.pid}" in result.output
    finally:
        run.send_signal(signal.SIGKILL)  # killed: its lease stays behind, and lapses with its process
        run.wait()
    assert any(t.startswith(PREFIX) for t in store.repo.list_tags())
    assert store.gc()["deleted_versions"] == [d.version]
    assert not any(t.startswith(PREFIX) for t in store.repo.list_tags())
