"""The Prefect flows end to end on a tiny synthetic set: a real temporary Prefect server
(``prefect_test_harness``, once for this module), a real local Ray cluster, a real store."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from sharekan.detection.head import HeadConfig, KANDetectionHead
from storage.files import load_tensors
from storage.shards import read_shard
from storage.store import ArtifactStore

from .conftest import tiny

EDGES = 256 * 8 + 8 * 24
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(prefect_api, tmp_path_factory):
    from flows.pipeline import sharekan_pipeline

    tmp = tmp_path_factory.mktemp("flow")
    params = tiny(tmp, compress={"side_dtypes": ["fp16", "int8", "int4"], "codebook_dtype": "fp16"})
    state = sharekan_pipeline(params, return_state=True)
    assert state.is_completed(), state
    return tmp, params, state.result(), state.state_details.flow_run_id


def test_report_and_exports(run):
    tmp, params, report, _ = run
    out = tmp / "detection"
    saved = json.loads((out / "report.json").read_text())
    from flows.results import RunReport

    again = RunReport.model_validate_json((out / "report.json").read_text())  # typed both ways, K keys ints
    assert again == report and set(again.codebooks) == {16, 256}
    assert 0.0 <= saved["map50"] <= 1.0
    names = [r["variant"] for r in saved["variants"]]
    tuned = [f"VQ K={k} {dt} fine-tuned" for k in (16, 256) for dt in ("int8", "int4")]
    assert names == ["dense fp32", "int8 PTQ", "pruned 10%", "pruned 30%", "pruned 50%",
                     "VQ K=16 fp16", "VQ K=16 int8", "VQ K=16 int4", "VQ K=256 fp16", "VQ K=256 int8",
                     "VQ K=256 int4", *tuned]
    by_name = {r["variant"]: r for r in saved["variants"]}
    assert by_name["VQ K=256 int4"]["storage_bytes"] < by_name["VQ K=256 int8"]["storage_bytes"]
    for row in saved["variants"]:
        assert row["storage_bytes"] > 0 and row["runtime_bytes_8img"] >= row["runtime_bytes_1img"] > 0
        assert row["compression"] == pytest.approx(saved["variants"][0]["storage_bytes"] / row["storage_bytes"])
    assert all(r["vq_forward_rel_diff"] < 1e-4 for r in saved["compression"] if r["variant"].startswith("VQ"))
    assert all(0 <= r["map50_ood"] <= 1 and "delta_map50_ood" in r for r in saved["variants"])  # the shifted split
    md = (out / "report.md").read_text()
    assert "| Δ OOD (points) |" in md and "```" not in md.split("## Compression")[1].split("##")[0]  # a Markdown table
    assert list(saved["stages"]) == ["dataset", "backbone", "features_train", "features_test", "features_ood", "head",
                                     "evaluation", "splines",
                                     "codebook K=16", "assignment K=16", "codebook K=256", "assignment K=256",
                                     *(f"encoded K={k} {dt}" for k in (16, 256) for dt in ("fp16", "int8", "int4")),
                                     "finetune K=16 int8", "finetune K=16 int4", "finetune K=256 int8",
                                     "finetune K=256 int4", "compression", "compression_ood", "lutham"]
    for name, stage in ((k, s) for k, s in saved["stages"].items() if k != "lutham"):
        assert stage["created"] and stage["seconds"] >= 0 and stage["version"].startswith(stage["stage"] + "-")
    assert [(r["kind"], r["k"], r["dtype"], r["finetuned"]) for r in saved["variants"][-7:]] == [
        ("vq", 256, "fp16", False), ("vq", 256, "int8", False), ("vq", 256, "int4", False),
        ("vq", 16, "int8", True), ("vq", 16, "int4", True), ("vq", 256, "int8", True), ("vq", 256, "int4", True)]
    assert by_name["VQ K=256 int4 fine-tuned"]["storage_bytes"] == by_name["VQ K=256 int4"]["storage_bytes"]
    coco = COCO(str(out / "coco_gt.json"))
    assert len(coco.getImgIds()) == 6
    assert all(d["category_id"] in coco.getCatIds() for d in json.loads((out / "coco_detections.json").read_text()))
    md = (out / "report.md").read_text()
    assert "VQ K=256 int8" in md and "data:image/png;base64," in md and "[size_vs_map.png](size_vs_map.png)" in md
    assert (out / "size_vs_map.png").read_bytes()[:4] == b"\x89PNG" and (out / "codebook.png").is_file()
    run_dir = out / "runs" / saved["run_name"]  # this run's own folder; out/ holds a copy of the latest
    assert saved["run_name"] and (run_dir / "report.json").read_bytes() == (out / "report.json").read_bytes()
    assert {p.name for p in run_dir.iterdir()} == {"report.json", "report.md", "size_vs_map.png", "codebook.png"}


def test_no_gpu_worker_marks_lutham_skipped(run):
    tmp, _, report, _ = run
    assert report.stages["lutham"].skipped == "skipped: no GPU worker" and report.stages["lutham"].version is None
    from sharekan.detection.compare import VariantRow, runtime_variant
    chosen = runtime_variant([VariantRow.from_dict(r) for r in report.compression])
    assert (report.lutham.k, report.lutham.side_dtype) == (chosen.k, "fp16") and chosen.k in (16, 256)
    md = (tmp / "detection" / "report.md").read_text()
    assert f"## LUTHAM (VQ K={chosen.k} fp16)" in md and "skipped: no GPU worker" in md
    assert "| lutham | - | skipped: no GPU worker |" in md and "None" not in md.split("## Stages")[1].split("##")[0]


def test_every_stage_is_a_versioned_artifact_with_lineage(run):
    tmp, params, report, _ = run
    store = ArtifactStore(tmp / "store", create=False)
    stages = {name: s.model_dump() for name, s in report.stages.items()}
    assert store.get(stages["compression"]["version"]).meta["rows"][0]["variant"] == "dense fp32"
    codebook = store.get(report.codebooks[256])
    assert codebook.array("codebook").shape == (256, 13)
    splines = store.get(codebook.inputs[0])
    assert splines.stage == "splines" and splines.inputs == [stages["head"]["version"]]
    shard0 = read_shard(splines, "shapes", 0)
    assert np.array_equal(shard0, splines.array("shapes")[:16_384]) and shard0.shape == (EDGES, 13)
    assignment = store.ls("assignment")
    assert len(assignment) == 2 and {a.inputs[0] for a in assignment} == set(report.codebooks.values())
    feats = store.get(stages["features_train"]["version"])
    assert feats.array("feats").shape[0] == 16
    assert store.get(stages["features_ood"]["version"]).array("feats").shape[0] == 4
    assert feats.inputs == [stages["dataset"]["version"], stages["backbone"]["version"]]
    assert feats.meta["backbone"]["pretrained"] and stages["backbone"]["version"] in feats.meta["backbone"]["weights"]
    backbone = store.get(stages["backbone"]["version"])
    assert backbone.inputs == [stages["dataset"]["version"]] and len(backbone.meta["history"]) == 1
    head = store.get(stages["head"]["version"])
    assert set(head.inputs) == {stages["features_train"]["version"], stages["dataset"]["version"]}
    assert len(store.ls("encoded")) == 6  # one encoded head per (K, width), read by everything after it
    encoded = store.get(stages["encoded K=256 int4"]["version"])
    assert encoded.inputs == [stages["head"]["version"], report.codebooks[256],
                              next(a.version for a in assignment if a.inputs[0] == report.codebooks[256])]
    assert np.array_equal(encoded.array("layers.0.indices")[...].reshape(-1),  # the distributed assignment's indices
                          store.get(encoded.inputs[2]).array("indices")[:8 * 256])
    tuned = store.get(stages["finetune K=256 int4"]["version"])
    assert tuned.inputs == [stages["head"]["version"], encoded.version, stages["features_train"]["version"],
                            stages["dataset"]["version"]]
    assert tuned.meta["encoded"]["meta"]["variant"] == {"kind": "vq", "k": 256, "dtype": "int4", "sparsity": None,
                                                        "finetuned": True}
    assert len(tuned.meta["history"]) == params.compress.finetune_epochs
    table = store.get(stages["compression"]["version"])  # the table scores the stored encoded heads
    assert set(table.inputs[3:]) == {s["version"] for n, s in stages.items() if n.startswith(("encoded", "finetune"))}


def test_export_hands_over_a_fine_tuned_int4_head_that_loads_bit_for_bit(run, tmp_path):
    """`sharekan export` writes one file; `sharekan.load` rebuilds the stored head from it alone."""
    import subprocess
    import sys

    import sharekan
    from sharekan.encoded import FORMAT_VERSION, FormatError
    from storage.files import load_tensors, save_tensors
    from tasks.compress import load_encoded

    tmp, _, report, _ = run
    version = report.stages["finetune K=256 int4"].version
    out = tmp_path / "head.safetensors"
    done = subprocess.run([sys.executable, "-m", "cli.main", "export", version, "--out", str(out),
                           "--store", str(tmp / "store")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {out}" in done.stdout and "K=256 int4 fine-tuned" in done.stdout
    loaded = sharekan.load(out)
    stored = load_encoded(ArtifactStore(tmp / "store", create=False), version)
    want, got = stored.kan.state_dict(), loaded.kan.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) and want[n].dtype == got[n].dtype
                                             for n in want)
    x = torch.randn(50, 256) * 2
    assert torch.equal(loaded.kan(x), stored.kan(x))
    assert loaded.meta["lineage"]["version"] == version and loaded.meta["variant"]["finetuned"]
    head = loaded.detection_head()  # the whole compressed detector head, standardisation and bias included
    assert torch.equal(head(x), stored.detection_head()(x)) and head(x).shape == (50, 24)
    tensors, meta = load_tensors(out)
    save_tensors(tmp_path / "future.safetensors", tensors, {**meta, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(FormatError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        sharekan.load(tmp_path / "future.safetensors")
    bad = subprocess.run([sys.executable, "-m", "cli.main", "export", report.codebooks[16], "--store",
                          str(tmp / "store")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 1 and "not a compressed head" in bad.stderr


def test_the_codebook_is_stored_at_the_width_asked_for_fine_tuned_too(run):
    """compress.codebook_dtype = fp16 (this module's run): every encoded head keeps an fp16 codebook,
    the codebook's bytes in the table are K × C × 2, and its values are the k-means codebook's rounded."""
    from tasks.compress import load_encoded

    tmp, _, report, _ = run
    store = ArtifactStore(tmp / "store", create=False)
    fitted = torch.from_numpy(store.get(report.codebooks[256]).array("codebook")[...])
    for name in ("encoded K=256 int4", "finetune K=256 int4"):
        (book,) = load_encoded(store, report.stages[name].version).kan.codebooks()
        assert book.dtype == torch.float16, name
    (book,) = load_encoded(store, report.stages["encoded K=256 int4"].version).kan.codebooks()
    assert torch.equal(book, fitted.half())
    rows = store.get(report.stages["compression"].version).meta["rows"]
    row = next(r for r in rows if r["variant"] == "VQ K=256 int4")
    assert row["components"]["codebook"] == fitted.numel() * 2


def test_checkpoint_restores_the_head(run):
    tmp, _, _, _ = run
    tensors, meta = load_tensors(tmp / "detection" / "checkpoints" / "head.safetensors")
    assert meta["epoch"] == 2 and meta["backbone"]["name"] == "resnet18"
    cfg = HeadConfig(**{**meta["config"], "grid_range": tuple(meta["config"]["grid_range"])})
    head = KANDetectionHead(cfg)
    head.load_state_dict(tensors)
    assert head(torch.randn(3, cfg.in_channels)).shape == (3, 24)


def test_task_runs_and_artifacts_reach_the_flows_api(run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterParentFlowRunId, LogFilter
    from prefect.utilities.asyncutils import run_coro_as_sync

    _, _, _, flow_run_id = run

    async def query():
        async with get_client() as client:
            subflows = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id] + [f.id for f in subflows]
            task_runs = [t for fid in ids for t in await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [fid]}))]
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
            return subflows, task_runs, arts, await client.read_flow_run(flow_run_id), logs
    subflows, task_runs, arts, parent, logs = run_coro_as_sync(query())
    # the report's path reaches the run's Logs tab in the UI
    assert any(x.message.startswith("report: ") and x.message.split()[1].endswith("report.json") for x in logs), \
        [x.message for x in logs][-5:]
    # no name given: Prefect's generated one, then what the run ran (a name a user gives is kept: test_deployments)
    assert re.fullmatch(r"[a-z]+-[a-z]+ · pipeline synthetic G=10 K=16,256 seed=0", parent.name), parent.name
    assert len(subflows) == 3 and all(f.state.is_completed() for f in subflows)  # train, compress, compile
    names = {f.name.split(" · ")[-1].split()[0]: f for f in subflows}
    assert names["train"].name.endswith(" · train resnet18 hidden=8 G=10 epochs=2") and set(names) == {
        "train", "compress", "compile"}
    assert names["compile"].state.name == "Skipped" and names["train"].state.name == "Completed"
    by_name = {t.task_key.split("-")[0] if t.task_key else t.name for t in task_runs}
    assert {"dataset", "pretrain", "features", "train", "finetune", "evaluate", "splines", "codebook", "assignment", "compression"} <= by_name
    assert all(t.state.is_completed() for t in task_runs)
    assert {a.key for a in arts} >= {"sharekan-report", "sharekan-compression", "sharekan-stages"}
    by_key = {a.key: a for a in arts}
    table = by_key["sharekan-compression"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert table[0]["variant"] == "dense fp32" and table[0]["mAP at IoU 0.5"].count(".") == 1
    assert "](size_vs_map.png)" not in by_key["sharekan-report"].data  # no file links that open a blank page


def test_rerun_reuses_every_stage_and_a_change_retrains(run):
    from flows.pipeline import sharekan_pipeline

    tmp, params, report, _ = run
    again = sharekan_pipeline(params)
    assert not any(s.created for k, s in again.stages.items() if k != "lutham")
    assert {k: s.version for k, s in again.stages.items()} == {k: s.version for k, s in report.stages.items()}
    assert again.map50 == report.map50
    changed = sharekan_pipeline(tiny(tmp, train={"epochs": 3}, compress={"ks": [16]}))
    assert changed.stages["head"].version != report.stages["head"].version
    assert not changed.stages["features_train"].created and changed.stages["head"].created


def test_the_form_shows_every_bound_it_enforces():
    from flows.params import PipelineParams

    defs = PipelineParams.model_json_schema()["$defs"]
    assert defs["DataParams"]["properties"]["n_train"]["description"].endswith("(8–100,000)")
    assert defs["CompressParams"]["properties"]["ks"]["description"].endswith("(1 or more items)")
    for name, model in defs.items():
        for field, prop in model.get("properties", {}).items():
            bounded = any(k in branch for branch in [prop, *prop.get("anyOf", [])]
                          for k in ("minimum", "maximum", "exclusiveMinimum", "minItems"))
            assert not bounded or prop.get("description", "").endswith(")"), (name, field)


def test_the_form_has_no_none_switches_and_its_defaults_and_empty_fields_validate():
    """An optional field ("empty = …") is a plain input of its type, not a switch to "None"; the
    defaults the form starts from hold no null, and the server's validation accepts a form with an
    optional field left out or sent as null (the flow then applies its default)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.params import PipelineParams
    from flows.pipeline import sharekan_pipeline

    schema = parameter_schema(sharekan_pipeline.fn).model_dump_for_openapi()
    assert '"null"' not in json.dumps(schema)
    root = schema["definitions"]["DataParams"]["properties"]["root"]
    assert root["type"] == "string" and "default" not in root
    default = schema["properties"]["params"]["default"]
    assert "null" not in json.dumps(default) and PipelineParams.model_validate(default) == PipelineParams()
    for form in (default, {"data": {"n_train": 16}}, {"store": None, "data": {"seed": None}}):
        assert not validate({"params": form}, schema, raise_on_error=False, preprocess=True, ignore_required=True)
    assert PipelineParams.model_validate({"store": None, "data": {"seed": None}}) == PipelineParams()


def test_invalid_parameters_are_refused_before_anything_runs(prefect_api, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import sharekan_pipeline

    with pytest.raises(ParameterTypeError, match="epochs"):
        sharekan_pipeline({"train": {"epochs": 0}, "store": str(tmp_path / "s")})
    with pytest.raises(ParameterTypeError, match="kmeans_mode"):
        sharekan_pipeline({"compress": {"kmeans_mode": "kmeans++"}, "store": str(tmp_path / "s")})
    # rules across fields: the plan, the flow's first step, before any stage, one line naming the field
    from flows.plan import PlanError
    with pytest.raises(PlanError, match=r"lutham_k: 4096 is not among the codebook sizes fitted \(\[16, 256\]\)"):
        sharekan_pipeline({"compress": {"ks": [16, 256]}, "lutham_k": 4096, "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"compress.ks: \[16\] listed more than once"):
        sharekan_pipeline({"compress": {"ks": [16, 16]}, "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"compress.ks: \[65536\] exceed the head's 8,384 edges"):
        sharekan_pipeline({"train": {"hidden": 8, "backbone": "resnet50"}, "compress": {"ks": [256, 65536]},
                           "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"lutham_k: 65536 is not among the codebook sizes fitted "
                                             r"\(\[256, 4096, 8384\]\)"):  # a default K the head is too small for
        sharekan_pipeline({"train": {"hidden": 8, "backbone": "resnet50"}, "lutham_k": 65536,
                           "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"compress.ks: \[4096\] exceed the head's 2,240 edges"):
        sharekan_pipeline({"train": {"hidden": 8}, "compress": {"ks": [256, 4096]}, "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"finetune_side_dtypes \['int4'\] are not among"):
        sharekan_pipeline({"compress": {"side_dtypes": ["fp16", "int8"]}, "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"lutham_side_dtype: fp16 is not among compress.side_dtypes \['int8'\]"):
        sharekan_pipeline({"compress": {"side_dtypes": ["int8"], "finetune_side_dtypes": ["int8"]},
                           "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match=r"lutham_finetuned: no fine-tuned int4 head is planned"):
        sharekan_pipeline({"compress": {"finetune_epochs": 0}, "lutham_side_dtype": "int4", "lutham_finetuned": True,
                           "store": str(tmp_path / "s")})
    with pytest.raises(PlanError, match="data.root: .* has no VOCdevkit folder"):
        sharekan_pipeline({"data": {"root": str(tmp_path)}, "store": str(tmp_path / "s")})
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def base(run):
    """The studies' base: the pipeline run's own parameters, so its stored stages serve them."""
    tmp, params, _, _ = run
    return tmp, params.model_copy(update={"lutham": False}).model_dump()


def test_a_sweep_over_data_seeds_plans_one_data_set_and_backbone_per_data_seed(tmp_path):
    from flows.params import ParetoParams

    from flows.study_plan import pareto_plans

    params = ParetoParams(base=tiny(tmp_path), grid_sizes=[10, 5], seeds=[3, 4], data_seeds=[0, 1], ks=[16])
    plans = pareto_plans(params)
    assert sorted(plans) == sorted((g, w, s) for g in (10, 5) for w in (0, 1) for s in (3, 4))
    for (g, w, s), plan in plans.items():
        assert (plan.data_seed, plan.train.pretrain.seed, plan.train.head.seed) == (w, w, s)
        assert plan.params.out.endswith(f"G{g}-data{w}-seed{s}")
    # the runs of one data seed share their features; the two data seeds do not
    feats = {w: {p.train.features["train"] for (_, d, _), p in plans.items() if d == w} for w in (0, 1)}
    assert len(feats[0]) == len(feats[1]) == 1 and feats[0] != feats[1]


def test_pareto_sweep_flow(base):
    """G = 10 seed 0 is the pipeline run above (its head is reused), G = 5 and G = 3 seed 0 new heads,
    three runs at once on the 2-CPU cluster (their k-means fits queue for it; averaging over seeds:
    test_studies)."""
    from flows.studies import ParetoParams, pareto_sweep

    tmp, b = base
    params = ParetoParams(base=b, grid_sizes=[10, 5, 3], seeds=[0], data_seeds=[0], ks=[16], side_dtypes=["int4"],
                          finetune=False, parallel=3, out=str(tmp / "pareto"))
    result = pareto_sweep(params)
    rows = {(r["grid_size"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(g, v) for g in (10, 5, 3) for v in ("dense fp32", "int8 PTQ", "pruned 10%", "pruned 30%",
                                                           "pruned 50%", "VQ K=16 int4")}
    assert all(r["seeds"] == ["0/0"] and "delta_map_ood_mean" in r for r in result["rows"])
    assert rows[(5, "VQ K=16 int4")]["storage_bytes"] < rows[(10, "VQ K=16 int4")]["storage_bytes"] < \
        rows[(10, "dense fp32")]["storage_bytes"]
    front = [r for r in result["rows"] if r["pareto"]]
    assert front and all(not any(o["storage_bytes"] < f["storage_bytes"] and o["map50_mean"] > f["map50_mean"]
                                 for o in result["rows"]) for f in front)
    saved = json.loads((tmp / "pareto" / "pareto.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    from flows.study_report import PARETO_COLUMNS, table_rows
    from sharekan.table import format_table

    assert "n < 2" in format_table(table_rows(result), PARETO_COLUMNS)  # what `sharekan study` prints
    assert (tmp / "pareto" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # one data set, backbone and set of features for every grid size and seed; a re-run does no work
    a, b = (json.loads((tmp / "pareto" / f"G{g}-data0-seed0" / "report.json").read_text())["stages"] for g in (10, 5))
    assert all(a[k]["version"] == b[k]["version"] for k in ("dataset", "backbone", "features_train"))
    assert a["head"]["version"] != b["head"]["version"]
    assert result["command"].startswith("sharekan study pareto --params '{") and '"grid_sizes":[10,5,3]' in result["command"]
    again = pareto_sweep(params)
    assert again["rows"] == result["rows"]
    assert not a["head"]["created"]  # G = 10, seed 0: the pipeline run's head
    stages = json.loads((tmp / "pareto" / "G5-data0-seed0" / "report.json").read_text())["stages"]
    assert not any(s["created"] for s in stages.values() if s.get("version"))


def test_shared_codebook_study_from_the_cli(base):
    """`sharekan study shared` as a user runs it (no $PREFECT_API_URL: a temporary server of its own,
    and its own local Ray cluster), into the pipeline run's store."""
    from flows.studies import SharedParams, shared_codebook

    tmp, b = base
    b = {**b, "compress": {**b["compress"], "finetune_codebook": True}}  # the study honours the whole form
    params = SharedParams(base=b, head_seeds=[0, 1], transfer_seed=2, k=16, side_dtypes=["int4"],
                          out=str(tmp / "shared"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_ADDRESS"))}
    done = subprocess.run([sys.executable, "-m", "cli.main", "study", "shared", "--params", params.model_dump_json()],
                          cwd=tmp, env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # the flow ran on the server the CLI started and named, not on one Prefect started for itself,
    # and the workers' task-run events reached it
    assert "Prefect API (temporary, for this run)" in out
    assert "Starting temporary server" not in out and "failed to process item" not in out, out[-3000:]
    assert "Δ other domain" in out and "report: " in out  # the table it prints
    result = json.loads((tmp / "shared" / "shared.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"VQ K=16 int4", "VQ K=16 int4 fine-tuned"}
    r = rows["VQ K=16 int4"]
    separate = r["dense_bytes"] / r["separate_ratio"]  # each head with a codebook of its own size
    assert r["heads"] == 2 and separate - r["shared_bytes"] == pytest.approx(r["codebook_bytes"])  # one book, not two
    assert r["ratio"] == pytest.approx(r["dense_bytes"] / r["shared_bytes"]) and r["ratio"] > r["separate_ratio"]
    assert set(r["per_head_delta"]) == set(r["per_head_own_delta"]) == {"0", "1"} and -1 <= r["transfer_delta"] <= 1
    low, high = r["delta_map_ci95"]  # the paired per-head deltas' interval
    assert r["delta_map_mean"] == pytest.approx(sum(r["per_head_delta"].values()) / 2)
    assert low <= r["delta_map_mean"] <= high
    assert -1 <= r["other_domain_delta"] <= 1 and -1 <= r["other_domain_own_delta"] <= 1
    assert set(result["dense_map50"]) == {"0", "1", "2", "other domain"}
    store = ArtifactStore(b["store"], create=False)
    book = store.get(result["codebook"])
    assert len(book.inputs) == 2 and all(v.startswith("splines-") for v in book.inputs)
    # the other domain's images went through the same frozen backbone
    trains = [a for a in store.ls("features") if a.params["split"] == "train"]
    assert any(a.inputs[1:] == o.inputs[1:] and a.inputs[0] != o.inputs[0] for a in trains for o in trains)
    tuned = store.ls("finetune")
    mine = [a for a in tuned if a.params["k"] == 16 and a.params["train_codebook"]]
    assert len(mine) == 8  # 4 heads × (shared, own codebook), every one with its codewords trained
    with pytest.raises(ValueError, match="unseen head must be unseen"):
        shared_codebook(SharedParams(base=b, head_seeds=[0, 1], transfer_seed=1, k=16, out=str(tmp / "x")))
