#!/bin/bash
# Boots the default guest over and over (2 vCPUs, quiet, `exec -- true`) beside a busy loop, for
# SECONDS, stopping at the first boot that fails; each failing boot's output (with tsvmm's
# diagnosis of a hang) is kept as OUT/FAIL-N.log, one line per boot goes to OUT/summary.txt.
# Run it inside the sandbox to check the sandbox itself (docs/sandbox.md, "Dying early"):
#   tools/sandbox/run.sh --attempts 1 --out /tmp/loop -- tools/sandbox/boot-loop.sh /tmp/loop 480
set -u
out=${1:?usage: boot-loop.sh OUT_DIR SECONDS}
secs=${2:?usage: boot-loop.sh OUT_DIR SECONDS}
cd "$(dirname "$0")/../.."
until=$(($(date +%s) + secs))
# The busy loop competes with the vCPU threads, as other tests and builds do in CI.
(while :; do :; done) &
busy=$!
trap 'kill $busy 2>/dev/null' EXIT
i=0
while [ "$(date +%s)" -lt "$until" ]; do
	i=$((i + 1))
	t0=$(date +%s)
	node dist/tsvmm.js exec --vcpus 2 --append quiet --timeout 200 -- true >"$out/boot-$i.log" 2>&1
	rc=$?
	echo "boot $i: exit $rc, $(($(date +%s) - t0)) s" | tee -a "$out/summary.txt"
	if [ $rc -ne 0 ]; then
		mv "$out/boot-$i.log" "$out/FAIL-$i.log"
		exit 1
	fi
	rm -f "$out/boot-$i.log"
done
