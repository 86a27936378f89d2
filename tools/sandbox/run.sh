#!/bin/bash
# Runs a command where KVM works, emulating it when the host has none: inside QEMU (TCG,
# emulated AMD SVM + nested paging) booting Debian's kernel, with this machine's / shared
# read-only. Owns tools/sandbox/; reuses tools/guest/ for the kernel and the initramfs.
#
#   run.sh [--mem SIZE] [--smp N] [--timeout SEC] [--out DIR] [--attempts N] [--sandbox|--native] -- CMD ARGS...
#
# Native KVM (a hardware kvm_intel/kvm_amd module behind /dev/kvm) runs CMD directly,
# unless --sandbox or TSVMM_SANDBOX=always. TSVMM_SANDBOX=never refuses the sandbox.
# Exit status: CMD's, or 125 when the sandbox itself failed (a dead sandbox is retried until
# --attempts boots have died, default 2), 2 for usage.
# Environment: TSVMM_SANDBOX=auto|always|never, TSVMM_SANDBOX_TIMEOUT (default 900 s),
# TSVMM_SANDBOX_CPU (QEMU -cpu, default EPYC,+svm,+npt), TSVMM_CACHE (kernel + images),
# TSVMM_SANDBOX_TCG_THREAD=multi|single and TSVMM_SANDBOX_KERNEL_RECORD (another kernel.json
# from tools/guest/fetch-kernel.sh --package: the sandbox's own kernel) — both only to study
# the emulator's faults (docs/testing.md),
# TSVMM_SANDBOX_VERBOSE=1 (copy the sandbox console, with init's timed steps, to stderr).
# Inside: cwd and PATH/HOME/CI/TSVMM_* are kept, / is read-only, /tmp and /run are tmpfs,
# and --out DIR (default: a fresh temp dir, exported as TSVMM_SANDBOX_OUT, removed after)
# is writable at the same path on both sides.
# Interactive: when stdin is a terminal, CMD gets a terminal too — a pseudo-terminal inside
# (script(1)), sized like this one and resized with it, fed from this terminal in raw mode
# through a virtio-serial port (QEMU's stdio chardev; Ctrl-C and Ctrl-Z reach CMD); this
# terminal's settings come back when the sandbox ends, however it ends. CMD's output is then
# one stream (the pseudo-terminal's). TSVMM_SANDBOX_TTY=0 forces the non-interactive way.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$HERE/../guest
MEM=4G SMP=2 TIMEOUT=${TSVMM_SANDBOX_TIMEOUT:-900} OUT= MODE=${TSVMM_SANDBOX:-auto} ATTEMPTS=2
# The emulated CPU must offer SVM with nested paging for kvm_amd (override only to test).
CPU=${TSVMM_SANDBOX_CPU:-EPYC,+svm,+npt}
usage() { echo "usage: $0 [--mem SIZE] [--smp N] [--timeout SEC] [--out DIR] [--attempts N] [--sandbox|--native] -- CMD ARGS..." >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
	--mem) MEM=${2:?}; shift 2 ;;
	--smp) SMP=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--out) OUT=${2:?}; shift 2 ;;
	--attempts) ATTEMPTS=${2:?}; shift 2 ;;
	--sandbox) MODE=always; shift ;;
	--native) MODE=never; shift ;;
	--) shift; break ;;
	*) usage ;;
	esac
done
[ $# -gt 0 ] || usage
case $TIMEOUT in '' | *[!0-9]*) usage ;; esac
case $ATTEMPTS in '' | 0 | *[!0-9]*) usage ;; esac

log() { echo "sandbox: $*" >&2; }
INTERACTIVE=0
if [ -t 0 ] && [ "${TSVMM_SANDBOX_TTY:-1}" != 0 ]; then INTERACTIVE=1; fi

# PVM and other software KVMs expose /dev/kvm but cannot run a stock kernel: only a
# hardware vendor module counts as native.
native_kvm() { [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; }
if [ "$MODE" = never ] || { [ "$MODE" = auto ] && native_kvm; }; then
	native_kvm || log "warning: no hardware KVM here; running natively anyway"
	exec "$@"
fi

log "no hardware KVM: running in QEMU software emulation (TCG with nested SVM); this is slow"
. "$GUEST/need.sh"
need qemu-system-x86_64 qemu-system-x86
qemu_major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
if [ "${qemu_major:-0}" -lt 9 ]; then
	log "warning: QEMU $qemu_major.x is older than 9.0: its TCG can miss interrupts and freeze the sandbox kernel (tools/setup.sh installs a newer one; docs/sandbox.md)"
fi

# A cached kernel is used as is: resolving the Debian meta package costs a second per run.
record=${TSVMM_SANDBOX_KERNEL_RECORD:-${TSVMM_CACHE:-${HOME:-/root}/.cache/tsvmm}/kernel/kernel.json}
if ! grep -q '"vmlinux"' "$record" 2>/dev/null; then
	record=$("$GUEST/fetch-kernel.sh") || { log "cannot fetch the sandbox kernel"; exit 125; }
fi
# The unpacked ELF kernel boots through PVH, skipping ~5 s of emulated decompression.
kernel=$(sed -n 's/.*"vmlinux": *"\([^"]*\)".*/\1/p' "$record")
[ -n "$kernel" ] || kernel=$(sed -n 's/.*"kernel": *"\([^"]*\)".*/\1/p' "$record")
# Another sandbox kernel (TSVMM_SANDBOX_KERNEL_RECORD) needs its own modules in the initramfs.
kver_args=()
if [ -n "${TSVMM_SANDBOX_KERNEL_RECORD:-}" ]; then
	kver_args=(--kver "$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$record")"
		--moddir "$(sed -n 's/.*"modulesDir": *"\([^"]*\)".*/\1/p' "$record")")
fi
initrd=$("$GUEST/build-initramfs.sh" --name sandbox --init "$HERE/init.sh" --no-guest "${kver_args[@]}" \
	--modules "irqbypass kvm ccp kvm_amd netfs fscache 9pnet 9p 9pnet_virtio virtio_pci virtio_console") ||
	{ log "cannot build the sandbox initramfs"; exit 125; }
# Tests inside boot the default guest from a read-only cache: have it ready first.
if [ -z "${TSVMM_SANDBOX_NO_GUEST:-}" ]; then
	"$GUEST/build-initramfs.sh" >/dev/null || log "warning: default guest initramfs not built"
fi
# tsvmm boots a bzImage through its vmlinux, unpacked once into the cache (vmm/boot/unpack.ts):
# unpack the default kernel here, where the cache is writable, so no boot inside pays for it.
bzimage=$(sed -n 's/.*"kernel": *"\([^"]*\)".*/\1/p' "$record")
if [ -f "$HERE/../../dist/tsvmm.js" ] && [ -n "$bzimage" ]; then
	node "$HERE/../../bin/tsvmm.js" unpack "$bzimage" >/dev/null || log "warning: tsvmm unpack $bzimage failed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tsvmm-sandbox.XXXXXX")
keep_out=1
if [ -z "$OUT" ]; then OUT=$work/out; keep_out=0; fi
mkdir -p "$work/ctl" "$OUT"
OUT=$(cd "$OUT" && pwd -P)
cleanup() {
	[ -n "${qpid:-}" ] && kill "$qpid" 2>/dev/null
	# QEMU restores the terminal when it exits normally; not when the time limit killed it.
	[ -n "${saved_tty:-}" ] && stty "$saved_tty" <&5 2>/dev/null
	[ -n "${cat_out:-}" ] && kill "$cat_out" "$cat_err" 2>/dev/null
	[ "$keep_out" = 1 ] || rm -rf "$OUT"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The job: cwd, environment and argv, each value single-quoted for sh.
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
	printf 'cd %s || { echo "sandbox: the working directory is not visible inside (/tmp and /run are fresh tmpfs there)" >&2; exit 125; }\n' "$(q "$PWD")"
	for v in PATH HOME USER LOGNAME LANG LC_ALL TERM CI $(compgen -e | grep '^TSVMM_'); do
		[ -n "${!v+x}" ] && printf 'export %s=%s\n' "$v" "$(q "${!v}")"
	done
	printf 'export TMPDIR=/tmp TSVMM_IN_SANDBOX=1 TSVMM_SANDBOX_OUT=%s\n' "$(q "$OUT")"
	if [ "$INTERACTIVE" = 1 ]; then
		# Inside script(1)'s pseudo-terminal: this terminal's size now, and each resize as a
		# "ROWS COLS" line on the tsvmm.winsize port (init.sh passes its path as $1).
		read -r rows cols < <(stty size <&0 2>/dev/null) || true
		[ -n "${rows:-}" ] && printf 'stty rows %s cols %s\n' "$rows" "$cols"
		printf 't=$(tty)\n(while read -r r c; do stty -F "$t" rows "$r" cols "$c"; done <"$1" &)\n'
	fi
	printf 'exec'
	for a in "$@"; do printf ' %s' "$(q "$a")"; done
	printf '\n'
} >"$work/ctl/job.sh"
echo "$OUT" >"$work/ctl/outdir"
# /tmp and /run are fresh tmpfs inside: a working directory under them (a CI checkout in /tmp,
# say) is shared on its own, read-only, at the same path.
cwd_share=()
case $PWD/ in /tmp/* | /run/*)
	echo "$PWD" >"$work/ctl/cwddir"
	cwd_share=(-virtfs "local,path=$PWD,mount_tag=cwd,readonly=on,security_model=none,multidevs=remap") ;;
esac

# QEMU's stdin: the terminal in interactive mode (its stdio chardev makes it raw), else nothing.
tty_devs=() fg=()
if [ "$INTERACTIVE" = 1 ]; then
	# timeout(1) would put QEMU in a process group of its own, which may not use the terminal.
	fg=(--foreground)
	exec 5<&0
	saved_tty=$(stty -g <&5)
	touch "$work/ctl/interactive"
	# Resizes go in through a pipe chardev (QEMU reads winsize.in); fd 6 keeps it open.
	mkfifo "$work/winsize.in" "$work/winsize.out"
	exec 6<>"$work/winsize.in" 7<>"$work/winsize.out"
	tty_devs=(-chardev stdio,id=si,signal=off -device virtserialport,chardev=si,name=tsvmm.stdin
		-chardev "pipe,id=wz,path=$work/winsize" -device virtserialport,chardev=wz,name=tsvmm.winsize)
	send_size() { local s; s=$(stty size <&5 2>/dev/null) && echo "$s" >&6; }
	trap send_size WINCH
else
	exec 5</dev/null
fi

STALL_PATTERN='soft lockup|self-detected stall|kthread starved'
# init.sh touches ctl/heartbeat every 10 s while the job runs (TSVMM_SANDBOX_HANG_SECS: for tests).
HANG_SECS=${TSVMM_SANDBOX_HANG_SECS:-180}

run_once() {
	rm -f "$work/ctl/status" "$work/ctl/error" "$work/ctl/heartbeat" "$work/died" "$work/console.log"
	# QEMU writes CMD's stdout/stderr into fifos that cat copies to ours: QEMU cannot
	# reopen an inherited socket or pipe by path, and cat can.
	rm -f "$work/stdout" "$work/stderr"
	mkfifo "$work/stdout" "$work/stderr"
	cat "$work/stdout" & cat_out=$!
	cat "$work/stderr" >&2 & cat_err=$!
	local fs='security_model=none,multidevs=remap'
	# The pc machine, not microvm: under TCG microvm's kernel finds no timer to calibrate
	# against and stalls for minutes.
	timeout "${fg[@]}" -k 10 "$TIMEOUT" qemu-system-x86_64 \
		-M pc -accel "tcg,thread=${TSVMM_SANDBOX_TCG_THREAD:-multi}" -cpu "$CPU" -m "$MEM" -smp "$SMP" \
		-nodefaults -no-user-config -display none -no-reboot \
		-kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 quiet panic=-1 transparent_hugepage=never" \
		-serial "file:$work/console.log" \
		-virtfs "local,path=/,mount_tag=hostroot,readonly=on,$fs" \
		-virtfs "local,path=$work/ctl,mount_tag=ctl,$fs" \
		-virtfs "local,path=$OUT,mount_tag=out,$fs" "${cwd_share[@]}" \
		-device virtio-serial-pci \
		-chardev "file,id=so,path=$work/stdout" -device virtserialport,chardev=so,name=tsvmm.stdout \
		-chardev "file,id=se,path=$work/stderr" -device virtserialport,chardev=se,name=tsvmm.stderr \
		"${tty_devs[@]}" <&5 2>"$work/qemu.log" &
	# Waiting in the background lets a signal to run.sh tear the sandbox down at once.
	qpid=$!
	# A sandbox kernel that stalls under emulation (soft lockup, RCU stall: seen about once in
	# 30 heavy runs) never recovers; end it now rather than at the time limit, and retry.
	(
		while kill -0 "$qpid" 2>/dev/null; do
			stall=$(grep -m1 -o -E "$STALL_PATTERN" "$work/console.log" 2>/dev/null)
			beat=$(stat -c %Y "$work/ctl/heartbeat" 2>/dev/null)
			if [ -n "$stall" ]; then
				echo "the sandbox kernel stalled under emulation ($stall)" >"$work/died"
			elif [ -n "$beat" ] && [ $(($(date +%s) - beat)) -gt "$HANG_SECS" ]; then
				echo "the sandbox kernel froze (no heartbeat for ${HANG_SECS}s)" >"$work/died"
			fi
			if [ -f "$work/died" ]; then
				kill "$qpid" 2>/dev/null
				break
			fi
			sleep 5
		done
	) &
	watcher=$!
	# A resize (SIGWINCH, trapped in interactive mode) ends the wait early: wait again.
	while :; do
		wait "$qpid"
		qemu_rc=$?
		[ "$qemu_rc" -gt 128 ] && kill -0 "$qpid" 2>/dev/null && continue
		break
	done
	kill "$watcher" 2>/dev/null
	wait "$watcher" 2>/dev/null
	qpid=
	# QEMU has closed the fifos (or never opened them): the copies end by themselves.
	exec 3<>"$work/stdout" 4<>"$work/stderr"; exec 3>&- 4>&-
	wait "$cat_out" "$cat_err" 2>/dev/null
	cat_out=
}

for attempt in $(seq "$ATTEMPTS"); do
	run_once
	if [ -n "${TSVMM_SANDBOX_VERBOSE:-}" ]; then sed 's/^/sandbox console: /' "$work/console.log" >&2; fi
	if [ -f "$work/ctl/status" ]; then exit "$(cat "$work/ctl/status")"; fi
	if [ -f "$work/ctl/error" ]; then log "sandbox failed: $(cat "$work/ctl/error")"; exit 125; fi
	if [ -f "$work/died" ]; then why=$(cat "$work/died")
	else
		case $qemu_rc in
		124 | 137) why="no exit status within ${TIMEOUT}s (hung or too slow)" ;;
		0) why="the sandbox stopped without reporting an exit status (kernel panic?)" ;;
		*) why="QEMU exited with status $qemu_rc: $(tail -n 3 "$work/qemu.log" | tr '\n' ' ')" ;;
		esac
	fi
	log "sandbox attempt $attempt died: $why"
	if [ -s "$work/console.log" ]; then
		log "last console lines:"; tail -n 15 "$work/console.log" | sed 's/^/  | /' >&2
	fi
	# A stalled or frozen sandbox is retried; a job that started and then outlived its time
	# limit would only do so again.
	case $qemu_rc in 124 | 137)
		# ...unless the sandbox kernel itself stalled under emulation (RCU stall, soft lockup):
		# that is the sandbox dying, not the job.
		if [ ! -f "$work/died" ] && grep -q 'running the job' "$work/console.log" 2>/dev/null &&
			! grep -q -E "$STALL_PATTERN" "$work/console.log"; then
			log "the job itself ran past ${TIMEOUT}s: not retrying (exit 125)"
			exit 125
		fi ;;
	esac
done
log "sandbox died $ATTEMPTS time(s); giving up (exit 125)"
exit 125
