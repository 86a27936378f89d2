#!/bin/sh
# Boot bench of snapshots in one sandbox: s4 (all of boot8), then s2 (kernel copied + workers
# before config) and s3 (+ cached config check) with fewer runs while the job stays < 8 min.
set -u
out=$1 initrd=$2
start=$(date +%s)
bench() {
	cd /work/scratch-boot8/boot8-$1 && node tools/bench/boot.mjs --runs $2 --warmup 1 --initrd "$initrd" --out "$out/$1.json" 2>&1 | sed "s/^/[$1] /"
}
bench s4 3
for t in s2 s3; do
	[ $(($(date +%s) - start)) -lt 300 ] || { echo "[$t] skipped: $(($(date +%s) - start)) s elapsed"; continue; }
	bench $t 2
done
