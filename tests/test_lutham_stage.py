"""The LUTHAM stage on a GPU worker, for real: the tiny pipeline under a temporary Prefect server
with a local Ray cluster that has the GPU, then the stored binary, the report, and a validation
that fails on an injected wrong kernel result. Skipped without CUDA or Ray (runs on the device)."""

import pytest
import torch

from .conftest import tiny

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_run(prefect_api, tmp_path_factory):
    import ray

    from flows.pipeline import sharekan_pipeline

    assert ray.cluster_resources().get("GPU", 0) >= 1, "the local Ray cluster does not see the GPU"
    tmp = tmp_path_factory.mktemp("gpu")
    params = tiny(tmp)
    report = sharekan_pipeline(params)
    return tmp, params, report


def test_compile_flow_stores_the_validated_binary_and_plan(gpu_run):
    from sharekan.lutham.compile import load_cubin
    from sharekan.lutham.module import LuthamKAN, resolve_records
    from sharekan.lutham.packed import edge_bytes
    from storage.store import ArtifactStore
    from tasks.compress import load_encoded

    tmp, params, report = gpu_run
    lut = report.lutham
    assert lut.stage.created and lut.stage.version.startswith("lutham-")
    assert lut.validated and lut.all_written and lut.max_rel_error <= 1e-3, lut
    assert {c["inputs"] for c in lut.cases} == {"inside", "outside", "real"}
    assert abs(lut.map50_lutham - lut.map50_reference) <= 0.001
    assert [t["rows"] for t in lut.timings_us] == [1, 16, 128]  # 1 row, one 64-px image, 8 images
    assert all(t["LUTHAM"] > 0 and t["dense fp16"] > 0 for t in lut.timings_us)
    assert 0 < lut.arena_bytes and lut.dense_fp32_peak_bytes > 0

    store = ArtifactStore(params.store, create=False)
    art = store.get(lut.stage.version)
    arch = lut.arch
    assert art.meta["plan"]["total_bytes"] > 0 and art.meta["plan"]["codebook_size"] == lut.k
    head_v, encoded_v = art.inputs[0], art.inputs[1]
    assert head_v == report.stages["head"].version
    assert encoded_v == report.stages[f"encoded K={lut.k} fp16"].version  # the stored encoded head, not a re-encoding
    vq = load_encoded(store, encoded_v).kan.cuda()
    records = art.meta["summary"]["records"]
    assert records == resolve_records(vq)
    if records == "packed":  # the bytes the encoded head keeps: 1 + 3 × 2 an edge, outputs in groups of 8
        padded = sum(lay.in_features * -(-lay.out_features // 8) * 8 for lay in vq.layers)
        assert lut.edge_bytes == edge_bytes(lut.k, "fp16") * padded / sum(lay.in_features * lay.out_features
                                                                           for lay in vq.layers)
    else:
        assert lut.edge_bytes >= 8  # v12: 8-byte records
    module = load_cubin(art.array(f"cubin_{arch}")[...].tobytes(), "lutham" if records == "v12" else "packed")
    stored = LuthamKAN(vq, max_rows=64, records=records, module=module)  # the stored binary, as a user loads it
    x = torch.randn(3, 7, stored.in_features, device="cuda")
    with torch.no_grad():
        ref = vq(x)
    y = stored(x)
    assert y.shape == (3, 7, stored.out_features)
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-3


def test_report_shows_the_validation_and_timings(gpu_run):
    tmp, params, report = gpu_run
    md = (tmp / "detection" / "report.md").read_text()
    assert f"## LUTHAM ({report.lutham.variant})" in md
    assert "**validated** on" in md and "skipped: no GPU worker" not in md and " B an edge (records), arena " in md
    assert "| rows | dense fp32 | dense fp16 | torch VQ | LUTHAM | LUTHAM vs eager dense fp16 |" in md


def test_compile_flow_alone_reuses_the_stored_version(gpu_run):
    from flows.pipeline import compile_flow

    tmp, params, report = gpu_run
    s = report.stages
    again = compile_flow(s["head"].version, s[f"encoded K={report.lutham.k} fp16"].version,
                         s["features_test"].version, s["dataset"].version, params.store)
    assert not again.created and again.version == report.lutham.stage.version


def test_an_exported_fine_tuned_int4_head_runs_under_lutham_as_stored(gpu_run, tmp_path):
    """`sharekan export` → `LuthamKAN.from_file` on the GPU computes what the stored head computes."""
    import subprocess
    import sys

    import sharekan
    from sharekan.lutham.module import LuthamKAN

    tmp, params, report = gpu_run
    version = report.stages["finetune K=256 int4"].version
    out = tmp_path / "head.safetensors"
    done = subprocess.run([sys.executable, "-m", "cli.main", "export", version, "--out", str(out), "--store",
                           params.store], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lut = LuthamKAN.from_file(out, max_rows=512)
    ref = sharekan.load(out, device="cuda").kan
    for rows in (1, 37, 300):
        x = torch.randn(rows, lut.in_features, device="cuda") * 2
        with torch.no_grad():
            want = ref(x)
        assert float((lut(x) - want).abs().max() / want.abs().max()) <= 1e-3, rows


def test_a_wrong_kernel_result_fails_the_stage_naming_the_case(gpu_run, monkeypatch):
    from sharekan.lutham import runtime
    from storage.store import ArtifactStore
    from tasks.lutham import ValidationFailed, compile_and_validate

    tmp, params, report = gpu_run
    forward = runtime.LuthamHead.forward

    def wrong(self, x):  # one wrong element at 17 rows, one never written at 9 rows
        y = forward(self, x)
        with self.stream:
            if y.shape[0] == 17:
                y[3, 2] += 10 * float(abs(y).max()) + 1
            elif y.shape[0] == 9:
                y[0, 0] = float("nan")
        return y

    monkeypatch.setattr(runtime.LuthamHead, "forward", wrong)
    s = report.stages
    with pytest.raises(ValidationFailed) as err:
        compile_and_validate(params.store, s["head"].version, s[f"encoded K={report.lutham.k} fp16"].version,
                             s["features_test"].version, s["dataset"].version, max_rows=1024)
    msg = str(err.value)
    assert "case rows=17 inputs=inside: max relative error" in msg
    assert "case rows=9 inputs=inside: 1 output elements never written" in msg and "nothing stored" in msg
    assert [a.version for a in ArtifactStore(params.store, create=False).ls("lutham")] == [report.lutham.stage.version]
