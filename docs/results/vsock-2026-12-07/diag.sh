#!/bin/bash
# A diagnostic sandbox job (session 11): tsvmm alone, one run per variant, each run's device
# counters once a second (OUT/TAG-VARIANT-metrics.jsonl; docs/results/vsock-2026-12-07/phases.mjs
# splits them by phase). Run as
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 580 --out OUT -- \
#       docs/results/vsock-2026-12-07/diag.sh OUT TAG INITRD VARIANT... -- [vsock.mjs args]
# where a VARIANT is NAME or NAME:ENV=VALUE[,ENV=VALUE...] (TSVMM_ variables set for that run).
out=$1 tag=$2 initrd=$3
shift 3
variants=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do variants+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
cd "$(dirname "$0")/../../.." || exit 1
date -u
for v in "${variants[@]}"; do
	name=${v%%:*} envs=()
	[ "$name" != "$v" ] && IFS=, read -ra envs <<<"${v#*:}"
	echo "== $name ${envs[*]}"
	env "${envs[@]}" TSVMM_BENCH_RUN_ARGS="--metrics-path $out/$tag-$name-metrics.jsonl --metrics-interval 1" \
		node tools/bench/vsock.mjs --initrd "$initrd" --out "$out/$tag-$name.json" --only tsvmm --runs 1 "$@" 2>&1 | tail -n 8
	node docs/results/vsock-2026-12-07/phases.mjs "$out/$tag-$name-metrics.jsonl"
done
date -u
