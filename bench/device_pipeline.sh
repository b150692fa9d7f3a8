#!/usr/bin/env bash
# The pipeline end to end on a GPU machine: `sharekan run` on the embedded default under a
# temporary Prefect server, with a local Ray cluster that sees the GPU and an Icechunk store, so
# the LUTHAM stage compiles, validates and stores its binary on a real GPU worker.
#
#   bash bench/device_pipeline.sh OUTDIR [WORKDIR]
#
# Needs the project's packages importable (installed, or PYTHONPATH with a device bundle).
# Writes to OUTDIR: pipeline_gpu.json (the run's report.json), report.md, run.log (the CLI's
# output) and artifacts.txt (`sharekan artifacts ls` and `show` of the LUTHAM version).
set -euo pipefail
out=${1:?usage: device_pipeline.sh OUTDIR [WORKDIR]}
work=${2:-$(mktemp -d)}
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$work"  # paths in the report relative to it: no machine's folders in the results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$SECONDS
python3 -m cli.main run --store store --out detection 2>&1 | tee "$out/run.log"
echo "sharekan run: $((SECONDS - start)) s" | tee -a "$out/run.log"
cp detection/report.json "$out/pipeline_gpu.json"
cp detection/report.md "$out/report.md"
version=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['lutham']['version'])" "$out/pipeline_gpu.json")
{ python3 -m cli.main artifacts --store store ls
  python3 -m cli.main artifacts --store store show "$version"; } > "$out/artifacts.txt" 2>&1
