"""The store on S3-compatible object storage: a real moto server on 127.0.0.1 (``s3_endpoint``)."""

import numpy as np
import pytest

from storage.shards import put_rows
from storage.store import ArtifactStore, S3Location, parse_location

from .conftest import S3_CREDS as CREDS
from .test_store import open_a_new_store_at_once


def test_store_round_trip_on_s3(s3_endpoint, monkeypatch):
    endpoint = s3_endpoint
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


def test_missing_bucket_is_named(s3_endpoint):
    endpoint = s3_endpoint
    loc = S3Location(bucket="no-such-bucket", endpoint_url=endpoint, allow_http=True,
                     access_key_id="testing", secret_access_key="testing", region="us-east-1")
    with pytest.raises(Exception, match="no-such-bucket"):
        ArtifactStore(loc)


def test_runs_opening_a_new_store_on_s3_at_once_all_succeed(s3_endpoint, tmp_path, monkeypatch):
    env = {**CREDS, "AWS_ENDPOINT_URL": s3_endpoint}
    versions = open_a_new_store_at_once("s3://artifacts/at-once", tmp_path, env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sorted(a.version for a in ArtifactStore(parse_location("s3://artifacts/at-once")).ls()) == versions
