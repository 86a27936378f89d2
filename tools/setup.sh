#!/bin/bash
# Installs what tsvmm needs on a fresh Debian 12 machine (as root): the Debian packages for the
# guest image, the nested sandbox, the ACPI and eBPF checks, then the npm dependencies (which
# also build dist/). Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Node first: Debian 12's own nodejs is 18, too old for tsvmm (and for its npm dependencies).
# The minimum is package.json's `engines.node` (">=MAJOR.MINOR").
need_node=$(sed -n 's/.*"node": *">= *\([0-9][0-9.]*\)".*/\1/p' package.json | head -n 1)
node_too_old() {
	local have want_major want_minor have_major have_minor
	have=$(node -p 'process.versions.node' 2>/dev/null) || return 0
	IFS=. read -r want_major want_minor _ <<<"$need_node.0"
	IFS=. read -r have_major have_minor _ <<<"$have"
	[ "$have_major" -lt "$want_major" ] || { [ "$have_major" -eq "$want_major" ] && [ "$have_minor" -lt "${want_minor:-0}" ]; }
}
if node_too_old; then
	have=$(node -v 2>/dev/null || echo "no node on PATH")
	cat >&2 <<-EOF
	setup: tsvmm needs Node.js >= $need_node (package.json "engines"); this machine has: $have
	  (Debian 12's own nodejs package is 18.) Get Node.js $need_node or newer (22 LTS is fine), one of:
	  - NodeSource (system-wide, as root):
	        curl -fsSL https://deb.nodesource.com/setup_22.x | bash - && apt-get install -y nodejs
	  - nvm (per user, no root):
	        curl -fsSL https://raw.githubusercontent.com/nvm-sh/nvm/v0.40.3/install.sh | bash
	        . ~/.nvm/nvm.sh && nvm install 22
	  - Debian backports, if it carries a new enough nodejs for your release:
	        apt-get install -t bookworm-backports nodejs npm   (check: apt-cache policy nodejs)
	  then run tools/setup.sh again.
	EOF
	exit 1
fi
echo "setup: Node $(node -v) (needs >= $need_node)" >&2

PACKAGES=(
	qemu-system-x86   # nested KVM sandbox (hosts without hardware KVM) and the benchmark peer
	busybox-static cpio kmod xz-utils   # guest and sandbox initramfs; xz also unpacks xz/lzma kernels
	zstd lz4 bzip2    # unpack bzImages with those payloads (vmm/boot/unpack.ts; gzip is node:zlib)
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
# The sandbox's QEMU must be 9.0 or newer. Older TCG (Debian 12's 7.2) misses interrupts in a
# `sti; one instruction; cli` window (QEMU commit "target/i386: Give IRQs a chance when resetting
# HF_INHIBIT_IRQ_MASK", 9.0): KVM's run loop inside the sandbox opens exactly that window to take
# the interrupt that ended a nested guest's run, so a sandbox CPU could loop VMRUN/#VMEXIT with
# its timer and IPIs never taken, and the sandbox kernel froze (docs/sandbox.md, "Dying early").
# Debian 12 gets a new enough QEMU from bookworm-backports; Debian 13 has one.
qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if ! dpkg --compare-versions "${qemu_version:-0}" ge 1:9.0; then
	. /etc/os-release
	if [ "${VERSION_CODENAME:-}" = bookworm ]; then
		echo "setup: QEMU ${qemu_version:-none} is older than 9.0; installing qemu-system-x86 from bookworm-backports" >&2
		echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/tsvmm-bookworm-backports.list
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
	else
		echo "setup: warning: QEMU ${qemu_version:-none} is older than 9.0 and this is not Debian 12: the nested sandbox may freeze (docs/sandbox.md)" >&2
	fi
fi
# virtio-fs needs virtiofsd. QEMU >= 8 no longer ships its C daemon, and Debian 12 has no package
# of the Rust one (Debian 13's `virtiofsd` needs glibc 2.39): keep Debian 12's, from its QEMU 7.2
# qemu-system-common, at /usr/local/libexec/virtiofsd (devices/virtio/fs/daemon.ts looks there).
have_virtiofsd() {
	command -v virtiofsd >/dev/null || [ -x /usr/libexec/virtiofsd ] || [ -x /usr/lib/qemu/virtiofsd ] || [ -x /usr/local/libexec/virtiofsd ]
}
if ! have_virtiofsd && [ "${VERSION_CODENAME:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}" = bookworm ]; then
	echo "setup: installing Debian 12's virtiofsd (QEMU 7.2's) at /usr/local/libexec/virtiofsd" >&2
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download -qq qemu-system-common/bookworm 2>/dev/null && dpkg-deb -x qemu-system-common_*.deb x)
	install -D -m 0755 "$tmp/x/usr/lib/qemu/virtiofsd" /usr/local/libexec/virtiofsd
	rm -rf "$tmp"
fi
if [ ! -d node_modules/koffi ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	npm ci --no-audit --no-fund
fi
node tools/build.mjs --types
# A second kernel flavour beside the default one: the kernel tests boot it (test/integration/kernels.test.ts).
tools/guest/fetch-kernel.sh --package 'linux-image-6.12.*-cloud-amd64-unsigned' >/dev/null
