#!/bin/bash
# Installs what tsvmm needs on a fresh Debian 12 machine (as root): the Debian packages for the
# guest image, the nested sandbox, the ACPI and eBPF checks, then the npm dependencies (which
# also build dist/). Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
	qemu-system-x86   # nested KVM sandbox (hosts without hardware KVM) and the benchmark peer
	busybox-static cpio kmod xz-utils   # guest and sandbox initramfs
	gcc libc6-dev make  # the static guest agent
	acpica-tools      # iasl/acpiexec check the generated ACPI tables
	clang llvm        # eBPF toolkit tests compare with clang/llvm-mc/llvm-objdump
	linux-libc-dev    # <linux/kvm.h> for the ABI test
	curl socat        # API and vsock examples
	e2fsprogs         # mkfs.ext4 -d, debugfs, e2fsck: the virtio-blk root drive test and benchmark
)
missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -d node_modules/koffi ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	npm ci --no-audit --no-fund
fi
node tools/build.mjs --types
# A second kernel flavour beside the default one: the kernel tests boot it (test/integration/kernels.test.ts).
tools/guest/fetch-kernel.sh --package 'linux-image-6.12.*-cloud-amd64-unsigned' >/dev/null
