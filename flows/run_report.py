"""A run's report for people: Markdown, tables and two charts, as Prefect artifacts and files.

``publish`` writes ``report.json``, ``report.md``, ``size_vs_map.png`` (storage against mAP@0.5,
one marker per variant, log axis in bytes) and ``codebook.png`` (example codewords, each a cubic
spline's 13 coefficients) to ``out/runs/<run name>/`` and copies them to ``out/`` (the latest
run), and registers the Markdown and two tables (rounded, with human headers) with the Prefect
API when called inside a flow run. In the UI the images are embedded as data URIs; the file
links are only in ``report.md``, where they resolve.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from sharekan.table import markdown_table
from storage.store import ArtifactStore, parse_location

from .results import LuthamReport, ReportRow, RunReport

__all__ = ["publish", "markdown", "lutham_lines", "size_vs_map_png", "codebook_png", "human_rows",
           "variant_columns", "table_rows", "figure", "png"]

_COLUMNS = [("variant", "variant", "s"), ("map50", "mAP@0.5", ".4f"), ("delta_map50", "Δ mAP (points)", "+.2f"),
            ("storage_bytes", "storage B", ",d"), ("compression", "ratio", ".1f"),
            ("runtime_bytes_1img", "runtime B 1 img", ",d")]
_OOD = [("map50_ood", "mAP OOD", ".4f"), ("delta_map50_ood", "Δ OOD (points)", "+.2f")]


def variant_columns(rows: list[ReportRow]) -> list[tuple[str, str, str]]:
    """The variant table's columns; the out-of-distribution ones when the run scored a shifted split."""
    return _COLUMNS[:3] + _OOD + _COLUMNS[3:] if rows and rows[0].map50_ood is not None else _COLUMNS


def table_rows(rows: list[ReportRow]) -> list[dict]:
    """The rows as ``sharekan.table.format_table`` takes them, mAP changes in points (× 100) as
    every table of a run shows them (``report.json`` keeps fractions)."""
    points = ("delta_map50", "delta_map50_ood")
    return [{k: 100 * v if k in points and v is not None else v for k, v in r.model_dump().items()} for r in rows]
_FAMILIES = (("dense", "dense fp32", "k", "o"), ("int8", "int8 PTQ", "tab:purple", "s"),
             ("pruned", "magnitude pruning", "tab:red", "v"), ("VQ fp16", "VQ, fp16 gains", "tab:blue", "D"),
             ("VQ int8", "VQ, int8 gains", "tab:green", "^"),
             ("VQ int4", "VQ, int4 gains", "tab:olive", "v"), ("VQ fp32", "VQ, fp32 gains", "tab:cyan", "D"),
             ("VQ int8 fine-tuned", "VQ, int8 gains, fine-tuned", "darkgreen", "P"),
             ("VQ int4 fine-tuned", "VQ, int4 gains, fine-tuned", "darkgoldenrod", "X"))


def lutham_lines(lut: LuthamReport) -> list[str]:
    """The LUTHAM section: why it was skipped, or its validation, detector mAP, plan and timings."""
    lines = [f"## LUTHAM ({lut.variant})", ""]
    if lut.stage.skipped:
        return lines + [f"**{lut.stage.skipped}**"]
    lines += [f"**validated** on {lut.device} ({lut.arch}), artifact `{lut.stage.version}`: "
              f"{len(lut.cases)} cases (random rows inside and outside the grid range, real test rows), "
              f"max relative error {lut.max_rel_error:.2e} (bound 1e-3), "
              f"{'every output element written' if lut.all_written else 'SOME OUTPUTS UNWRITTEN'}; "
              f"detector mAP@0.5 with LUTHAM {lut.map50_lutham:.4f} vs torch VQ reference "
              f"{lut.map50_reference:.4f}.", "", f"Plan: {lut.plan_summary}.", ""]
    if lut.arena_bytes and lut.dense_fp32_peak_bytes:
        lines += [f"Memory: {lut.edge_bytes:.2f} B an edge (records), arena {lut.arena_bytes:,} B against eager dense "
                  f"fp32's {lut.dense_fp32_peak_bytes:,} B on one image's rows "
                  f"({lut.dense_fp32_peak_bytes / lut.arena_bytes:.1f}x less).", ""]
    timings = lut.timings_us
    if timings:
        names = [k for k in ("dense fp32", "dense fp16", "torch VQ", "LUTHAM") if k in timings[0]]
        lines += ["Forward time, µs (median wall clock per call, device synchronised; a quick check against eager "
                  "heads — `bench/lutham_gpu.py` compares the compiled dense baselines):", "",
                  "| rows | " + " | ".join(names) + " | LUTHAM vs eager dense fp16 |", "|---" * (len(names) + 2) + "|"]
        for t in timings:
            ratio = f"{t['dense fp16'] / t['LUTHAM']:.2f}×" if t.get("dense fp16") and t.get("LUTHAM") else "-"
            lines.append(f"| {t['rows']} | " + " | ".join("-" if t[n] is None else f"{t[n]:,.0f}" for n in names)
                         + f" | {ratio} |")
    return lines


def _family(row: ReportRow) -> str:
    if row.kind != "vq":
        return row.kind
    return f"VQ {row.dtype}" + (" fine-tuned" if row.finetuned else "")


def figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110, layout="constrained")


def png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def size_vs_map_png(rows: list[ReportRow]) -> bytes:
    """Storage (log bytes) against mAP@0.5, a marker per variant by family, the dense mAP dashed."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt, fig = figure(7.5, 4.6)
    ax = fig.add_subplot()
    for fam, label, colour, marker in _FAMILIES:
        pts = [r for r in rows if _family(r) == fam]
        if not pts:
            continue
        ax.scatter([r.storage_bytes for r in pts], [r.map50 for r in pts], s=46, c=colour, marker=marker,
                   label=label, zorder=3)
        for r in pts:
            tag = str(r.k) if r.kind == "vq" else f"{round(100 * r.sparsity)}%" if r.kind == "pruned" else ""
            if tag:
                ax.annotate(tag, (r.storage_bytes, r.map50), textcoords="offset points", xytext=(5, 4),
                            fontsize=8, color=colour)
    dense = next((r for r in rows if r.kind == "dense"), None)
    if dense:
        ax.axhline(dense.map50, color="grey", linestyle="--", linewidth=1, label="dense mAP", zorder=1)
    ax.set_xscale("log")
    size = FuncFormatter(lambda b, _: f"{b / 1e6:g} MB" if b >= 1e6 else f"{b / 1e3:g} kB")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(size)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("storage (everything inference needs), log scale")
    ax.set_ylabel("mAP@0.5 (VOC)")
    ax.set_title("Storage against accuracy per variant (VQ labels: K; pruning: fraction)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return png(plt, fig)


def codebook_png(codebook, n: int = 16) -> bytes:
    """The first ``n`` codewords, each a unit-norm shape plotted over its coefficient index."""
    plt, fig = figure(8, 5.2)
    entries = list(codebook[:n])
    cols = 4
    rows = -(-len(entries) // cols)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(entries):
            ax.axis("off")
            continue
        ax.plot(range(len(entries[i])), entries[i], color="tab:green", marker=".", linewidth=1.5)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(f"codeword {i}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel("spline coefficient index", fontsize=9)
    fig.supylabel("shape value (unit norm)", fontsize=9)
    fig.suptitle(f"The first {len(entries)} of {len(codebook)} codewords", fontsize=10)
    return png(plt, fig)


def human_rows(rows: list[ReportRow]) -> list[dict]:
    """The variant table for people: rounded figures under readable headers."""
    return [{"variant": r.variant, "mAP at IoU 0.5": f"{r.map50:.4f}",
             "change (points)": f"{100 * r.delta_map50:+.2f}",
             **({"change out of distribution (points)": f"{100 * r.delta_map50_ood:+.2f}"}
                if r.delta_map50_ood is not None else {}),
             "storage": f"{r.storage_bytes:,} B",
             "smaller than dense": f"{r.compression:.1f}x",
             "runtime memory, 1 image": f"{r.runtime_bytes_1img / 1e6:.1f} MB"} for r in rows]


def markdown(report: RunReport, images: dict[str, bytes], file_links: bool = True) -> str:
    """The run's Markdown report: what ran, versions, the compression table, memory, images
    (embedded; with ``file_links`` also linked as files beside report.md)."""
    lines = [f"# SHARe-KAN pipeline run {report.run_name}".rstrip(), "",
             f"Dense head: **`mAP@0.5` {report.map50:.4f}** ({report.metric}), "
             f"torchmetrics AP50 {report.torchmetrics_map50:.4f}; total {report.seconds:.1f} s.", "",
             "## Stages", "", "| stage | version | new / reused | seconds | Ray node |", "|---|---|---|---|---|"]
    for name, s in report.stages.items():
        version = f"`{s.version}`" if s.version else "-"
        lines.append(f"| {name} | {version} | {s.state} | {s.seconds:.1f} | {s.node or '-'} |")
    if report.lost_nodes:
        lines += ["", f"**Ray node(s) lost during the run: {', '.join(report.lost_nodes)}** — their stages were "
                      "retried and their k-means actors restarted on the nodes left; the artifacts are the ones "
                      "an undisturbed run stores (same versions)."]
    if report.variants:
        lines += ["", "## Compression (storage and runtime bytes measured)", "",
                  markdown_table(table_rows(report.variants), variant_columns(report.variants))]
    if report.skipped_samples:
        lines += ["", f"## Skipped samples ({len(report.skipped_samples)})", ""]
        lines += [f"- {m}" for m in report.skipped_samples]
    if report.lutham:
        lines += [""] + lutham_lines(report.lutham)
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        lines += ["", f"![{name}]({uri})"] + ([f"[{name}]({name})"] if file_links else [])
    return "\n".join(lines) + "\n"


def publish(report: RunReport, out: Path) -> Path:
    """Write the run's files to ``out/runs/<run name>/`` and copy them to ``out/`` (the latest run);
    register the Markdown and tables with Prefect inside a flow run. Returns the run's folder."""
    from storage.files import atomic_write

    images = {}
    if report.variants:
        images["size_vs_map.png"] = size_vs_map_png(report.variants)
    if report.codebooks:  # the largest codebook's first entries
        store = ArtifactStore(parse_location(report.parameters.get("store")), create=False)
        images["codebook.png"] = codebook_png(store.get(report.codebooks[max(report.codebooks)]).array("codebook")[...])
    files = {"report.json": report.model_dump_json(indent=2).encode(), **images,
             "report.md": markdown(report, images).encode()}
    run_dir = out / "runs" / report.run_name
    for folder in (run_dir, out):
        for name, data in files.items():
            atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return run_dir
    create_markdown_artifact(key="sharekan-report", markdown=markdown(report, images, file_links=False),
                             description="SHARe-KAN pipeline report")
    if report.variants:
        create_table_artifact(key="sharekan-compression", table=human_rows(report.variants),
                              description="mAP at IoU 0.5, storage and runtime memory per variant")
    create_table_artifact(key="sharekan-stages", description="artifact version, state, seconds and Ray node per stage",
                          table=[{"stage": k, "version": v.version or "-", "state": v.state,
                                  "seconds": f"{v.seconds:.1f}", "node": v.node or "-"}
                                 for k, v in report.stages.items()])
    return run_dir
