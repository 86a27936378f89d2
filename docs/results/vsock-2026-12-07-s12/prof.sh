#!/bin/bash
# One tsvmm run of the vsock bench under --cpu-prof (main thread and workers; OUT/TAG-prof/*.cpuprofile)
# with the device counters once a second (OUT/TAG-metrics.jsonl), for where the time goes. Run as
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 400 --out OUT -- \
#       docs/results/vsock-2026-12-07-s12/prof.sh OUT TAG INITRD [vsock.mjs args]
# Its MiB/s are not comparable (the profiler's cost).
out=$1 tag=$2 initrd=$3
shift 3
cd "$(dirname "$0")/../../.." || exit 1
date -u
mkdir -p "$out/$tag-prof"
TSVMM_BENCH_NODE_FLAGS="--cpu-prof --cpu-prof-dir=$out/$tag-prof" \
	TSVMM_BENCH_RUN_ARGS="--metrics-path $out/$tag-metrics.jsonl --metrics-interval 1" \
	node tools/bench/vsock.mjs --initrd "$initrd" --out "$out/$tag.json" --only tsvmm --runs 1 "$@" 2>&1 | tail -n 4
date -u
