#!/bin/bash
# One sandbox job of the vsock bench (issue 16 point 4), run as
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 580 --out OUT -- \
#       docs/results/vsock-2026-12-07/job.sh OUT TAG INITRD [vsock.mjs args]
# (the tree built first: node tools/build.mjs; INITRD from tools/guest/build-initramfs.sh).
# With TSVMM_VSOCK_PROFILE=1 (a TSVMM_ variable: the sandbox passes those through), one more tsvmm-only run under --cpu-prof (its .cpuprofile in OUT/TAG-prof/)
# and per-second device counters (OUT/TAG-metrics.jsonl); its MiB/s are not comparable.
out=$1 tag=$2 initrd=$3
shift 3
cd "$(dirname "$0")/../../.." || exit 1
date -u
# Every tsvmm run appends its device counters once a second (cheap: one JSON line), and its log
# lines (a crash report among them) to TAG-tsvmm.log.
TSVMM_BENCH_RUN_ARGS="--metrics-path $out/$tag-runs-metrics.jsonl --metrics-interval 1 --log-path $out/$tag-tsvmm.log" \
	node tools/bench/vsock.mjs --initrd "$initrd" --out "$out/$tag.json" "$@" 2>&1 | tail -n 30
if [ "${TSVMM_VSOCK_PROFILE:-}" = 1 ]; then
	# After "$@": an option's last value wins, and the profile is one tsvmm run whatever --runs the job has.
	mkdir -p "$out/$tag-prof"
	TSVMM_BENCH_NODE_FLAGS="--cpu-prof --cpu-prof-dir=$out/$tag-prof" \
		TSVMM_BENCH_RUN_ARGS="--metrics-path $out/$tag-metrics.jsonl --metrics-interval 1" \
		node tools/bench/vsock.mjs --initrd "$initrd" --out "$out/$tag-prof.json" "$@" --only tsvmm --runs 1 2>&1 | tail -n 4
fi
date -u
