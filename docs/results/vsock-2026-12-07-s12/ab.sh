#!/bin/bash
# One sandbox job comparing two builds of tsvmm against QEMU's vhost-vsock (issue 16 point 4,
# session 12): per round the base tree's tsvmm, the changed tree's tsvmm (their order swapped
# every round) and one QEMU run, so both tsvmm runs have the same QEMU neighbour. Run as
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 720 --out OUT -- \
#       docs/results/vsock-2026-12-07-s12/ab.sh OUT TAG INITRD BASE_TREE NEW_TREE ROUNDS [vsock.mjs args]
# (each tree built first: node tools/build.mjs; INITRD from tools/guest/build-initramfs.sh).
# Every tsvmm run appends its device counters once a second to OUT/TAG-VARIANT-metrics.jsonl
# (docs/results/vsock-2026-12-07/phases.mjs splits them by phase) and its log to OUT/TAG-VARIANT.log.
out=$1 tag=$2 initrd=$3 base=$4 new=$5 rounds=$6
shift 6
helper=$(cd "$(dirname "$0")/../../.." && pwd)/guest/build/vsock-bench
date -u
run() { # VARIANT TREE ROUND [vsock.mjs args]
	local v=$1 tree=$2 r=$3
	shift 3
	echo "== round $r $v $(date -u +%T)"
	(cd "$tree" && TSVMM_BENCH_RUN_ARGS="--metrics-path $out/$tag-$v-metrics.jsonl --metrics-interval 1 --log-path $out/$tag-$v.log" \
		node tools/bench/vsock.mjs --initrd "$initrd" --helper "$helper" --out "$out/$tag-r$r-$v.json" --runs 1 "$@" 2>&1 | tail -n 4)
}
for ((r = 1; r <= rounds; r++)); do
	if ((r % 2)); then first=base second=new; else first=new second=base; fi
	for v in $first $second; do
		if [ $v = base ]; then tree=$base; else tree=$new; fi
		run $v "$tree" $r --only tsvmm "$@"
	done
	run qemu "$new" $r --only qemu "$@"
done
date -u
