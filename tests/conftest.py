"""Shared fixtures: seeded RNG, small random KANs, tiny pipeline parameters, and a temporary
Prefect API with a local Ray cluster (once per test module that asks for it)."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


def randomize(model, spline_scale: float = 0.5):
    """Give a KAN non-trivial weights (its init is near zero splines)."""
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.normal_(0, spline_scale)
            layer.base_weight.normal_(0, 0.3)
            if layer.enable_standalone_scale_spline:
                layer.spline_scaler.uniform_(0.5, 1.5)
    return model


_EXIT = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with the session's exit status once pytest has reported, without interpreter
    finalization: a full run once died with SIGSEGV after printing "N passed" (1 of 2 runs from a
    fresh clone; native I/O threads of the libraries torn down with the interpreter), which turns a
    green suite red. Nothing of the tests' outcome is changed: the status is pytest's own."""
    if _EXIT in config.stash:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT])


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where CUDA is absent (CI); they run on the device machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny(tmp, **over):
    """Pipeline parameters small enough for CI: 16 training images (6 test, 4 shifted), ResNet-18 pretrained for one epoch, a KAN
    [256, 8, 24]."""
    from flows.params import PipelineParams

    base = {"data": {"n_train": 16, "n_test": 6, "n_ood": 4},
            "train": {"size": 64, "backbone": "resnet18", "pretrain_epochs": 1, "hidden": 8, "epochs": 2,
                      "batch_size": 256},
            "compress": {"ks": [16, 256], "kmeans_niter": 5},
            "store": str(tmp / "store"), "out": str(tmp / "detection")}
    for section, values in over.items():
        base[section] = {**base[section], **values} if isinstance(values, dict) else values
    return PipelineParams.model_validate(base)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for the test module, stopped at its end."""
    ray = pytest.importorskip("ray")
    from tasks.cluster import connect

    resources = connect(num_cpus=2)
    yield resources
    ray.shutdown()


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server (``prefect_test_harness``) and a local Ray cluster whose workers
    report to it; both stopped at the end of the module."""
    ray = pytest.importorskip("ray")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks.cluster import connect

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # Ray workers report here
        connect(num_cpus=2)
        yield PREFECT_API_URL.value()
        ray.shutdown()
        del os.environ["PREFECT_API_URL"]


S3_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket ``artifacts``; its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()",
                             "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    import boto3
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="artifacts")
    yield url
    proc.terminate()
    proc.wait(timeout=10)

