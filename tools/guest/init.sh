#!/bin/sh
# /init of tsvmm's default guest (busybox). Owns early userspace: mounts, module loading,
# the marker lines the host reads, and what runs next. It must not print anything else on
# a healthy boot: the console is slow and boot benchmarks time it.
#
# Contract with the host (docs/default-guest.md):
#   tsvmm-init: cpus=<online CPUs> mem_kb=<MemTotal>
#   tsvmm-init: ready                  <- boot benchmarks stop the clock here
#   tsvmm.cmd=<base64> on the kernel command line: run it with sh -c, then
#   tsvmm-init: exit=<status>          and power off.
#   Otherwise /usr/bin/tsvmm-agent if present (until it exits), else a console shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
# devtmpfs has no /dev/fd; bash process substitution and many scripts need it.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr

# A dotted parameter is not handed to init as env or argv: read it from /proc/cmdline.
enc= shares= rootfs=
set -f
for arg in $(cat /proc/cmdline); do
	case $arg in
	tsvmm.cmd=*) enc=${arg#tsvmm.cmd=} ;;
	tsvmm.share=*) shares="$shares ${arg#tsvmm.share=}" ;;
	tsvmm.rootfs=*) rootfs=${arg#tsvmm.rootfs=} ;;
	esac
done
set +f

# Modules are named NN-name.ko so that the glob order is the dependency order. The file
# system modules load only when the host shares a directory (each insmod costs boot time).
for m in /lib/modules/*.ko; do
	[ -e "$m" ] || continue
	case ${m##*/} in
	[0-9]*-fuse.ko | [0-9]*-virtiofs.ko | [0-9]*-overlay.ko) [ -n "$shares$rootfs" ] || continue ;;
	esac
	insmod "$m" 2>/dev/null || echo "tsvmm-init: warning: insmod ${m##*/} failed"
done

# --share: tsvmm.share=TAG:DIR[:ro]. The host enforces read-only (virtiofsd serves a read-only
# bind mount); the guest mounts ro too, so writes fail at once with EROFS.
for s in $shares; do
	tag=${s%%:*} rest=${s#*:}
	dir=${rest%:ro} opt=rw
	[ "$dir" = "$rest" ] || opt=ro
	mkdir -p "$dir" && mount -t virtiofs -o "$opt" "$tag" "$dir" || echo "tsvmm-init: warning: mounting share $tag at $dir failed"
done
ip link set lo up 2>/dev/null

cpus=$(grep -c '^processor' /proc/cpuinfo)
mem=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
echo "tsvmm-init: cpus=$cpus mem_kb=$mem"
echo "tsvmm-init: ready"

halt_now() {
	sync
	poweroff -f
	# poweroff -f only returns if the machine has no way to power off; init must not exit.
	while :; do sleep 3600; done
}

# --rootfs host: tsvmm.rootfs=TAG. The host's / read-only at /newroot with tmpfs where
# programs write, this guest's proc, sys and dev inside, and the agent (static, from this
# initramfs) started chrooted there; init stays outside to power off after it.
newroot=
if [ -n "$rootfs" ]; then
	newroot=/newroot
	mkdir -p $newroot
	if mount -t virtiofs -o ro "$rootfs" $newroot; then
		for d in tmp run var/tmp root; do
			[ -d $newroot/$d ] && mount -t tmpfs tmpfs $newroot/$d
		done
		mount -t proc proc $newroot/proc
		mount -t sysfs sysfs $newroot/sys
		mount -t devtmpfs devtmpfs $newroot/dev
		mkdir -p $newroot/dev/pts $newroot/dev/shm
		mount -t devpts devpts $newroot/dev/pts
		mount -t tmpfs tmpfs $newroot/dev/shm
		[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs $newroot/sys/kernel/tracing 2>/dev/null
		mkdir -p $newroot/run/tsvmm
		[ -x /usr/bin/tsvmm-agent ] && cp /usr/bin/tsvmm-agent $newroot/run/tsvmm/tsvmm-agent
	else
		echo "tsvmm-init: warning: mounting the host root ($rootfs) failed"
		newroot=
	fi
fi

if [ -n "$enc" ]; then
	cmd=$(echo "$enc" | base64 -d 2>/dev/null)
	if [ -z "$cmd" ]; then
		echo "tsvmm-init: error: tsvmm.cmd is not valid base64"
		echo "tsvmm-init: exit=127"
		halt_now
	fi
	cd /root
	if [ -n "$newroot" ]; then chroot $newroot /bin/sh -c "cd /root; $cmd"; else sh -c "$cmd"; fi
	echo "tsvmm-init: exit=$?"
	halt_now
elif [ -n "$newroot" ] && [ -x $newroot/run/tsvmm/tsvmm-agent ]; then
	chroot $newroot /run/tsvmm/tsvmm-agent
	echo "tsvmm-init: agent exit=$?"
	halt_now
elif [ -x /usr/bin/tsvmm-agent ]; then
	/usr/bin/tsvmm-agent
	echo "tsvmm-init: agent exit=$?"
	halt_now
else
	cd /root
	setsid cttyhack sh
	halt_now
fi
