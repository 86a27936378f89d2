#!/bin/sh
# /init of the nested KVM sandbox (tools/sandbox/run.sh). Owns the sandbox's early
# userspace: loads KVM (AMD SVM, emulated by QEMU) and 9p, mounts the host's root read-only
# at /host, chroots there and runs the job that run.sh left in the `ctl` share. Reports
# only through files in /ctl: `status` (the job's exit status) or `error` (why the sandbox
# could not run it). The console is a log file on the host (shown when the sandbox dies);
# the job's stdout/stderr are virtio-serial ports.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
step() { read -r up _ </proc/uptime; echo "sandbox-init: [$up] $*"; }
step "started"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in /lib/modules/*.ko; do
	insmod "$m" 2>/dev/null || step "insmod ${m##*/} failed"
	step "loaded ${m##*/}"
done

step "modules loaded"
halt_now() { sync; poweroff -f; while :; do sleep 3600; done; }
mkdir -p /ctl /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 ctl /ctl; then
	echo "sandbox-init: cannot mount the ctl share"
	halt_now
fi
fail() { step "error: $*"; echo "$*" >/ctl/error; halt_now; }

[ -c /dev/kvm ] || fail "no /dev/kvm inside the sandbox (kvm_amd did not load: $(dmesg | grep -i -E 'kvm|svm' | tail -n 3 | tr '\n' ' '))"

# cache=loose halves node's start-up here (docs/sandbox.md); the host tree must not change
# while the sandbox runs.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /host ||
	fail "cannot mount the host's root (9p)"
H=/host
mount -t proc proc $H/proc || fail "cannot mount /proc in the chroot"
mount -t sysfs sysfs $H/sys
# tracefs: the eBPF tests attach to tracepoints (test/integration/ebpf.test.ts).
mount -t tracefs tracefs $H/sys/kernel/tracing || step "cannot mount tracefs"
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/pts $H/dev/shm 2>/dev/null
mount -t devpts devpts $H/dev/pts
mount -t tmpfs tmpfs $H/dev/shm
# devtmpfs has no /dev/fd: bash process substitution needs it.
ln -sfn /proc/self/fd $H/dev/fd
ln -sfn /proc/self/fd/0 $H/dev/stdin
ln -sfn /proc/self/fd/1 $H/dev/stdout
ln -sfn /proc/self/fd/2 $H/dev/stderr
mount -t tmpfs -o mode=1777 tmpfs $H/tmp || fail "cannot mount /tmp in the chroot"
mount -t tmpfs -o mode=755 tmpfs $H/run
# The writable output share, at the same path as on the host.
out=$(cat /ctl/outdir)
mkdir -p "$H$out" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$H$out" ||
	fail "cannot mount the output share at $out"
# The caller's working directory, when it lives under /tmp or /run (masked above).
if [ -f /ctl/cwddir ]; then
	cwd=$(cat /ctl/cwddir)
	mkdir -p "$H$cwd" 2>/dev/null
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro cwd "$H$cwd" ||
		fail "cannot mount the working directory share at $cwd"
fi
ip link set lo up 2>/dev/null
step "mounted; waiting for the output ports"

# The job's stdout and stderr are virtio-serial ports, found by the names run.sh gave them;
# they appear once the host has answered virtio-console's control messages.
port() { for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/${p##*/}"; done; }
i=0
while :; do
	o=$(port tsvmm.stdout) e=$(port tsvmm.stderr)
	[ -c "$o" ] && [ -c "$e" ] && break
	i=$((i + 1))
	[ $i -le 100 ] || fail "no virtio-serial ports for stdout/stderr ($(ls /sys/class/virtio-ports 2>&1 | tr '\n' ' '))"
	sleep 0.1
done
step "running the job"
# A heartbeat through the ctl share: run.sh ends a sandbox whose kernel froze without a word
# (seen under nested emulation: no stall message, nothing runs) instead of waiting out the time limit.
(while :; do : >/ctl/heartbeat; sleep 10; done) &
if [ -f /ctl/interactive ]; then
	# The caller's terminal: its keys arrive on tsvmm.stdin, its resizes on tsvmm.winsize;
	# the job runs in a pseudo-terminal of script(1) (the host's util-linux), which copies
	# those keys in and the job's output (stdout and stderr, one stream) out to tsvmm.stdout.
	i=0
	while :; do
		si=$(port tsvmm.stdin) wz=$(port tsvmm.winsize)
		[ -c "$si" ] && [ -c "$wz" ] && break
		i=$((i + 1))
		[ $i -le 100 ] || fail "no virtio-serial ports for the terminal"
		sleep 0.1
	done
	cp /ctl/job.sh $H/run/tsvmm-job.sh
	chroot $H /usr/bin/script -q -e -c "/bin/bash /run/tsvmm-job.sh $wz" /dev/null <$si >$o 2>$e
	rc=$?
else
	chroot $H /bin/sh -c "$(cat /ctl/job.sh)" </dev/null >$o 2>$e
	rc=$?
fi
step "job exit status $rc"
echo $rc >/ctl/status
halt_now
