"""A study's report for people: its table (and the K×G sweep's chart), as files and Prefect artifacts.

``publish_pareto`` writes ``pareto.json``, ``pareto.md`` and ``pareto.png`` (storage against
seed-mean mAP@0.5, one line per grid size and side-data width); ``publish_shared`` writes
``shared.json`` and ``shared.md``. Inside a flow run each also registers its Markdown with Prefect.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from sharekan.table import markdown_table

from .run_report import figure, png

__all__ = ["PARETO_COLUMNS", "SHARED_COLUMNS", "shared_columns", "table_rows", "pareto_png", "publish_pareto", "publish_shared"]

PARETO_COLUMNS = [("variant", "variant", "s"), ("grid_size", "G", "d"), ("ratio", "ratio", ".1f"),
                  ("storage_bytes", "storage B", ",.0f"), ("map50_mean", "mAP@0.5", ".4f"),
                  ("delta_points", "Δ mAP (points)", "+.2f"), ("ci95_points", "95 % interval (points)", "s"),
                  ("seeds_n", "seeds", "d"), ("pareto", "front", "s")]
SHARED_COLUMNS = [("variant", "variant", "s"), ("heads", "heads", "d"), ("shared_bytes", "N heads B", ",d"),
                  ("dense_bytes", "N dense B", ",d"), ("ratio", "ratio", ".1f"), ("separate_ratio", "own books", ".1f"),
                  ("delta_points", "Δ shared (points)", "+.2f"), ("ci95_points", "95 % interval", "s"),
                  ("delta_map_own_mean_points", "Δ own books", "+.2f"), ("own_ci95_points", "95 % interval", "s"),
                  ("shared_minus_own_ci95_points", "shared − own, 95 % interval", "s"),
                  ("transfer_delta_points", "Δ unseen head", "+.2f"), ("transfer_own_delta_points", "Δ unseen own", "+.2f")]
OTHER_DOMAIN_COLUMNS = [("other_domain_delta_points", "Δ other domain", "+.2f"),
                        ("other_domain_own_delta_points", "Δ other domain own", "+.2f")]
_POINTS = ("delta_map_own_mean", "transfer_delta", "transfer_own_delta", "other_domain_delta", "other_domain_own_delta")


def shared_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The shared study's columns: the other domain's where the study ran one."""
    return SHARED_COLUMNS + (OTHER_DOMAIN_COLUMNS if rows and "other_domain_delta" in rows[0] else [])


def pareto_png(rows: list[dict]) -> bytes:
    """Storage (log bytes) against seed-mean mAP@0.5, one line per (G, side-data width, fine-tuned)
    over K, error bars the 95 % t-interval of the paired per-seed deltas; dense heads as black markers, the front circled."""
    plt, fig = figure(8.5, 5.2)
    ax = fig.add_subplot()
    colours = dict(zip(sorted({r["grid_size"] for r in rows}), ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                                                 "tab:purple", "tab:brown")))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == "vq":
            lines.setdefault((r["grid_size"], r["side_bits"], r["finetuned"]), []).append(r)
        elif r["kind"] == "int8":
            ax.scatter(r["storage_bytes"], r["map50_mean"], c="grey", marker="s", s=22, zorder=4,
                       label="int8 PTQ" if r["grid_size"] == min(colours) else None)
        elif r["kind"] == "dense":
            ax.scatter(r["storage_bytes"], r["map50_mean"], c="k", marker="o", zorder=4)
            ax.annotate(f"dense G={r['grid_size']}", (r["storage_bytes"], r["map50_mean"]), textcoords="offset points",
                        xytext=(-10, 6), fontsize=7, ha="right")
    for (g, bits, tuned), pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda r: r["storage_bytes"])
        ax.errorbar([r["storage_bytes"] for r in pts], [r["map50_mean"] for r in pts],
                    yerr=[(r["delta_map_ci95"][1] - r["delta_map_ci95"][0]) / 2 if r.get("delta_map_ci95") else 0
                          for r in pts], color=colours.get(g, "grey"),
                    linestyle="-" if tuned else ":", marker="s" if bits == 4 else "^", markersize=4, capsize=2,
                    linewidth=1.2, label=f"G={g}, int{bits}{', fine-tuned' if tuned else ''}")
    front = [r for r in rows if r.get("pareto")]
    ax.scatter([r["storage_bytes"] for r in front], [r["map50_mean"] for r in front], s=110, facecolors="none",
               edgecolors="k", linewidths=1, zorder=5, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("storage (everything inference needs), bytes, log scale")
    ax.set_ylabel("mAP@0.5, mean over seeds")
    ax.set_title("K×G sweep: storage against accuracy (markers along a line: K)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return png(plt, fig)


def table_rows(result: dict) -> list[dict]:
    """A study's rows for its tables (report and console): each row's paired mAP change and its 95 %
    interval in points, the front marked."""
    def interval(ci) -> str:
        return f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "n < 2"

    def points(row: dict) -> dict:
        return {"delta_points": 100 * row.get("delta_map_mean", 0.0), "seeds_n": len(row.get("seeds", [])),
                "ci95_points": interval(row.get("delta_map_ci95")), "own_ci95_points": interval(row.get("delta_map_own_ci95")),
                "shared_minus_own_ci95_points": interval(row.get("shared_minus_own_ci95")),
                **{f"{k}_points": 100 * row[k] for k in _POINTS if row.get(k) is not None}}

    return [{**r, "pareto": "*" if r.get("pareto") else "", **points(r)} for r in result["rows"]]


def _publish(name: str, result: dict, out: Path, columns: list, images: dict[str, bytes], extra: list[str]) -> None:
    """Write ``<name>.json``, ``<name>.md`` and ``images`` to ``out``; register the Markdown with Prefect."""
    from storage.files import atomic_write

    rows = table_rows(result)
    body = "\n".join([f"# SHARe-KAN study: {name}", "", markdown_table(rows, columns), *extra]) + "\n"
    files = {f"{name}.json": json.dumps(result, indent=2, default=str).encode(), **images}
    for fname, data in files.items():
        atomic_write(out / fname, lambda tmp, data=data: tmp.write_bytes(data))
    link = "".join(f"\n![{n}]({n})\n" for n in images)
    atomic_write(out / f"{name}.md", lambda tmp: tmp.write_text(body + link))
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        embedded = "".join(f"\n![{n}](data:image/png;base64,{base64.b64encode(d).decode()})\n" for n, d in images.items())
        create_markdown_artifact(key=f"sharekan-{name}", markdown=body + embedded, description=f"SHARe-KAN {name} study")


def publish_pareto(result: dict, out: Path) -> None:
    """The K×G sweep's table, front and chart."""
    _publish("pareto", result, out, PARETO_COLUMNS, {"pareto.png": pareto_png(result["rows"])},
             ["", "Pareto front (smallest storage for its mAP): " + ", ".join(result["front"])])


def publish_shared(result: dict, out: Path) -> None:
    """The shared-codebook study's table."""
    _publish("shared", result, out, shared_columns(result["rows"]), {}, [])
