"""Question: where does LUTHAM v3 stand against the issue's targets, by its result files? The README's
two LUTHAM v3 tables, generated from ``bench/lutham_packed.py``'s runs.

    python bench/lutham_readme.py --readme README.md [--runs A=FILE B=FILE ...]

Each file is one run on one device. Per run, head, operating point and row count, the table keeps the
fastest LUTHAM v3 variant within the accuracy rule (its error against fp32 no worse than dense fp16
eager's in the same run) and sets it against the fastest dense fp16 form of that run. A run without a
compiled dense form or without the sparse-basis kernel can only overstate LUTHAM's ratio (a form it
lacks could only be faster), so its ratios may show a target missed but never met: "not judged".
Every target names the row it rests on, taken from the last run listed that measured it (a run with
every dense form first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.table import format_table, markdown_table, markers, rewrite_block  # noqa: E402

RUNS = (("A", "bench/results/lutham_packed.json"), ("B", "bench/results/lutham_packed_49rows.json"))
BEGIN, END = markers("lutham-v3-table", "bench/lutham_readme.py")
LARGE, TRAINED = "large", "trained-shape"
# (target, kind, head, K, width, rows, figure needed); kinds: speed (× best dense), bandwidth (fraction of
# copy bandwidth on the bytes read), floor (warm µs below the DRAM time of the bytes read), us (at most),
# memory (× below eager fp32's peak), never-above (no LUTHAM peak above eager fp32's, every row measured)
TARGETS = (
    ("large, K = 256 int4, 1 row: ≥ 3× best dense", "speed", LARGE, 256, "int4", 1, 3.0),
    ("large, K = 256 int4, 1 row: ≥ 60 % of copy bandwidth on the bytes read", "bandwidth", LARGE, 256, "int4", 1, 0.6),
    ("large, K = 256 int4, 49 rows: ≥ 1.5×", "speed", LARGE, 256, "int4", 49, 1.5),
    ("large, K = 256 int4, 392 rows: ≥ 1.0×", "speed", LARGE, 256, "int4", 392, 1.0),
    ("large, K = 256 int4, 3,136 rows: ≥ 1.0×", "speed", LARGE, 256, "int4", 3136, 1.0),
    ("large, K = 256 int4, warm, 1 row: faster than the DRAM floor of its bytes", "floor", LARGE, 256, "int4", 1, None),
    ("large, K = 65,536 fp16, 1 row: ≥ 1.5×", "speed", LARGE, 65536, "fp16", 1, 1.5),
    ("trained head's shape, K = 256 int4, 1 row: ≥ 3×", "speed", TRAINED, 256, "int4", 1, 3.0),
    ("trained head's shape, K = 256 int4, 1 row: ≤ 10 µs", "us", TRAINED, 256, "int4", 1, 10.0),
    ("trained head's shape, K = 256 int4, 49 rows: ≥ 3×", "speed", TRAINED, 256, "int4", 49, 3.0),
    ("trained head's shape, K = 256 int4, 392 rows: ≥ 3×", "speed", TRAINED, 256, "int4", 392, 3.0),
    ("trained head's shape, K = 256 int4, 3,136 rows: ≥ 3×", "speed", TRAINED, 256, "int4", 3136, 3.0),
    ("large, K = 256 int4, 1 row: memory ≥ 40× below eager fp32", "memory", LARGE, 256, "int4", 1, 40.0),
    ("large, K = 256 int4, 49 rows: memory ≥ 20× below eager fp32", "memory", LARGE, 256, "int4", 49, 20.0),
    ("every head, point and row count: peak never above eager fp32's", "never-above", None, None, None, None, None),
)


def _dense_forms(results: list[dict]) -> set[str]:
    return {r["variant"] for r in results if r["variant"].startswith("dense fp16")}


def complete(forms: set[str]) -> bool:
    """Whether a run timed the strongest dense forms: a compiled one and the sparse-basis kernel."""
    return any("compiled" in f for f in forms) and any("sparse-basis" in f for f in forms)


def run_rows(run: str, data: dict) -> list[dict]:
    """One row per head, operating point and row count of a run: the fastest LUTHAM v3 variant within
    the accuracy rule against the run's fastest dense fp16 form (and eager fp32's peak)."""
    res = data["results"]
    forms = _dense_forms(res)
    out = []
    points = sorted({(r["head"], r["k"], r["side_dtype"], r["rows"]) for r in res if r["k"] is not None},
                    key=lambda p: (p[0], p[3], p[1], p[2]))
    for head, k, side, rows in points:
        dense = [r for r in res if r["head"] == head and r["rows"] == rows and r["k"] is None]
        fp16 = [r for r in dense if r["variant"].startswith("dense fp16")]
        eager16 = next(r for r in fp16 if r["variant"] == "dense fp16 eager")
        eager32 = next(r for r in dense if r["variant"] == "dense fp32 eager")
        best = min(fp16, key=lambda r: r["us"])
        ours = [r for r in res if (r["head"], r["k"], r["side_dtype"], r["rows"]) == (head, k, side, rows)
                and r["max_rel_error"] <= eager16["max_rel_error"]]
        if not ours:
            raise ValueError(f"run {run}: no LUTHAM v3 variant of {head} K={k} {side} at {rows} rows meets "
                             f"the accuracy rule (dense fp16's error {eager16['max_rel_error']:.2e})")
        lut = min(ours, key=lambda r: r["us"])
        out.append({
            "row": f"{run}{len(out) + 1}", "run": run, "head": head, "k": k, "side": side, "rows": rows,
            "point": f"{k:,} {side}", "variant": lut["variant"].split("(", 1)[1].rstrip(")"),
            "us": lut["us"], "us_cold": lut["us_cold"], "dense": best["variant"].removeprefix("dense fp16 "),
            "dense_us": best["us"], "ratio": best["us"] / lut["us"], "complete": complete(forms),
            "error": lut["max_rel_error"], "dense_error": eager16["max_rel_error"],
            "peak_mb": lut["peak_bytes"] / 1e6, "eager32_mb": eager32["peak_bytes"] / 1e6,
            "memory": eager32["peak_bytes"] / lut["peak_bytes"], "bytes_read": lut["bytes_read"],
            "copy_gbps": data["copy_gbps"],
            "peaks": [(r["variant"], r["peak_bytes"]) for r in res if (r["head"], r["k"], r["side_dtype"], r["rows"])
                      == (head, k, side, rows)],
        })
    return out


def _ratio(r: dict) -> str:
    return f"{r['ratio']:.2f}×" + ("" if r["complete"] else " ‡")


def judge(rows: list[dict]) -> list[dict]:
    """Each target: its figure, the row it rests on and met / missed / not judged / not measured."""
    out, order = [], {run: i for i, run in enumerate(dict.fromkeys(r["run"] for r in rows))}  # runs as listed
    for text, kind, head, k, side, n, need in TARGETS:
        if kind == "never-above":
            over = [(r, v, b) for r in rows for v, b in r["peaks"] if b > r["eager32_mb"] * 1e6]
            worst = max(over, key=lambda o: o[2] / o[0]["eager32_mb"], default=None)
            figure = ("none above" if worst is None else
                      f"{len(over)} variants above; worst {worst[1].split('(', 1)[1].rstrip(')')} "
                      f"{worst[2] / 1e6:.1f} MB against {worst[0]['eager32_mb']:.1f}")
            out.append({"target": text, "figure": figure, "row": "all" if worst is None else worst[0]["row"],
                        "verdict": "met" if worst is None else "missed"})
            continue
        found = [r for r in rows if (r["head"], r["k"], r["side"], r["rows"]) == (head, k, side, n)]
        if not found:
            out.append({"target": text, "figure": "—", "row": "—", "verdict": "not measured"})
            continue
        r = max(found, key=lambda r: (r["complete"], order[r["run"]]))
        if kind == "speed":
            figure, ok = _ratio(r), r["ratio"] >= need
            verdict = "missed" if not ok else "met" if r["complete"] else "not judged ‡"
        elif kind == "bandwidth":
            frac = r["bytes_read"] / r["us"] / 1e3 / r["copy_gbps"]
            figure, verdict = f"{100 * frac:.0f} % ({r['bytes_read'] / 1e6:.1f} MB in {r['us']:.1f} µs)", \
                "met" if frac >= need else "missed"
        elif kind == "floor":
            floor = r["bytes_read"] / r["copy_gbps"] / 1e3
            figure, verdict = f"{r['us']:.1f} µs against {floor:.1f} µs", "met" if r["us"] < floor else "missed"
        elif kind == "us":
            figure, verdict = f"{r['us']:.1f} µs", "met" if r["us"] <= need else "missed"
        else:
            figure, verdict = f"{r['memory']:.1f}×", "met" if r["memory"] >= need else "missed"
        out.append({"target": text, "figure": figure, "row": r["row"], "verdict": verdict})
    return out


def readme_tables(runs: list[tuple[str, str, dict]]) -> str:
    """The runs, the measured rows and the targets, in Markdown."""
    rows = [r for run, _, data in runs for r in run_rows(run, data)]
    lines = [markdown_table([{"run": run, "file": f"`{path}`", "device": data["device"],
                              "copy": f"{data['copy_gbps']:,.0f}",
                              "dense forms": ", ".join(sorted(f.removeprefix("dense fp16 ")
                                                              for f in _dense_forms(data["results"])))}
                             for run, path, data in runs],
                            [("run", "run", "s"), ("file", "result file", "s"), ("device", "device", "s"),
                             ("copy", "copy GB/s", "s"), ("dense forms", "dense fp16 forms timed", "s")]), ""]
    shown = [{**r, "cold": "—" if r["us_cold"] is None else f"{r['us_cold']:,.1f}", "x": _ratio(r),
              "err": f"{r['error']:.1e} / {r['dense_error']:.1e}",
              "mem": f"{r['peak_mb']:,.1f} / {r['eager32_mb']:,.1f} ({r['memory']:.1f}×)"} for r in rows]
    lines += [markdown_table(shown, [
        ("row", "row", "s"), ("head", "head", "s"), ("point", "K, side data", "s"), ("rows", "rows", "d"),
        ("variant", "LUTHAM v3 (path, precision)", "s"), ("us", "warm µs", ",.1f"), ("cold", "cold µs", "s"),
        ("dense", "best dense fp16", "s"), ("dense_us", "µs", ",.1f"), ("x", "vs best dense", "s"),
        ("err", "error: LUTHAM / dense fp16", "s"), ("mem", "peak MB: LUTHAM / eager fp32", "s")]), ""]
    lines += ["‡ the run lacks a compiled dense form or the sparse-basis kernel: its ratio can only be "
              "lower against every form, so it can show a target missed, not met.", ""]
    lines += [markdown_table(judge(rows), [("target", "target", "s"), ("figure", "measured", "s"),
                                           ("row", "row", "s"), ("verdict", "verdict", "s")])]
    return "\n".join(lines)


def load(runs: list[tuple[str, str]], root: Path) -> list[tuple[str, str, dict]]:
    out = []
    for run, path in runs:
        file = root / path
        if not file.is_file():
            raise FileNotFoundError(f"run {run}: no result file {path} (bench/lutham_packed.py --json writes it)")
        out.append((run, path, json.loads(file.read_text())))
    return out


def _run(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"a run is NAME=FILE, got {text!r}")
    return tuple(text.split("=", 1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", type=_run, default=list(RUNS), help="NAME=FILE, oldest first")
    ap.add_argument("--readme", type=Path, help="rewrite this README's LUTHAM v3 tables")
    args = ap.parse_args(argv)
    runs = load(args.runs, Path.cwd())
    print(format_table(judge([r for run, _, d in runs for r in run_rows(run, d)]),
                       [("target", "target", "s"), ("figure", "measured", "s"), ("row", "row", "s"),
                        ("verdict", "verdict", "s")]))
    if args.readme:
        rewrite_block(args.readme, BEGIN, END, readme_tables(runs))
        print(f"LUTHAM v3 tables rewritten in {args.readme}")


if __name__ == "__main__":
    main()
