"""Assemble ``bench/results/pareto.json`` from the study flows' outputs and generate the README's
study table from it.

One row per (variant, G, λ, heads): ``variant, k, grid_size, side_bits, finetuned, heads, lipschitz,
ratio, reference, delta_map_mean, delta_map_ci95, per_seed, seeds, command`` (mAP@0.5 deltas as
fractions, each paired against ``reference``, the dense head of the same run), the shifted split's
deltas where scored, and — against the best dense head of the same G, the unpenalised one —
``delta_vs_unpenalised_mean`` (and ``_ci95`` where both studies kept per-seed mAPs of the same
seeds). Rows of result files that kept only means and standard deviations get their interval from
those (the same t-interval).

    python bench/pareto_record.py --sweep S.json [S2.json ...] --shared H.json [H2.json ...] \
        --out OUT.json --readme README.md

Each input is a ``sharekan study pareto|shared`` result (its ``<name>.json``); rows of different
test-set sizes or numbers of data sets (synthetic data set and backbone) are kept apart. ``--readme`` rewrites
the table between the README's ``pareto-table`` markers; ``--table-only`` does just that from an
existing ``--out``. Prints the rows that meet the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.studies import REFERENCE, SIDE_BITS, interval95, summary_interval95  # noqa: E402
from sharekan.table import format_table, markdown_table, markers, rewrite_block  # noqa: E402

KEYS = ("variant", "kind", "k", "grid_size", "side_bits", "finetuned", "heads", "lipschitz", "ratio", "storage_bytes",
        "map50_mean", "reference", "delta_map_mean", "delta_map_std", "delta_map_ci95", "per_seed", "per_seed_map",
        "delta_map_ood_mean", "delta_map_ood_std", "delta_map_ood_ci95", "seeds", "command")
UNPENALISED = "dense head of the same G trained without the penalty (λ = 0)"
BEGIN, END = markers("pareto-table", "bench/pareto_record.py")
# the README's rows: (id, G, λ, heads, test images, data sets, variant without "fine-tuned")
SELECTED = tuple((rid, g, lam, heads, 200, 1, v) for rid, g, lam, heads, v in (
    ("T1", 10, 0.0, 1, "dense fp32"), ("T2", 10, 0.0, 1, "int8 PTQ"), ("T3", 10, 0.0, 1, "VQ K=256 int8"),
    ("T4", 10, 0.0, 1, "VQ K=256 int4"), ("T5", 10, 0.0, 1, "VQ K=4096 int8"),
    ("T6", 20, 0.0, 1, "dense fp32"), ("T7", 20, 0.0, 1, "VQ K=1024 int8"),
    ("T8", 10, 1.0, 1, "dense fp32"), ("T9", 10, 1.0, 1, "VQ K=256 int8"), ("T10", 10, 1.0, 1, "VQ K=256 int4"),
    ("T11", 10, 10.0, 1, "dense fp32"), ("T12", 10, 10.0, 1, "VQ K=256 int8"), ("T13", 10, 10.0, 1, "VQ K=256 int4"),
    ("T14", 10, 0.0, 8, "VQ K=256 int8 shared by 8"), ("T15", 10, 0.0, 8, "VQ K=256 int4 shared by 8"))) + tuple(
    (rid, 10, lam, heads, 1000, 1, variant) for rid, (lam, heads, variant) in zip((f"T{n}" for n in range(16, 32)), (
        (0.0, 1, "dense fp32"), (0.0, 1, "VQ K=256 int8 (own codebook)"), (0.0, 1, "VQ K=256 int4 (own codebook)"),
        (1.0, 1, "dense fp32"), (1.0, 1, "VQ K=256 int8 (own codebook)"), (1.0, 1, "VQ K=256 int4 (own codebook)"),
        (1.0, 1, "VQ K=256 int8 (own codebook), fp16 codebook"), (1.0, 1, "VQ K=256 int4 (own codebook), fp16 codebook"),
        (0.0, 8, "dense fp32"), (0.0, 8, "VQ K=256 int8 shared by 8"), (0.0, 8, "VQ K=256 int4 shared by 8"),
        (1.0, 8, "dense fp32"), (1.0, 8, "VQ K=256 int8 shared by 8"), (1.0, 8, "VQ K=256 int4 shared by 8"),
        (1.0, 8, "VQ K=256 int8 shared by 8, fp16 codebook"), (1.0, 8, "VQ K=256 int4 shared by 8, fp16 codebook")))) + tuple(
    (f"T{n}", 10, lam, 1, 1000, 2, v) for n, (lam, v) in enumerate(
        [(0.0, v) for v in ("dense fp32", "int8 PTQ", "pruned 10%", "pruned 30%", "pruned 50%", "VQ K=256 int8",
                            "VQ K=256 int4")] + [(1.0, v) for v in ("dense fp32", "VQ K=256 int8", "VQ K=256 int4")], 32))


def completed(row: dict) -> dict:
    """``row`` with its reference named and its 95 % interval, from per-seed values where kept, else
    from the mean, standard deviation and seed count."""
    row = {**row, "reference": row.get("reference") or REFERENCE}
    for key, per in (("delta_map", "per_seed"), ("delta_map_ood", "per_seed_ood")):
        if row.get(f"{key}_mean") is None or row.get(f"{key}_ci95") is not None or row["kind"] == "dense":
            continue
        row[f"{key}_ci95"] = (interval95(list(row[per].values())) if row.get(per)
                              else summary_interval95(row[f"{key}_mean"], row[f"{key}_std"], len(row["seeds"])))
    return row


def sweep_rows(result: dict) -> list[dict]:
    p = result["parameters"]
    return [completed({**{k: r.get(k) for k in KEYS}, "lipschitz": p["base"]["train"]["lipschitz"],
                       "test_images": p["base"]["data"]["n_test"], "data_sets": len(p.get("data_seeds", [0])),
                       "command": result["command"]})
            for r in result["rows"]]


def shared_rows(result: dict) -> list[dict]:
    """The shared-codebook study's rows: its N dense heads, then each variant shared by the N heads
    (per-head mAPs kept, so a study of the same seeds at λ = 0 pairs with it); and, where the study
    kept each head's own-codebook values, the same heads as N single heads each with its own
    codebook (``heads`` 1, their dense heads again): the single-head variant measured N times."""
    p = result["parameters"]
    base = p["base"]
    book = base["compress"].get("codebook_dtype", "fp32")
    common = {"grid_size": base["train"]["grid_size"], "lipschitz": base["train"]["lipschitz"],
              "test_images": base["data"]["n_test"], "data_sets": 1, "codebook_dtype": book,
              "command": result["command"]}
    seeds = [str(s) for s in p["head_seeds"]]
    dense = {s: result["dense_map50"][s] for s in seeds}
    n_bytes = result["rows"][0]["dense_bytes"]

    def dense_row(heads, storage):
        return {"variant": "dense fp32", "kind": "dense", "k": None, "side_bits": 32, "finetuned": False,
                "heads": heads, "ratio": 1.0, "storage_bytes": storage, "map50_mean": statistics.fmean(dense.values()),
                "per_seed_map": dense, "reference": None, "delta_map_mean": 0.0, "seeds": [int(s) for s in seeds],
                **common}

    def vq_row(r, variant, heads, ratio, storage, per_head):
        return completed({
            "variant": variant + (f", {book} codebook" if book != "fp32" else ""), "kind": "vq", "k": r["k"],
            "side_bits": SIDE_BITS[r["dtype"]], "finetuned": r["finetuned"], "heads": heads, "ratio": ratio,
            "storage_bytes": storage, "map50_mean": statistics.fmean(dense[s] + d for s, d in per_head.items()),
            "per_seed_map": {s: dense[s] + d for s, d in per_head.items()}, "reference": "dense head of the same seed",
            "delta_map_mean": statistics.fmean(per_head.values()), "delta_map_std": statistics.stdev(per_head.values()),
            "per_seed": per_head, "seeds": [int(s) for s in per_head], **common})

    out = [dense_row(len(seeds), n_bytes)]
    for r in result["rows"]:
        out.append({**vq_row(r, r["variant"] + f" shared by {r['heads']}", r["heads"], r["ratio"], r["shared_bytes"],
                             r["per_head_delta"]),
                    "per_seed_own": r.get("per_head_own_delta"), "delta_map_own_mean": r["delta_map_own_mean"],
                    "transfer_delta": r["transfer_delta"], "transfer_own_delta": r["transfer_own_delta"],
                    "other_domain_delta": r.get("other_domain_delta"),
                    "other_domain_own_delta": r.get("other_domain_own_delta")})
    own = [r for r in result["rows"] if r.get("per_head_own_delta")]
    if own:
        out.append(dense_row(1, n_bytes / len(seeds)))
        out += [vq_row(r, r["variant"] + " (own codebook)", 1, r["separate_ratio"],
                       n_bytes / len(seeds) / r["separate_ratio"], r["per_head_own_delta"]) for r in own]
    return out


def _setting(r: dict) -> tuple:
    """What a row is measured on besides its variant and λ: G, head count, test images, data sets."""
    return r["grid_size"], r["heads"], r.get("test_images", 200), r.get("data_sets", 1)


def deduplicated(rows: list[dict]) -> list[dict]:
    """``rows`` without repeats: two studies of the same heads (a codebook stored fp32 and fp16) both
    give their dense heads; a repeat must agree seed by seed."""
    seen, out = {}, []
    for r in rows:
        key = (r["variant"], r["lipschitz"], *_setting(r))
        if key in seen:
            if seen[key].get("per_seed_map") != r.get("per_seed_map"):
                raise ValueError(f"two result files give {key} with different per-seed mAPs")
            continue
        seen[key] = r
        out.append(r)
    return out


def against_unpenalised(rows: list[dict]) -> list[dict]:
    """Each row's change against the unpenalised dense head(s) of its G, head count, test set and
    data sets: paired by seed where both rows kept per-seed mAPs, else the difference of the means
    (no interval)."""
    dense0 = {_setting(r): r for r in rows if r["kind"] == "dense" and r["lipschitz"] == 0}
    for r in rows:
        ref = dense0.get(_setting(r))
        if ref is None or r["map50_mean"] is None or r is ref:
            continue
        r["unpenalised_reference"] = UNPENALISED
        mine, theirs = r.get("per_seed_map") or {}, ref.get("per_seed_map") or {}
        common = sorted(set(mine) & set(theirs), key=str)
        if common:
            paired = [mine[s] - theirs[s] for s in common]
            r["delta_vs_unpenalised_mean"] = statistics.fmean(paired)
            r["delta_vs_unpenalised_ci95"] = interval95(paired)
        else:
            r["delta_vs_unpenalised_mean"] = r["map50_mean"] - ref["map50_mean"]
            r["delta_vs_unpenalised_ci95"] = None
    return rows


def _points(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "—"
    text = f"{100 * mean:+.2f}".replace("-", "−")
    return text + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]".replace("-", "−") if ci else "")


def readme_table(rows: list[dict]) -> str:
    """The README's study table (:data:`SELECTED`) in Markdown: each row's post-training and fine-tuned
    mAP change with 95 % intervals in points, against its own run's dense head and against the
    unpenalised dense head of its setting, and the better variant's change on the shifted split
    (against the dense head on the same shifted images)."""
    def find(lam, setting, variant):
        return next((r for r in rows if (r["lipschitz"], _setting(r), r["variant"]) == (lam, setting, variant)), None)

    out = []
    for rid, g, lam, heads, images, sets, variant in SELECTED:
        setting = (g, heads, images, sets)
        ptq = find(lam, setting, variant)
        tuned = re.sub(r"^(VQ K=\d+ \w+)", r"\1 fine-tuned", variant)
        ft = find(lam, setting, tuned) if tuned != variant else None
        if ptq is None:
            raise ValueError(f"row {rid}: no result row {variant!r} at G={g}, λ={lam:g}, {heads} head(s), "
                             f"{images} test images, {sets} data set(s)")
        best = ft or ptq
        dense = ptq["kind"] == "dense"
        out.append({"row": rid, "G": g, "λ": f"{lam:g}", "heads": heads, "test images": images, "data sets": sets,
                    "variant": variant + (f" (mAP {ptq['map50_mean']:.3f})" if dense else ""),
                    "ratio": f"{ptq['ratio']:.1f}", "seeds": len(ptq["seeds"]),
                    "post-training": "—" if dense else _points(ptq["delta_map_mean"], ptq.get("delta_map_ci95")),
                    "fine-tuned": _points(ft["delta_map_mean"], ft.get("delta_map_ci95")) if ft else "—",
                    "best of the two vs unpenalised dense": "—" if dense and lam == 0 else
                    _points(best.get("delta_vs_unpenalised_mean"), best.get("delta_vs_unpenalised_ci95")),
                    "best of the two, shifted split": "—" if dense else
                    _points(best.get("delta_map_ood_mean"), best.get("delta_map_ood_ci95"))})
    cols = list(out[0])
    return markdown_table(out, [(c, c, "d" if c in ("G", "heads", "test images", "data sets", "seeds") else "s")
                                for c in cols])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, nargs="*", default=[], help="K×G sweep results (any λ)")
    ap.add_argument("--shared", type=Path, nargs="*", default=[], help="shared-codebook study results")
    ap.add_argument("--out", type=Path, default=Path("bench/results/pareto.json"))
    ap.add_argument("--readme", type=Path, help="rewrite this README's study table")
    ap.add_argument("--table-only", action="store_true", help="only the README table, from an existing --out")
    args = ap.parse_args()
    if args.table_only:
        rows = json.loads(args.out.read_text())["rows"]
    else:
        if not args.sweep:
            ap.error("--sweep is required (or --table-only)")
        rows = [r for path in args.sweep for r in sweep_rows(json.loads(path.read_text()))]
        for path in args.shared:
            rows += shared_rows(json.loads(path.read_text()))
        rows = against_unpenalised(deduplicated(rows))
        args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        print(f"{len(rows)} rows written to {args.out}")
    if args.readme:
        rewrite_block(args.readme, BEGIN, END, readme_table(rows))
        print(f"study table rewritten in {args.readme}")
    def loss(r):  # against the best dense head where known, else against the row's own reference
        return r.get("delta_vs_unpenalised_mean", r["delta_map_mean"]), r.get("delta_vs_unpenalised_ci95")

    meets = [r for r in rows if r["kind"] == "vq" and r["ratio"] >= (16 if r["heads"] == 1 else 14)
             and loss(r)[0] >= -0.01 and (r["heads"] > 1 or (loss(r)[1] or [-1])[0] > -0.015)]
    print(format_table([{**r, "delta": 100 * loss(r)[0]} for r in meets],
                       [("variant", "variant", "s"), ("grid_size", "G", "d"), ("lipschitz", "λ", "g"),
                        ("heads", "heads", "d"), ("ratio", "ratio", ".1f"), ("delta", "Δ points vs best dense", "+.2f")])
          if meets else "no variant meets the storage targets at ≤ 1 point against the best dense head")

if __name__ == "__main__":
    main()
