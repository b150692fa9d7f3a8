"""Assemble ``bench/results/pareto.json`` from the study flows' outputs: one row per variant with
``variant, k, grid_size, side_bits, finetuned, heads, lipschitz, ratio, delta_map_mean,
delta_map_std, seeds, command`` (mAP@0.5 deltas as fractions, against the dense head of the same
run), plus the out-of-distribution deltas where the run scored the shifted split.

    python bench/pareto_record.py --sweep S.json --shared H.json [H2.json] --lipschitz L1.json L10.json --out OUT.json

Each input is a ``sharekan study pareto|shared`` result (its ``<name>.json``); prints the rows that
meet the issue's targets and writes the record.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sharekan.studies import SIDE_BITS
from sharekan.table import format_table

KEYS = ("variant", "kind", "k", "grid_size", "side_bits", "finetuned", "heads", "lipschitz", "ratio", "storage_bytes",
        "map50_mean", "delta_map_mean", "delta_map_std", "delta_map_ood_mean", "delta_map_ood_std", "seeds", "command")


def sweep_rows(result: dict) -> list[dict]:
    lam = result["parameters"]["base"]["train"]["lipschitz"]
    return [{**{k: r.get(k) for k in KEYS}, "lipschitz": lam, "command": result["command"]} for r in result["rows"]]


def shared_rows(result: dict) -> list[dict]:
    p = result["parameters"]
    out = []
    for r in result["rows"]:
        deltas = list(r["per_head_delta"].values())
        out.append({"variant": r["variant"] + f" shared by {r['heads']}", "kind": "vq", "k": r["k"],
                    "grid_size": p["base"]["train"]["grid_size"], "side_bits": SIDE_BITS[r["dtype"]],
                    "finetuned": r["finetuned"], "heads": r["heads"], "lipschitz": p["base"]["train"]["lipschitz"],
                    "ratio": r["ratio"], "storage_bytes": r["shared_bytes"], "map50_mean": None,
                    "delta_map_mean": r["delta_map_mean"], "delta_map_std": statistics.stdev(deltas),
                    "transfer_delta": r["transfer_delta"], "seeds": [int(s) for s in r["per_head_delta"]],
                    "command": result["command"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, required=True)
    ap.add_argument("--shared", type=Path, nargs="*", default=[])
    ap.add_argument("--lipschitz", type=Path, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=Path("bench/results/pareto.json"))
    args = ap.parse_args()
    rows = sweep_rows(json.loads(args.sweep.read_text()))
    for path in args.lipschitz:
        rows += sweep_rows(json.loads(path.read_text()))
    for path in args.shared:
        rows += shared_rows(json.loads(path.read_text()))
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    meets = [r for r in rows if r["kind"] == "vq" and r["ratio"] >= (16 if r["heads"] == 1 else 14)
             and r["delta_map_mean"] >= -0.01]
    print(format_table([{**r, "delta": 100 * r["delta_map_mean"], "std": 100 * r["delta_map_std"]} for r in meets],
                       [("variant", "variant", "s"), ("grid_size", "G", "d"), ("lipschitz", "λ", "g"),
                        ("heads", "heads", "d"), ("ratio", "ratio", ".1f"), ("delta", "Δ points", "+.2f"),
                        ("std", "±", ".2f")]) if meets else "no variant meets the storage targets at ≤ 1 point")
    print(f"{len(rows)} rows written to {args.out}")


if __name__ == "__main__":
    main()
