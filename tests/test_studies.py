"""Study aggregates (pure) and the study flows end to end on tiny data: the K×G sweep and one
codebook for many heads (a real temporary Prefect server and local Ray cluster)."""

import json

import pytest

from sharekan.studies import pareto_front, seed_averaged, shared_storage

from .conftest import tiny


def _row(kind, map50, delta, storage, k=None, dtype=None, finetuned=False, book=0):
    name = {"dense": "dense fp32"}.get(kind, f"VQ K={k} {dtype}" + (" fine-tuned" if finetuned else ""))
    return {"variant": name, "kind": kind, "k": k, "dtype": dtype, "sparsity": None, "finetuned": finetuned,
            "map50": map50, "delta_map50": delta, "storage_bytes": storage, "compression": 1000 / storage,
            "components": {"codebook": book}}


def test_seed_averaging_groups_by_grid_and_variant_with_the_spread():
    runs = [(10, 0, [_row("dense", 0.7, 0.0, 1000), _row("vq", 0.68, -0.02, 100, 16, "int4")]),
            (10, 1, [_row("dense", 0.6, 0.0, 1000), _row("vq", 0.6, 0.0, 100, 16, "int4")]),
            (5, 0, [_row("dense", 0.5, 0.0, 600)])]
    rows = {(r["grid_size"], r["kind"]): r for r in seed_averaged(runs)}
    vq = rows[(10, "vq")]
    assert vq["seeds"] == [0, 1] and vq["side_bits"] == 4 and vq["heads"] == 1
    assert vq["delta_map_mean"] == pytest.approx(-0.01) and vq["delta_map_std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert rows[(5, "dense")]["delta_map_std"] == 0.0 and rows[(5, "dense")]["seeds"] == [0]


def test_pareto_front_keeps_only_undominated_rows():
    rows = [{"n": n, "storage_bytes": s, "map50_mean": m} for n, s, m in
            (("a", 100, 0.5), ("b", 200, 0.6), ("c", 300, 0.55), ("d", 50, 0.4), ("e", 200, 0.6))]
    assert [r["n"] for r in pareto_front(rows)] == ["d", "a", "b", "e"]


def test_shared_storage_counts_the_codebook_once():
    dense = [_row("dense", 0.7, 0, 1000)] * 3
    shared = [_row("vq", 0.7, 0, 150, 16, "int4", book=60)] * 3
    t = shared_storage(dense, shared)
    assert t["shared_bytes"] == 60 + 3 * 90 and t["ratio"] == pytest.approx(3000 / 330)
    assert t["separate_ratio"] == pytest.approx(3000 / 450)
    with pytest.raises(ValueError, match="codebooks differ"):
        shared_storage(dense[:2], [shared[0], _row("vq", 0.7, 0, 150, 16, "int4", book=70)])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    return tmp, tiny(tmp, data={"n_ood": 4}, compress={"finetune_epochs": 1}, lutham=False).model_dump()


def test_pareto_sweep_flow(prefect_api, base):
    from flows.studies import SweepParams, pareto_sweep

    tmp, b = base
    params = SweepParams(base=b, grid_sizes=[3, 5], seeds=[0, 1], ks=[16], side_dtypes=["int4"], parallel=2,
                         out=str(tmp / "pareto"))
    result = pareto_sweep(params)
    rows = {(r["grid_size"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(g, v) for g in (3, 5) for v in ("dense fp32", "int8 PTQ", "pruned 10%", "pruned 30%",
                                                          "pruned 50%", "VQ K=16 int4", "VQ K=16 int4 fine-tuned")}
    assert all(r["seeds"] == [0, 1] and "delta_map_ood_mean" in r for r in result["rows"])
    assert rows[(3, "VQ K=16 int4")]["storage_bytes"] < rows[(5, "VQ K=16 int4")]["storage_bytes"] < \
        rows[(5, "dense fp32")]["storage_bytes"]
    front = [r for r in result["rows"] if r["pareto"]]
    assert front and all(not any(o["storage_bytes"] < f["storage_bytes"] and o["map50_mean"] > f["map50_mean"]
                                 for o in result["rows"]) for f in front)
    saved = json.loads((tmp / "pareto" / "pareto.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp / "pareto" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # one data set, backbone and set of features for every grid size and seed; a re-run does no work
    a, b = (json.loads((tmp / "pareto" / f"G{g}-seed{s}" / "report.json").read_text())["stages"] for g, s in ((3, 0), (5, 1)))
    assert all(a[k]["version"] == b[k]["version"] for k in ("dataset", "backbone", "features_train"))
    assert a["head"]["version"] != b["head"]["version"]
    assert result["command"].startswith("sharekan study pareto --params '{") and '"grid_sizes":[3,5]' in result["command"]
    again = pareto_sweep(params)
    assert again["rows"] == result["rows"]
    for g in (3, 5):
        stages = json.loads((tmp / "pareto" / f"G{g}-seed1" / "report.json").read_text())["stages"]
        assert not any(s["created"] for s in stages.values() if s.get("version"))


def test_shared_codebook_flow(prefect_api, base):
    from flows.studies import SharedParams, shared_codebook
    from storage.store import ArtifactStore

    tmp, b = base
    result = shared_codebook(SharedParams(base=b, head_seeds=[0, 1], transfer_seed=2, k=16, side_dtypes=["int4"],
                                          out=str(tmp / "shared")))
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"VQ K=16 int4", "VQ K=16 int4 fine-tuned"}
    r = rows["VQ K=16 int4"]
    separate = r["dense_bytes"] / r["separate_ratio"]  # each head with a codebook of its own size
    assert r["heads"] == 2 and separate - r["shared_bytes"] == pytest.approx(r["codebook_bytes"])  # one book, not two
    assert r["ratio"] == pytest.approx(r["dense_bytes"] / r["shared_bytes"]) and r["ratio"] > r["separate_ratio"]
    assert set(r["per_head_delta"]) == {"0", "1"} and -1 <= r["transfer_delta"] <= 1
    book = ArtifactStore(b["store"], create=False).get(result["codebook"])
    assert len(book.inputs) == 2 and all(v.startswith("splines-") for v in book.inputs)
    assert (tmp / "shared" / "shared.json").is_file()
    with pytest.raises(ValueError, match="unseen head must be unseen"):
        shared_codebook(SharedParams(base=b, head_seeds=[0, 1], transfer_seed=1, k=16, out=str(tmp / "x")))
