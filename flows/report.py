"""A run's report for people: Markdown, a table and two images, as Prefect artifacts and files.

``publish`` writes ``report.md``, ``size_vs_map.png`` (storage bytes vs mAP@0.5 per variant) and
``codebook.png`` (example codebook entries, each a cubic-spline shape) next to ``report.json``,
and registers them with the Prefect API when called inside a flow run. Images are embedded in
the Markdown as data URIs (the UI renders them) and linked as files.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from sharekan.demo import format_table
from storage.store import ArtifactStore, parse_location

__all__ = ["publish", "markdown", "lutham_lines", "size_vs_map_png", "codebook_png", "VARIANT_COLUMNS",
           "stage_state"]

_W, _H, _PAD = 640, 400, 48
VARIANT_COLUMNS = [("variant", "variant", "s"), ("map50", "mAP@0.5", ".4f"), ("delta_map50", "Δ mAP", "+.4f"),
                   ("storage_bytes", "storage B", ",d"), ("compression", "ratio", ".1f"),
                   ("runtime_bytes_1img", "runtime B 1 img", ",d")]


def stage_state(stage: dict) -> str:
    """The state shown for a stage: new, reused, or why it was skipped."""
    return str(stage.get("skipped") or ("new" if stage.get("created") else "reused"))


def lutham_lines(lut: dict) -> list[str]:
    """The LUTHAM section: why it was skipped, or its validation, detector mAP, plan and timings."""
    lines = [f"## LUTHAM (codebook K={lut.get('codebook_k')})", ""]
    if lut.get("skipped"):
        return lines + [f"**{lut['skipped']}**"]
    cases = lut.get("cases", [])
    lines += [f"**validated** on {lut['device']} ({lut['arch']}), artifact `{lut['version']}`: "
              f"{len(cases)} cases (random rows inside and outside the grid range, real test rows), "
              f"max relative error {lut['max_rel_error']:.2e} (bound 1e-3), "
              f"{'every output element written' if lut['all_written'] else 'SOME OUTPUTS UNWRITTEN'}; "
              f"detector mAP@0.5 with LUTHAM {lut['map50_lutham']:.4f} vs torch VQ reference "
              f"{lut['map50_reference']:.4f}.", "", f"Plan: {lut.get('plan_summary', '')}.", ""]
    timings = lut.get("timings_us") or []
    if timings:
        names = [k for k in timings[0] if k != "rows"]
        lines += ["Forward time, µs (median wall clock per call, device synchronised; a quick check against eager "
                  "heads — `bench/lutham_gpu.py` compares the compiled dense baselines):", "",
                  "| rows | " + " | ".join(names) + " | LUTHAM vs eager dense fp16 |", "|---" * (len(names) + 2) + "|"]
        for t in timings:
            ratio = f"{t['dense fp16'] / t['LUTHAM']:.2f}×" if t.get("dense fp16") and t.get("LUTHAM") else "-"
            lines.append(f"| {t['rows']} | " + " | ".join("-" if t[n] is None else f"{t[n]:,.0f}" for n in names)
                         + f" | {ratio} |")
    return lines


def _canvas():
    img = Image.new("RGB", (_W, _H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([_PAD, _PAD // 2, _W - _PAD // 2, _H - _PAD], outline="black")
    return img, d


def size_vs_map_png(rows: list[dict]) -> bytes:
    """Scatter of log storage bytes (x) against mAP@0.5 (y), one labelled point per variant."""
    img, d = _canvas()
    xs = [math.log10(r["storage_bytes"]) for r in rows]
    ys = [r["map50"] for r in rows]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02
    for r, x, y in zip(rows, xs, ys):
        px = _PAD + (x - x0) / (x1 - x0) * (_W - 1.5 * _PAD)
        py = _H - _PAD - (y - y0) / (y1 - y0) * (_H - 1.5 * _PAD)
        colour = "red" if r["variant"].startswith("VQ") else "blue"
        d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        d.text((px + 6, py - 6), r["variant"], fill="black")
    d.text((_PAD, _H - _PAD + 8), f"storage bytes, log10 {x0:.1f} … {x1:.1f}", fill="black")
    d.text((4, 4), f"mAP@0.5 {y0:.3f} … {y1:.3f}", fill="black")
    return _png(img)


def codebook_png(codebook, n: int = 16) -> bytes:
    """The first ``n`` codebook entries as polylines in a 4×4 grid (each a unit spline shape)."""
    img = Image.new("RGB", (_W, _H), "white")
    d = ImageDraw.Draw(img)
    cols, rows_ = 4, math.ceil(min(n, len(codebook)) / 4)
    cw, ch = _W // cols, _H // max(1, rows_)
    for i, entry in enumerate(codebook[:n]):
        ox, oy = (i % cols) * cw, (i // cols) * ch
        d.rectangle([ox + 2, oy + 2, ox + cw - 2, oy + ch - 2], outline="grey")
        lo, hi = float(min(entry)), float(max(entry))
        span = hi - lo or 1.0
        pts = [(ox + 6 + j * (cw - 12) / (len(entry) - 1), oy + ch - 6 - (float(v) - lo) / span * (ch - 12))
               for j, v in enumerate(entry)]
        d.line(pts, fill="darkgreen", width=2)
        d.text((ox + 6, oy + 4), f"#{i}", fill="black")
    return _png(img)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def markdown(report: dict, images: dict[str, bytes]) -> str:
    """The run's Markdown report: what ran, versions, the compression table, memory, images."""
    lines = ["# SHARe-KAN pipeline run", "",
             f"Dense head: **mAP@0.5 {report['map50']:.4f}** ({report['metric']}), "
             f"torchmetrics AP50 {report['torchmetrics_map50']:.4f}; total {report['seconds']:.1f} s.", "",
             "## Stages", "", "| stage | version | new / reused | seconds |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | `{s.get('version')}` | {stage_state(s)} | {s.get('seconds', 0):.1f} |")
    if report["variants"]:
        lines += ["", "## Compression (storage and runtime bytes measured)", "", "```",
                  format_table(report["variants"], VARIANT_COLUMNS), "```"]
    if report.get("skipped_samples"):
        lines += ["", f"## Skipped samples ({len(report['skipped_samples'])})", ""]
        lines += [f"- {m}" for m in report["skipped_samples"]]
    if report.get("lutham"):
        lines += [""] + lutham_lines(report["lutham"])
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        lines += ["", f"![{name}]({uri})", f"[{name}]({name})"]
    return "\n".join(lines) + "\n"


def publish(report: dict, out: Path) -> None:
    """Write the Markdown report and images beside ``report.json``; register Prefect artifacts."""
    images = {}
    if report["variants"]:
        images["size_vs_map.png"] = size_vs_map_png(report["variants"])
    cb_stage = max((k for k in report["stages"] if k.startswith("codebook_K")), key=lambda k: int(k[10:]),
                   default=None)
    if cb_stage:
        store = ArtifactStore(parse_location(report["parameters"]["store"]), create=False)
        images["codebook.png"] = codebook_png(store.get(report["stages"][cb_stage]["version"]).array("codebook")[:16])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (out / name).write_bytes(data)
    md = markdown(report, images)
    (out / "report.md").write_text(md)
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_markdown_artifact(key="sharekan-report", markdown=md, description="SHARe-KAN pipeline report")
    if report["variants"]:
        create_table_artifact(key="sharekan-compression", table=report["variants"],
                              description="mAP@0.5, storage and runtime bytes per variant")
    create_table_artifact(key="sharekan-stages", table=[{"stage": k, **v} for k, v in report["stages"].items()],
                          description="artifact version and seconds per stage")
