#!/bin/bash
# bench-diag.sh OUT DIR BYTES [TIMEOUT]: the serial bench's tsvmm run (tools/bench/serial.mjs
# --only tsvmm) with an API socket, inside the sandbox (tools/sandbox/run.sh --out OUT -- bash
# bench-diag.sh OUT DIR BYTES). GET /diagnosis every 20 s; when the console has not grown for two
# polls: a diagnosis, 2 s of KVM's trace events (tracefs: every exit, injection and LAPIC event
# of the sandbox's KVM) and every tsvmm thread's host kernel stack; then one byte typed into the
# guest's console (TSVMM_BENCH_STDIN: the UART raises a receive interrupt, a new edge on IRQ 4)
# and a diagnosis 20 s later: whether a new interrupt frees the vCPU. Up to 3 stalls are poked so;
# one that a poke does not end stops the bench. The sandbox's kvm/kvm_amd parameters come first.
set -u
out=$1 dir=$2 bytes=$3 tmo=${4:-900}
S=/tmp/bench-api.sock T=/sys/kernel/tracing F=/tmp/bench-stdin
cd "$dir" || exit 1
mkfifo $F && exec 7<>$F
export TSVMM_BENCH_STDIN=$F
{ uname -r; nproc; for f in /sys/module/kvm_amd/parameters/* /sys/module/kvm/parameters/*; do echo "$f=$(cat "$f" 2>/dev/null)"; done; } >"$out/kvm-params.txt" 2>&1
TSVMM_BENCH_RUN_ARGS="--api-sock $S --log-path $out/tsvmm.log" node tools/bench/serial.mjs --only tsvmm --bytes "$bytes" --timeout "$tmo" --out "$out/bench-tsvmm.json" >"$out/bench.out" 2>"$out/bench.err" &
bpid=$!
# VARIANT (an experiment on the vCPU thread once it runs): nice0 = renice it to the main
# thread's 0 (tsvmm runs it at +5); pin = the vCPU thread alone on CPU 1, every other tsvmm
# thread on CPU 0.
if [ -n "${VARIANT:-}" ]; then
	( for i in $(seq 120); do
		tid=$(sed -n 's/.*started 1 vCPU thread(s), tids \([0-9]*\).*/\1/p' "$out/tsvmm.log" 2>/dev/null | tail -1)
		[ -n "$tid" ] && break; sleep 1
	done
	pid=$(cat /proc/$tid/status 2>/dev/null | sed -n 's/^Tgid:\s*//p')
	case $VARIANT in
	nice0) renice -n 0 -p "$tid" ;;
	pin) for t in /proc/$pid/task/*; do taskset -pc 0 "${t##*/}"; done; taskset -pc 1 "$tid" ;;
	esac >>"$out/variant.txt" 2>&1
	echo "variant $VARIANT on vCPU tid $tid (pid $pid)" >>"$out/variant.txt" ) &
fi
diag() { curl -s --max-time 30 --unix-socket $S http://localhost/diagnosis; }
console_bytes() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['console']['totalBytes'])" "$1" 2>/dev/null; }
trace_kvm() { # trace_kvm N
	[ -d $T/events/kvm ] || { echo "no $T/events/kvm" >"$out/kvm-trace-summary$1.txt"; return; }
	echo 0 >$T/tracing_on; echo >$T/trace; echo 4096 >$T/buffer_size_kb
	echo 1 >$T/events/kvm/enable
	echo 1 >$T/tracing_on; sleep 2; echo 0 >$T/tracing_on
	echo 0 >$T/events/kvm/enable
	head -c 4000000 $T/trace >"$out/kvm-trace$1.txt"
	grep -o ' kvm_[a-z_0-9]*:' "$out/kvm-trace$1.txt" | sort | uniq -c | sort -rn >"$out/kvm-trace-summary$1.txt"
	grep -o 'kvm_exit: .*reason [A-Za-z_0-9]*' "$out/kvm-trace$1.txt" | sed 's/.*reason //' | sort | uniq -c | sort -rn >>"$out/kvm-trace-summary$1.txt"
}
stacks() { # stacks N
	for t in /proc/[0-9]*/task/*; do
		comm=$(cat "$t/comm" 2>/dev/null) || continue
		case $comm in tsvmm* | node | qemu*) echo "== $t $comm $(cut -d' ' -f3 "$t/stat" 2>/dev/null)"; cat "$t/stack" 2>/dev/null ;; esac
	done >"$out/host-stacks$1.txt"
}
last=-1 same=0 n=0 k=0
while kill -0 $bpid 2>/dev/null; do
	sleep 20
	diag >"$out/poll.json" 2>/dev/null || continue
	tot=$(console_bytes "$out/poll.json") || continue
	k=$((k + 1)); echo "$(date -u +%T) console $tot" >>"$out/polls.txt"
	if [ "$tot" = "$last" ]; then same=$((same + 1)); else same=0; fi
	last=$tot
	if [ $same -ge 2 ]; then
		n=$((n + 1)); same=0
		cp "$out/poll.json" "$out/stall$n-diag1.json"
		echo "stall $n at $tot B ($(date -u +%T))" | tee -a "$out/summary.txt"
		trace_kvm $n; stacks $n
		printf x >&7
		sleep 20
		diag >"$out/stall$n-diag2.json"
		after=$(console_bytes "$out/stall$n-diag2.json")
		echo "stall $n: console $tot B -> $after B 20 s after one byte typed ($(date -u +%T))" | tee -a "$out/summary.txt"
		last=$after
		if [ "$after" = "$tot" ] || [ $n -ge 3 ]; then pkill -P $bpid; kill $bpid; break; fi
	fi
done
wait $bpid; echo "bench rc=$? polls=$k last console=$last" | tee -a "$out/summary.txt"
tail -c 600 "$out/bench.err" | tr -s x >>"$out/summary.txt"
