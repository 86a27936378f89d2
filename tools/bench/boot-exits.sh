#!/bin/bash
# Forwarded exits and time of default-guest boots (issue 16 point 2), where KVM works:
#   tools/sandbox/run.sh --out DIR -- tools/bench/boot-exits.sh DIR [TSVMM_DIR] [SERIAL_BYTES]
# Boots `exec -- true` quiet (--append quiet) and verbose (the kernel's whole log on ttyS0), then
# one exec that writes SERIAL_BYTES (default 65536) of text to /dev/ttyS0 through the tty layer
# (the 8250 driver's THRE-interrupt path). Per run: wall seconds, console bytes, and exec
# --json's `exits` (forwarded to main by device, served in vCPU threads), in DIR/summary.txt.
# TSVMM_DIR (default: this checkout) is the tsvmm whose dist/ runs: built beforehand.
set -u
out=${1:?usage: boot-exits.sh OUT_DIR [TSVMM_DIR] [SERIAL_BYTES]}
dir=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
bytes=${3:-65536}
mkdir -p "$out"
run() { # NAME EXEC-ARGS... -- CMD...
	local name=$1
	shift
	local t0 t1
	t0=$(date +%s.%N)
	node "$dir/dist/tsvmm.js" exec --timeout 280 --json --console-log "$out/$name.console" "$@" >"$out/$name.json" 2>"$out/$name.err"
	local rc=$?
	t1=$(date +%s.%N)
	printf '%s rc=%s wall=%.1fs console=%sB %s\n' "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" "$(wc -c <"$out/$name.console")" "$(tail -n 1 "$out/$name.json")" | tee -a "$out/summary.txt"
}
echo "tsvmm $(git -C "$dir" rev-parse --short HEAD 2>/dev/null) in $dir, $(nproc) CPUs, $(date -u +%FT%TZ)" | tee -a "$out/summary.txt"
run quiet --append quiet -- true
run verbose -- true
run "tty-$bytes" --append quiet -- sh -c "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz012345 | head -c $bytes > /dev/ttyS0"
