#!/bin/sh
# Builds the vsock benchmark's helper, guest/vsock-bench.c, as one static binary into
# guest/build/ (the default guest's initramfs copies guest/build/* into /usr/bin; its cache
# hash covers those files, so a new binary rebuilds the image). The same static binary is
# the host end of the benchmark. Owns only guest/build/vsock-bench; guest/Makefile is the
# agent's. Prints the binary's path.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
src=$ROOT/guest/vsock-bench.c
out=$ROOT/guest/build/vsock-bench
if [ ! -x "$out" ] || [ "$src" -nt "$out" ] || [ "$0" -nt "$out" ]; then
	mkdir -p "$ROOT/guest/build"
	# A private temp name and an atomic rename: a concurrent initramfs build never copies half a file.
	tmp=$ROOT/guest/.vsock-bench.$$.tmp
	${CC:-gcc} -O2 -Wall -Wextra -static -o "$tmp" "$src" && mv "$tmp" "$out" || { rm -f "$tmp"; exit 1; }
	echo "guest-build: built $out" >&2
fi
echo "$out"
