"""Export the trained detection head, its K=4,096 codebook and real input rows for
``bench/lutham_gpu.py`` (which runs where the store's packages are absent).

    python bench/export_trained.py --report artifacts/detection/report.json --out out/lutham/trained.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.store import ArtifactStore, parse_location  # noqa: E402
from tasks.head import load_head  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", default="artifacts/detection/report.json")
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--rows", type=int, default=3136, help="real standardised feature rows to export")
    p.add_argument("--out", default="out/lutham/trained.pt")
    a = p.parse_args(argv)
    report = json.loads(Path(a.report).read_text())
    store = ArtifactStore(parse_location(report.get("parameters", {}).get("store")), create=False)
    st = report["stages"]
    head = load_head(store.get(st["head"]["version"]))
    feats = torch.from_numpy(store.get(st["features_test"]["version"]).array("feats")[:32]).float()
    rows = head.standardise(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))[:a.rows]
    sizes = [head.kan.layers[0].in_features] + [lay.out_features for lay in head.kan.layers]
    codebook = torch.from_numpy(store.get(report["codebooks"][str(a.k)]).array("codebook")[...])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"sizes": sizes, "kan": head.kan.state_dict(), "codebook": codebook, "rows": rows.contiguous()}, a.out)
    print(f"wrote {a.out}: head {sizes}, codebook {tuple(codebook.shape)}, rows {tuple(rows.shape)}")


if __name__ == "__main__":
    main()
