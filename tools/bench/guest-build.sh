#!/bin/sh
# Builds the vsock benchmark's helper (guest/vsock-bench.c, a rule of guest/Makefile) into
# guest/build/, which the default guest's initramfs copies into /usr/bin; the same static
# binary is the host end of the benchmark. Prints the binary's path.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
make -s -C "$ROOT/guest" build/vsock-bench >&2
echo "$ROOT/guest/build/vsock-bench"
