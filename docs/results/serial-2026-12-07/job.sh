#!/bin/bash
# job.sh OUT DIR LABEL: a quiet and a verbose `tsvmm exec` (its own boot) writing 128 KiB to ttyS0, with DIR's dist/ (run inside tools/sandbox/run.sh --out OUT)
set -u
out=$1 dir=$2 label=$3
mkdir -p "$out"
w='head -c 131072 /dev/zero | tr "\0" x > /dev/ttyS0; echo done-writing'
run() { local name=$1; shift
  local t0=$(date +%s.%N)
  timeout 250 node "$dir/dist/tsvmm.js" exec --timeout 200 --json --console-log "$out/$label-$name.console" "$@" -- sh -c "$w" >"$out/$label-$name.json" 2>"$out/$label-$name.err"
  local rc=$? t1=$(date +%s.%N)
  printf '%s-%s rc=%s wall=%.1fs console=%sB\n' "$label" "$name" "$rc" "$(awk "BEGIN{print $t1-$t0}")" "$(wc -c <"$out/$label-$name.console")" | tee -a "$out/summary.txt"
  grep -a -n "DF\|double fault\|triple\|Kernel panic\|BUG\|Oops\|stack guard" "$out/$label-$name.console" | head -5 | tee -a "$out/summary.txt"
}
echo "$label $(git -C "$dir" rev-parse --short HEAD) $(date -u +%FT%TZ)" | tee -a "$out/summary.txt"
run quiet --append quiet
run verbose
