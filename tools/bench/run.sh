#!/bin/bash
# Runs a benchmark where KVM works: natively on a hardware-KVM host, else inside the nested
# sandbox (tools/sandbox/run.sh), with the results landing on this host. Owns nothing but
# the results; builds tsvmm, the guest programs and the default guest image first because
# the sandbox sees this machine's files read-only.
#
#   tools/bench/run.sh boot|exec|vsock|blk|serial [ARGS...]   one peer benchmark; --out FILE (JSON)
#   tools/bench/run.sh paper|report [ARGS...] the paper matrix / the full report; --out DIR
#
# (see `node tools/bench/<bench>.mjs --help`). Without --out: /tmp/tsvmm-bench/<bench>-<time>
# (.json for a file). Sandbox knobs as tools/sandbox/run.sh: TSVMM_SANDBOX=auto|always|never;
# the sandbox timeout defaults to 7200 s here (TSVMM_SANDBOX_TIMEOUT).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
bench=${1:-}
case $bench in
	boot | exec | vsock | blk | hostile | virtiofs | serial) kind=file ;;
	paper | report) kind=dir ;;
	*) echo "usage: $0 boot|exec|vsock|blk|hostile|virtiofs|serial|paper|report [ARGS...]" >&2; exit 2 ;;
esac
shift

args=("$@") out=
for ((i = 0; i < ${#args[@]}; i++)); do
	[ "${args[i]}" = --out ] && out=${args[i + 1]:-}
done
if [ -z "$out" ]; then
	out=/tmp/tsvmm-bench/$bench-$(date +%Y%m%d-%H%M%S)
	[ $kind = file ] && out=$out.json
	args+=(--out "$out")
fi
# The sandbox can write only below the --out dir it is given, at the same absolute path.
if [ $kind = file ]; then
	mkdir -p "$(dirname "$out")"
	outdir=$(cd "$(dirname "$out")" && pwd)
	out=$outdir/$(basename "$out")
else
	mkdir -p "$out"
	outdir=$(cd "$out" && pwd)
	out=$outdir
fi
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[i]}" = --out ] && args[i + 1]=$out; done

cd "$ROOT" || exit 1
node tools/build.mjs >&2 || { echo "bench: node tools/build.mjs failed" >&2; exit 1; }
# Build the default guest image (with guest/build/: the agent, spscq, vsock-bench) here and
# name it: the cache is read-only inside the sandbox.
initrd=$(tools/guest/build-initramfs.sh) || { echo "bench: cannot build the default guest image" >&2; exit 1; }
case $bench in
	boot | exec | vsock | blk | hostile | virtiofs | serial | report) case " ${args[*]} " in *" --initrd "*) ;; *) args+=(--initrd "$initrd") ;; esac ;;
esac
# The machine this command runs on, for the report (inside the sandbox the VMMs see an emulated one).
TSVMM_BENCH_HOST=$(node --input-type=module -e "import { machine } from './tools/bench/lib.mjs'; console.log(JSON.stringify(machine()))") || exit 1
export TSVMM_BENCH_HOST

TSVMM_SANDBOX_TIMEOUT=${TSVMM_SANDBOX_TIMEOUT:-7200} TSVMM_SANDBOX_NO_GUEST=1 \
	bash tools/sandbox/run.sh --out "$outdir" -- node "tools/bench/$bench.mjs" "${args[@]}"
rc=$?
[ -e "$out" ] && echo "bench: results in $out" >&2
exit $rc
