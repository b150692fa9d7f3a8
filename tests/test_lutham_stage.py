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
    from sharekan.lutham.module import LuthamKAN
    from sharekan.vq_kan import compress_kan
    from storage.store import ArtifactStore
    from tasks.head import load_head

    tmp, params, report = gpu_run
    lut = report["lutham"]
    assert report["stages"]["lutham"]["created"] and lut["version"].startswith("lutham-")
    assert lut["validated"] and lut["all_written"] and lut["max_rel_error"] <= 1e-3, lut
    assert {c["inputs"] for c in lut["cases"]} == {"inside", "outside", "real"}
    assert abs(lut["map50_lutham"] - lut["map50_reference"]) <= 0.001
    assert [t["rows"] for t in lut["timings_us"]] == [1, 16, 128]  # 1 row, one 64-px image, 8 images
    assert all(t["LUTHAM"] > 0 and t["dense fp16"] > 0 for t in lut["timings_us"])

    store = ArtifactStore(params.store, create=False)
    art = store.get(lut["version"])
    arch = lut["arch"]
    assert art.meta["plan"]["total_bytes"] > 0 and art.meta["plan"]["codebook_size"] == lut["codebook_k"]
    head_v, codebook_v = art.inputs[0], art.inputs[1]
    assert head_v == report["stages"]["head"]["version"]
    head = load_head(store.get(head_v))
    cb = torch.from_numpy(store.get(codebook_v).array("codebook")[...])
    vq = compress_kan(head.kan, len(cb), codebooks=[cb] * len(head.kan.layers)).eval().cuda()
    module = load_cubin(art.array(f"cubin_{arch}")[...].tobytes())  # the stored binary, loaded as a user would
    stored = LuthamKAN(vq, max_rows=64, module=module)
    x = torch.randn(3, 7, stored.in_features, device="cuda")
    with torch.no_grad():
        ref = vq(x)
    y = stored(x)
    assert y.shape == (3, 7, stored.out_features)
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-3


def test_report_shows_the_validation_and_timings(gpu_run):
    tmp, params, report = gpu_run
    md = (tmp / "detection" / "report.md").read_text()
    assert f"## LUTHAM (codebook K={report['lutham']['codebook_k']})" in md
    assert "**validated** on" in md and "skipped: no GPU worker" not in md
    assert "| rows | dense fp32 | dense fp16 | torch VQ | LUTHAM | LUTHAM vs eager dense fp16 |" in md


def test_compile_flow_alone_reuses_the_stored_version(gpu_run):
    from flows.pipeline import compile_flow

    tmp, params, report = gpu_run
    s = report["stages"]
    again = compile_flow(s["head"]["version"], report["codebooks"][str(report["lutham"]["codebook_k"])],
                         s["features_test"]["version"], s["dataset"]["version"], params.store)
    assert not again["created"] and again["version"] == report["lutham"]["version"]


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
    s = report["stages"]
    with pytest.raises(ValidationFailed) as err:
        compile_and_validate(params.store, s["head"]["version"],
                             report["codebooks"][str(report["lutham"]["codebook_k"])],
                             s["features_test"]["version"], s["dataset"]["version"], max_rows=1024)
    msg = str(err.value)
    assert "case rows=17 inputs=inside: max relative error" in msg
    assert "case rows=9 inputs=inside: 1 output elements never written" in msg and "nothing stored" in msg
    assert [a.version for a in ArtifactStore(params.store, create=False).ls("lutham")] == [report["lutham"]["version"]]
