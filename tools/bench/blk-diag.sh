#!/bin/bash
# Where virtio-blk time goes, tsvmm against QEMU: one blk.mjs run per VMM under `perf record`
# (system-wide: cpu-clock samples with call graphs, every KVM exit and userspace exit, context
# switches), reported as text per VMM by perf-report.sh: exits by reason, userspace exits by
# reason, context switches per thread, the hottest symbols. tsvmm's node runs with --perf-basic-prof (JIT
# symbols; not --cpu-prof: its SIGPROF kicked the vCPU threads out of KVM_RUN 50,000 times a
# run); --metrics-path gives the device's own counters. Needs
# KVM and perf; run it in the sandbox (the blk bench's arguments after the first --):
#
# BLK_DIAG_VMMS="tsvmm" looks at one only.
#
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 840 --out DIR -- \
#       tools/bench/blk-diag.sh DIR --initrd INITRD --small-mib 4 --large-mib 32
set -u
out=$1
shift
cd "$(dirname "$0")/../.." || exit 1
mkdir -p "$out"
# Does this kernel do non-blocking buffered reads/writes (RWF_NOWAIT) on tmpfs (where blk.mjs puts the image)?
python3 - > "$out/nowait.txt" 2>&1 <<'PY'
import os, tempfile
for d in ['/tmp', '/dev/shm']:
    fd, p = tempfile.mkstemp(dir=d)
    os.write(fd, b'x' * 65536)
    b = bytearray(4096)
    for name, f in [('preadv2', lambda: os.preadv(fd, [b], 0, os.RWF_NOWAIT)), ('pwritev2', lambda: os.pwritev(fd, [b], 0, os.RWF_NOWAIT))]:
        try: print(d, name, 'RWF_NOWAIT ->', f())
        except OSError as e: print(d, name, 'RWF_NOWAIT ->', e)
    os.close(fd); os.unlink(p)
print(open('/proc/mounts').read())
PY
for vmm in ${BLK_DIAG_VMMS:-tsvmm qemu}; do
	data=/tmp/perf-$vmm.data
	TSVMM_BENCH_NODE_FLAGS="--perf-basic-prof" \
		TSVMM_BENCH_RUN_ARGS="--metrics-path $out/metrics-$vmm.jsonl --metrics-interval 1" \
		perf record -a -g -F 499 -e cpu-clock -e kvm:kvm_exit -e kvm:kvm_userspace_exit -e sched:sched_switch -o "$data" -- \
		node tools/bench/blk.mjs --only "$vmm" --runs 1 --out "$out/blk-$vmm.json" "$@" 2>&1 | tail -4
	tools/bench/perf-report.sh "$data" "$vmm" > "$out/diag-$vmm.txt" 2>&1
	rm -f "$data"
done
ls -la "$out"
