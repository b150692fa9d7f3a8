"""The store on S3-compatible object storage: a real moto server on 127.0.0.1, started here."""

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from storage.shards import put_rows
from storage.store import ArtifactStore, S3Location, parse_location

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
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


def test_store_round_trip_on_s3(endpoint, monkeypatch):
    for k, v in {**CREDS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    loc = parse_location("s3://artifacts/run1")
    assert isinstance(loc, S3Location) and loc.allow_http and loc.endpoint_url == endpoint
    store = ArtifactStore(loc)
    d, created = store.put("dataset", {"n": 3}, [], "c", {"x": np.arange(6.0).reshape(2, 3)})
    assert created
    rows = np.random.default_rng(0).standard_normal((1000, 13)).astype(np.float32)
    s, _ = put_rows(store, "splines", {"n": 1000}, [d.version], "c", {"coefficients": rows},
                    chunk_rows=100, chunks_per_shard=2, workers=2)
    again = ArtifactStore(parse_location("s3://artifacts/run1"))
    assert [a.version for a in again.ls()] == [d.version, s.version]
    assert np.array_equal(again.get(s.version).array("coefficients")[...], rows)
    assert again.lineage(s.version)["inputs"][0]["version"] == d.version


def test_missing_bucket_is_named(endpoint):
    loc = S3Location(bucket="no-such-bucket", endpoint_url=endpoint, allow_http=True,
                     access_key_id="testing", secret_access_key="testing", region="us-east-1")
    with pytest.raises(Exception, match="no-such-bucket"):
        ArtifactStore(loc)
