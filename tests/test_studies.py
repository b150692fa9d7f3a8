"""Study aggregates: seed means with their spread, the Pareto front, shared-codebook totals (the
study flows themselves run end to end in ``test_flows``)."""

import statistics

import pytest

from sharekan.studies import interval95, pareto_front, seed_averaged, shared_storage, t95


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
    assert vq["per_seed"] == {0: -0.02, 1: 0.0} and vq["reference"] == "dense head of the same G and seeds"
    half = 12.706 * (0.02 / 2 ** 0.5) / 2 ** 0.5  # t(0.975, 1 df) · s / √n
    assert vq["delta_map_ci95"] == pytest.approx([-0.01 - half, -0.01 + half])
    assert rows[(5, "dense")]["delta_map_ci95"] is None  # one seed: no interval


def test_the_95_percent_interval_uses_students_t():
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(30) == 2.042 and t95(200) == 1.960
    values = [-0.010, -0.012, -0.008, -0.011, -0.009]  # five paired deltas
    low, high = interval95(values)
    assert (low + high) / 2 == pytest.approx(-0.01) and high - low == pytest.approx(
        2 * 2.776 * statistics.stdev(values) / 5 ** 0.5)
    assert high < 0  # the interval says: a loss
    with pytest.raises(ValueError, match="degree of freedom"):
        t95(0)


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


def _record():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "pareto_record.py"
    spec = importlib.util.spec_from_file_location("pareto_record", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_study_table_is_the_one_generated_from_the_result_file():
    """README numbers come from result files: the block between the markers is exactly what
    ``bench/pareto_record.py --table-only --readme`` writes from ``bench/results/pareto.json``."""
    import json
    from pathlib import Path

    rec = _record()
    root = Path(__file__).resolve().parents[1]
    rows = json.loads((root / "bench/results/pareto.json").read_text())["rows"]
    readme = (root / "README.md").read_text()
    block = readme.split(rec.BEGIN, 1)[1].split(rec.END, 1)[0].strip()
    assert block == rec.readme_table(rows)
    assert all(f"| {rid} |" in block for rid, *_ in rec.SELECTED)


def test_rows_are_paired_against_the_unpenalised_dense_head_where_seeds_match():
    rec = _record()
    dense0 = {"variant": "dense fp32", "kind": "dense", "grid_size": 10, "lipschitz": 0.0, "heads": 1,
              "map50_mean": 0.72, "per_seed_map": {"0": 0.70, "1": 0.74}}
    pen = {"variant": "VQ K=256 int4 fine-tuned", "kind": "vq", "grid_size": 10, "lipschitz": 10.0, "heads": 1,
           "map50_mean": 0.705, "per_seed_map": {"0": 0.69, "1": 0.72, "2": 0.9}}
    old = {**pen, "lipschitz": 1.0, "per_seed_map": None}
    rows = rec.against_unpenalised([dense0, pen, old])
    assert rows[1]["delta_vs_unpenalised_mean"] == pytest.approx(-0.015)  # seeds 0 and 1 only, paired
    assert rows[1]["delta_vs_unpenalised_ci95"] == pytest.approx(interval95([-0.01, -0.02]))
    assert rows[2]["delta_vs_unpenalised_mean"] == pytest.approx(-0.015) and rows[2]["delta_vs_unpenalised_ci95"] is None
    # a result file that kept only mean, std and seeds still gets its interval
    filled = rec.completed({"kind": "vq", "delta_map_mean": -0.01, "delta_map_std": 0.002, "seeds": [0, 1, 2]})
    assert filled["delta_map_ci95"] == pytest.approx(interval95([-0.012, -0.01, -0.008]))


def _shared_result(lam: float, dense: dict, deltas: dict, book: str = "fp32") -> dict:
    """A `sharekan study shared` result of two heads (seeds 0, 1) with one variant."""
    return {"command": "sharekan study shared", "codebook": "codebook-x",
            "parameters": {"head_seeds": [0, 1], "base": {"train": {"grid_size": 10, "lipschitz": lam},
                                                          "data": {"n_test": 1000},
                                                          "compress": {"codebook_dtype": book}}},
            "dense_map50": {**dense, "100": 0.5},
            "rows": [{"variant": "VQ K=256 int4 fine-tuned", "k": 256, "dtype": "int4", "finetuned": True,
                      "heads": 2, "dense_bytes": 1000, "shared_bytes": 50, "ratio": 20.0, "per_head_delta": deltas,
                      "delta_map_mean": sum(deltas.values()) / 2, "delta_map_own_mean": 0.0, "transfer_delta": 0.0,
                      "transfer_own_delta": 0.0}]}


def test_a_shared_study_on_penalised_heads_pairs_with_the_unpenalised_heads_of_the_same_seeds():
    rec = _record()
    rows = rec.shared_rows(_shared_result(0.0, {"0": 0.70, "1": 0.74}, {"0": -0.01, "1": -0.03}))
    rows += rec.shared_rows(_shared_result(1.0, {"0": 0.72, "1": 0.73}, {"0": -0.01, "1": -0.02}, "fp16"))
    rows = rec.against_unpenalised(rows)
    dense0, vq0, dense1, vq1 = rows
    assert (dense0["kind"], dense0["heads"], dense0["map50_mean"]) == ("dense", 2, pytest.approx(0.72))
    assert vq1["variant"] == "VQ K=256 int4 fine-tuned shared by 2, fp16 codebook"
    assert vq1["per_seed_map"] == pytest.approx({"0": 0.71, "1": 0.71})
    # seed by seed against the λ = 0 study's dense heads: 0.71 − 0.70, 0.71 − 0.74
    assert vq1["delta_vs_unpenalised_mean"] == pytest.approx(-0.01)
    assert vq1["delta_vs_unpenalised_ci95"] == pytest.approx(interval95([0.01, -0.03]))
    assert dense1["delta_vs_unpenalised_mean"] == pytest.approx(0.005)
    assert vq0["delta_vs_unpenalised_mean"] == pytest.approx(vq0["delta_map_mean"])  # its own dense heads are λ = 0
    assert "delta_vs_unpenalised_mean" not in dense0


def test_a_sweep_over_two_data_sets_is_kept_apart_from_a_one_backbone_study_of_the_same_heads():
    """The K×G sweep (2 data sets, seeds "data/head") and a shared study (1 data set) both give a
    single dense head at G = 10 on 1,000 images: two settings, each row paired with its own."""
    rec = _record()
    def row(variant, kind, maps, deltas=None):
        return {"variant": variant, "kind": kind, "k": 256 if kind == "vq" else None, "grid_size": 10, "heads": 1,
                "map50_mean": sum(maps.values()) / len(maps), "per_seed_map": maps, "per_seed": deltas,
                "delta_map_mean": sum(deltas.values()) / len(deltas) if deltas else 0.0, "seeds": list(maps)}
    sweep = {"command": "sharekan study pareto", "parameters": {
        "data_seeds": [0, 1], "base": {"train": {"lipschitz": 0.0}, "data": {"n_test": 1000}}}, "rows": [
        row("dense fp32", "dense", {"0/0": 0.70, "1/0": 0.60}),
        row("pruned 30%", "pruned", {"0/0": 0.66, "1/0": 0.58}, {"0/0": -0.04, "1/0": -0.02})]}
    shared = _shared_result(0.0, {"0": 0.70, "1": 0.74}, {"0": -0.01, "1": -0.03})
    shared["rows"][0] |= {"per_head_own_delta": {"0": -0.02, "1": -0.02}, "separate_ratio": 18.0}  # + single heads
    rows = rec.sweep_rows(sweep) + rec.shared_rows(shared)
    rows = rec.against_unpenalised(rec.deduplicated(rows))
    dense = [r for r in rows if r["variant"] == "dense fp32" and r["heads"] == 1]
    assert sorted(r["data_sets"] for r in dense) == [1, 2]
    pruned = next(r for r in rows if r["variant"] == "pruned 30%")
    assert pruned["delta_vs_unpenalised_mean"] == pytest.approx(-0.03)  # against the sweep's own dense heads
    assert pruned["delta_vs_unpenalised_ci95"] == pytest.approx(interval95([-0.04, -0.02]))


@pytest.mark.parametrize("study", ["ParetoParams", "SharedParams"])
def test_a_base_given_in_part_keeps_the_studys_test_split_sizes(study):
    import flows.params
    cls = getattr(flows.params, study)
    base = cls.model_validate({"base": {"train": {"lipschitz": 1.0}}}).base
    assert (base.data.n_test, base.data.n_ood, base.train.lipschitz) == (1000, 400, 1.0)
    assert cls.model_validate({"base": {"data": {"n_test": 300}}}).base.data.n_test == 300


def test_a_shared_study_also_gives_its_heads_as_single_heads_with_their_own_codebooks():
    rec = _record()
    lam0 = _shared_result(0.0, {"0": 0.70, "1": 0.74}, {"0": -0.01, "1": -0.03})
    lam1 = _shared_result(1.0, {"0": 0.72, "1": 0.73}, {"0": -0.01, "1": -0.02})
    lam1["rows"][0].update(per_head_own_delta={"0": -0.02, "1": 0.0}, separate_ratio=16.0)
    again = _shared_result(1.0, {"0": 0.72, "1": 0.73}, {"0": -0.01, "1": -0.02}, "fp16")
    rows = rec.against_unpenalised(rec.deduplicated(
        rec.shared_rows(lam0) + rec.shared_rows(lam1) + rec.shared_rows(again)))
    own = [r for r in rows if r["variant"] == "VQ K=256 int4 fine-tuned (own codebook)"]
    assert len(own) == 1 and own[0]["heads"] == 1 and own[0]["ratio"] == 16.0
    assert own[0]["per_seed_map"] == pytest.approx({"0": 0.70, "1": 0.73})
    assert own[0]["storage_bytes"] == pytest.approx(1000 / 2 / 16)
    assert len([r for r in rows if r["variant"] == "dense fp32" and r["lipschitz"] == 1.0]) == 2  # 2 heads; 1 head
    # single heads pair with the λ = 0 study's heads only where that study gave single heads too
    assert "delta_vs_unpenalised_mean" not in own[0]
    changed = _shared_result(1.0, {"0": 0.72, "1": 0.99}, {"0": -0.01, "1": -0.02})
    with pytest.raises(ValueError, match="different per-seed mAPs"):
        rec.deduplicated(rec.shared_rows(lam1) + rec.shared_rows(changed))
