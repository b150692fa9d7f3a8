"""Past one machine, on one host: a Ray cluster of three nodes — each its own raylet with its own CPU
(``ray.cluster_utils.Cluster``) on 127.0.0.1 — with the store on an S3-compatible server (moto,
started here), the pipeline submitted to it, and one worker node killed mid-run (its raylet and
workers, as a machine lost). Against a single-node run of the same parameters: the same artifact
versions and the same numbers; the report names the node lost. Marked ``multinode``: run alone with
``pytest -m multinode``."""

import os
import threading
import time

import pytest

from .conftest import S3_CREDS, tiny

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(1500)]  # two pipeline runs in the fixture

# hidden 64: 17,920 edges, two spline shards (16,384 rows a shard), so k-means has two actors to spread
PARAMS = {"data": {"n_ood": 0}, "train": {"hidden": 64}, "compress": {"ks": [16], "finetune_epochs": 0},
          "lutham": False}


def _watch_and_kill(cluster, node, loc, done: threading.Event, killed: dict) -> None:
    """Kill ``node`` once the run's training features are stored (training and the compression
    stages are still to come); record when."""
    from storage.store import ArtifactStore, StoreError

    while not done.is_set():
        try:
            if ArtifactStore(loc, create=False).ls("features"):
                cluster.remove_node(node)
                killed["at"] = time.time()
                return
        except StoreError:
            pass  # the store is not created yet
        time.sleep(0.3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_endpoint):
    """The pipeline on a 3-node cluster with S3 storage, a worker node killed mid-run; then the same
    parameters on a single-node local cluster with a folder store."""
    ray = pytest.importorskip("ray")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from ray.cluster_utils import Cluster

    from flows.pipeline import sharekan_pipeline
    from storage.store import ArtifactStore, parse_location
    from tasks.cluster import connect, ensure_token

    tmp = tmp_path_factory.mktemp("multinode")
    saved = dict(os.environ)
    os.environ.update({**S3_CREDS, "AWS_ENDPOINT_URL": s3_endpoint, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    ensure_token()
    try:
        with prefect_test_harness(server_startup_timeout=120):
            os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # Ray workers report here
            node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
            with pytest.MonkeyPatch.context() as mp:  # every node and the driver on loopback (Ray asks this)
                mp.setattr("ray._private.services.get_node_ip_address", lambda *_: "127.0.0.1")
                cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
                workers = [cluster.add_node(**node_args) for _ in range(2)]
                cluster.wait_for_nodes(timeout=120)
                try:
                    connect(address=cluster.address)
                    multi = tiny(tmp, **PARAMS, store="s3://artifacts/multinode", out=str(tmp / "out"))
                    done, killed = threading.Event(), {}
                    victim = workers[-1]
                    watcher = threading.Thread(target=_watch_and_kill,
                                               args=(cluster, victim, parse_location(multi.store), done, killed))
                    watcher.start()
                    try:
                        report = sharekan_pipeline(multi)
                    finally:
                        done.set()
                        watcher.join()
                    ended = time.time()
                    victim_id = victim.node_id[:12]
                    store = ArtifactStore(parse_location(multi.store), create=False)
                    book = store.get(report.stages["codebook K=16"].version).meta
                finally:
                    ray.shutdown()
                    cluster.shutdown()
            connect(num_cpus=2)
            try:
                single = sharekan_pipeline(tiny(tmp, **PARAMS, store=str(tmp / "store"), out=str(tmp / "out")))
            finally:
                ray.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return report, single, killed, ended, victim_id, book


def test_stages_and_kmeans_actors_spread_over_the_nodes(runs):
    report, _, _, _, victim_id, book = runs
    nodes = {s.node for s in report.stages.values()}
    assert len(nodes) >= 2, nodes  # the stages ran on more than one node
    assert len(book["shard_nodes"]) == 2 and victim_id not in book["shard_nodes"]  # two actors, two live nodes


def test_a_node_lost_mid_run_leaves_the_same_artifacts_and_is_reported(runs):
    report, single, killed, ended, victim_id, _ = runs
    assert "at" in killed and killed["at"] < ended, "the node was not killed while the run was going"
    assert report.lost_nodes == [victim_id]
    versions = {name: s.version for name, s in report.stages.items()}
    assert versions == {name: s.version for name, s in single.stages.items()}  # content-addressed: equal
    assert report.map50 == single.map50
    assert [r.model_dump() for r in report.variants] == [r.model_dump() for r in single.variants]
