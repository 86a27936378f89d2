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
#   tsvmm.console=shell (what `tsvmm run` gives its own images): the agent in the background,
#   restarted when it dies, and a root shell on the console; power off when that shell exits.
#   tsvmm.rows=R tsvmm.cols=C: the host terminal's size for the console; TERM=... (a plain
#   parameter, so the kernel hands it to init as environment) names the host's terminal.
#   Otherwise /usr/bin/tsvmm-agent if present (until it exits), else a console shell.
# TERM is the kernel's (linux) unless the command line gave one.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=${TERM:-linux}
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
enc= shares= rootfs= root= rootmode=ro console= rows= cols=
set -f
for arg in $(cat /proc/cmdline); do
	case $arg in
	tsvmm.cmd=*) enc=${arg#tsvmm.cmd=} ;;
	tsvmm.share=*) shares="$shares ${arg#tsvmm.share=}" ;;
	tsvmm.rootfs=*) rootfs=${arg#tsvmm.rootfs=} ;;
	root=/dev/*) root=${arg#root=} ;;
	rw) rootmode=rw ;;
	ro) rootmode=ro ;;
	tsvmm.console=*) console=${arg#tsvmm.console=} ;;
	tsvmm.rows=*) rows=${arg#tsvmm.rows=} ;;
	tsvmm.cols=*) cols=${arg#tsvmm.cols=} ;;
	esac
done
set +f

# Modules are named NN-name.ko so that the glob order is the dependency order. One already
# loaded is skipped: this init runs again from a root drive it switched to. A module that a
# device's feature brought in (lib/modules/features: "NN-name.ko feature", the rows of
# tools/guest/modules.txt) loads only when that virtio device is there (each insmod costs
# boot time): its id is in /sys/bus/virtio/devices/*/device once virtio_mmio (an earlier
# module) has probed.
if [ -f /lib/modules/features ]; then
	while read -r ko feat; do eval "feat_${ko//[-.]/_}=\$feat"; done </lib/modules/features
fi
ids=
for m in /lib/modules/*.ko; do
	[ -e "$m" ] || continue
	base=${m##*/}
	name=${base#*-}
	name=${name%.ko}
	[ -d "/sys/module/${name//-/_}" ] && continue
	eval "feat=\${feat_${base//[-.]/_}:-}"
	# virtio device ids (virtio 1.x §5): 2 block, 4 entropy, 26 fs.
	case $feat in
	block | ext4) dev=0x0002 ;;
	rng) dev=0x0004 ;;
	virtiofs | overlay) dev=0x001a ;;
	*) dev= ;;
	esac
	if [ -n "$dev" ]; then
		[ -n "$ids" ] || ids=" $(cat /sys/bus/virtio/devices/*/device 2>/dev/null) "
		case $ids in *"$dev"*) ;; *) continue ;; esac
	fi
	insmod "$m" 2>/dev/null || echo "tsvmm-init: warning: insmod ${m##*/} failed"
done

# root=/dev/vdX (a drive with is_root_device, --drive ...,root): the kernel ignores it when it
# has an initramfs, so this init mounts it and hands over to the drive's own init (its /init,
# else /sbin/init) — the modules it needs (virtio_blk, ext4) came from the initramfs. Only
# from the initramfs (its / is rootfs, a ramfs or tmpfs), once: the drive's own init (this
# script again, when the drive was made from the initramfs) inherits TSVMM_ROOT_SWITCHED.
if [ -n "$root" ] && [ -z "${TSVMM_ROOT_SWITCHED:-}" ] &&
	case $(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts) in rootfs | ramfs | tmpfs) true ;; *) false ;; esac; then
	i=0
	while [ ! -b "$root" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	mkdir -p /sysroot
	if mount -o "$rootmode" "$root" /sysroot; then
		# /dev takes its submounts (pts, shm) along; /tmp's tmpfs stays behind, emptied.
		for d in /dev /proc /sys /run; do mkdir -p "/sysroot$d" 2>/dev/null; mount --move "$d" "/sysroot$d" 2>/dev/null; done
		umount /tmp 2>/dev/null
		next=/init
		[ -x /sysroot/init ] || next=/sbin/init
		export TSVMM_ROOT_SWITCHED=1
		exec switch_root /sysroot "$next"
	fi
	echo "tsvmm-init: error: cannot mount root $root ($rootmode); staying in the initramfs"
fi

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

# --share: tsvmm.share=TAG:DIR[:ro]. The host enforces read-only (virtiofsd serves a read-only
# bind mount); the guest mounts ro too, so writes fail at once with EROFS. With --rootfs host
# they are mounted inside the host's root, where the agent runs: DIR then exists on the host
# or lies under one of its tmpfs (tsvmm checks that before booting).
for s in $shares; do
	tag=${s%%:*} rest=${s#*:}
	dir=$newroot${rest%:ro} opt=rw
	[ "${rest%:ro}" = "$rest" ] || opt=ro
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

# The console shell: login-free root with job control (cttyhack makes the console its
# controlling terminal, setsid a session of its own), sized like the host's terminal. The
# host resizes it later through the agent (`stty -F /dev/console rows R cols C`, which also
# sends SIGWINCH to the shell's foreground job).
console_shell() {
	cd /root
	case $rows$cols in *[!0-9]*) ;; ?*) stty -F /dev/console rows "${rows:-24}" cols "${cols:-80}" 2>/dev/null ;; esac
	PS1='[tsvmm-guest \w]\$ ' setsid cttyhack sh -l
}

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
elif [ "$console" = shell ]; then
	agent=
	if [ -n "$newroot" ] && [ -x $newroot/run/tsvmm/tsvmm-agent ]; then
		agent="chroot $newroot /run/tsvmm/tsvmm-agent"
	elif [ -x /usr/bin/tsvmm-agent ]; then
		agent=/usr/bin/tsvmm-agent
	fi
	if [ -n "$agent" ]; then
		# Supervised: a dead agent is said on the console and restarted (it logs to /dev/kmsg).
		(
			while :; do
				$agent </dev/null >/dev/null 2>&1
				echo "<4>tsvmm-init: agent exit=$?; restarting it" >/dev/kmsg
				sleep 1
			done
		) &
	fi
	console_shell
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
