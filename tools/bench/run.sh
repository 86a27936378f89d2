#!/bin/bash
# Runs a peer benchmark where KVM works: natively on a hardware-KVM host, else inside the
# nested sandbox (tools/sandbox/run.sh), with the JSON result landing on this host.
# Owns nothing but the result file; builds tsvmm, the vsock helper and the default guest
# first because the sandbox sees this machine's files read-only.
#
#   tools/bench/run.sh boot|vsock [BENCH ARGS...]     (see node tools/bench/<bench>.mjs --help)
#
# --out FILE among the args picks the JSON file (default: /tmp/tsvmm-bench/<bench>-<time>.json).
# Sandbox knobs as tools/sandbox/run.sh: TSVMM_SANDBOX=auto|always|never; the sandbox
# timeout defaults to 7200 s here (TSVMM_SANDBOX_TIMEOUT).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
bench=${1:-}
case $bench in boot | vsock) shift ;; *) echo "usage: $0 boot|vsock [ARGS...]" >&2; exit 2 ;; esac

args=("$@") out=
for ((i = 0; i < ${#args[@]}; i++)); do
	[ "${args[i]}" = --out ] && out=${args[i + 1]:-}
done
if [ -z "$out" ]; then
	out=/tmp/tsvmm-bench/$bench-$(date +%Y%m%d-%H%M%S).json
	args+=(--out "$out")
fi
mkdir -p "$(dirname "$out")"
outdir=$(cd "$(dirname "$out")" && pwd)
out=$outdir/$(basename "$out")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[i]}" = --out ] && args[i + 1]=$out; done

cd "$ROOT" || exit 1
node tools/build.mjs >&2 || { echo "bench: node tools/build.mjs failed" >&2; exit 1; }
if [ "$bench" = vsock ]; then tools/bench/guest-build.sh >/dev/null || exit 1; fi
# Build the default guest image here and name it: the cache is read-only inside the sandbox.
initrd=$(tools/guest/build-initramfs.sh) || { echo "bench: cannot build the default guest image" >&2; exit 1; }
case " ${args[*]} " in *" --initrd "*) ;; *) args+=(--initrd "$initrd") ;; esac

TSVMM_SANDBOX_TIMEOUT=${TSVMM_SANDBOX_TIMEOUT:-7200} TSVMM_SANDBOX_NO_GUEST=1 \
	bash tools/sandbox/run.sh --out "$outdir" -- node "tools/bench/$bench.mjs" "${args[@]}"
rc=$?
[ -f "$out" ] && echo "bench: results in $out" >&2
exit $rc
