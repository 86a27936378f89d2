#!/bin/bash
# Where the virtio-fs sequential read's time goes, tsvmm against QEMU: one virtiofs.mjs boot per
# VMM under a system-wide `perf record` that is enabled only while the guest reads the big file
# (virtiofs.mjs writes enable/disable into perf's control fifo at the guest's read-start and
# read-end marks), reported by perf-report.sh: KVM exits and userspace exits by reason, context
# switches and cpu-clock per thread (virtiofsd's threads, the vCPUs, QEMU's main loop), hottest
# symbols. Also what the guest saw (its virtio interrupts, the share's readahead; the JSON's
# `guest`) and the host's THP settings. Needs KVM and perf; run it in the sandbox:
#
#   flock /tmp/tsvmm-sandbox.lock tools/sandbox/run.sh --timeout 580 --out DIR -- \
#       tools/bench/virtiofs-diag.sh DIR --initrd INITRD --files 1000 --big-mib 64
#
# VFS_DIAG_VMMS="tsvmm" looks at one only.
set -u
out=$1
shift
cd "$(dirname "$0")/../.." || exit 1
mkdir -p "$out"
{
	for f in enabled shmem_enabled defrag; do echo "thp $f: $(cat /sys/kernel/mm/transparent_hugepage/$f 2>&1)"; done
	uname -r
} > "$out/host.txt"
for vmm in ${VFS_DIAG_VMMS:-tsvmm qemu}; do
	data=/tmp/perf-vfs-$vmm.data ctl=/tmp/perf-vfs-$vmm.ctl
	rm -f "$ctl" && mkfifo "$ctl"
	TSVMM_BENCH_PERF_CTL=$ctl perf record -D -1 --control "fifo:$ctl" -a -g -F 499 \
		-e cpu-clock -e kvm:kvm_exit -e kvm:kvm_userspace_exit -e sched:sched_switch -o "$data" -- \
		node tools/bench/virtiofs.mjs --only "$vmm" --runs 1 --out "$out/vfs-$vmm.json" "$@" 2>&1 | tail -4
	tools/bench/perf-report.sh "$data" "$vmm" > "$out/diag-$vmm.txt" 2>&1
	rm -f "$data" "$ctl"
done
ls -la "$out"
