#!/bin/sh
# Fetches the default guest kernel: the package Debian's linux-image-amd64 meta package
# points at, unpacked into the tsvmm cache. Owns $CACHE/kernel/; touches nothing else.
# Prints the path of the record (kernel.json) on stdout; progress goes to stderr.
#
#   CACHE=${TSVMM_CACHE:-$HOME/.cache/tsvmm}
#   $CACHE/kernel/<kver>/vmlinuz-<kver>, vmlinux-<kver>, config-<kver>, lib/modules/<kver>/
#   $CACHE/kernel/kernel.json  {package, debVersion, version, kernel, vmlinux, modulesDir}
# vmlinux is the ELF kernel unpacked from the bzImage ("" when its compression is unknown):
# with its PVH note it boots without the decompressor, which saves ~5 s under emulation.
#
# TSVMM_KERNEL_PACKAGE=linux-image-X pins another image package (same layout).
#
#   fetch-kernel.sh --package PATTERN
# fetches another kernel without touching the default's record: the newest package whose name
# matches PATTERN (a shell glob, e.g. 'linux-image-6.12.*-cloud-amd64-unsigned'), in the same
# layout, its record in $CACHE/kernel/<kver>/kernel.json (printed). Offline, a kernel fetched
# before under a matching name is used.
set -eu

pattern=
case ${1:-} in
--package) pattern=${2:?--package needs a pattern}; shift 2 ;;
'') ;;
*) echo "usage: $0 [--package PATTERN]" >&2; exit 2 ;;
esac

. "$(dirname "$0")/need.sh"
need depmod kmod
need xz xz-utils
need flock util-linux

CACHE=${TSVMM_CACHE:-${HOME:-/root}/.cache/tsvmm}
DIR=$CACHE/kernel
RECORD=$DIR/kernel.json
mkdir -p "$DIR"

log() { echo "fetch-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The newest version of the packages whose names match the glob $pattern.
resolve_pattern() {
	apt-cache pkgnames "${pattern%%[*?[]*}" 2>/dev/null | while read -r p; do
		# shellcheck disable=SC2254
		case $p in $pattern) echo "$p" ;; esac
	done | sort -V | tail -n 1
}

resolve() {
	if [ -n "$pattern" ]; then resolve_pattern; return; fi
	if [ -n "${TSVMM_KERNEL_PACKAGE:-}" ]; then echo "$TSVMM_KERNEL_PACKAGE"; return; fi
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

# The record is still good when the package it names is the one apt resolves now (or apt
# cannot resolve anything, e.g. offline with no lists) and its files are there.
cached_ok() {
	[ -f "$RECORD" ] || return 1
	kern=$(sed -n 's/.*"kernel": *"\([^"]*\)".*/\1/p' "$RECORD")
	mods=$(sed -n 's/.*"modulesDir": *"\([^"]*\)".*/\1/p' "$RECORD")
	[ -f "$kern" ] && [ -f "$mods/modules.order" ] && grep -q '"vmlinux"' "$RECORD" || return 1
	[ -z "$1" ] && return 0
	grep -q "\"package\": *\"$1\"" "$RECORD"
}

# Another flavour: its record lives beside its files, named by the package it came from.
if [ -n "$pattern" ]; then
	found=
	for r in "$DIR"/*/kernel.json; do
		[ -f "$r" ] || continue
		p=$(sed -n 's/.*"package": *"\([^"]*\)".*/\1/p' "$r")
		# shellcheck disable=SC2254
		case $p in $pattern) found=$r ;; esac
	done
	pkg=$(resolve)
	if [ -n "$found" ] && { [ -z "$pkg" ] || grep -q "\"package\": *\"$pkg\"" "$found"; }; then
		RECORD=$found
		if cached_ok "$pkg"; then echo "$RECORD"; exit 0; fi
	fi
	[ -n "$pkg" ] || { apt-get update -qq >&2 || true; pkg=$(resolve); }
	[ -n "$pkg" ] || die "no package matches $pattern (apt-cache pkgnames)"
else
	pkg=$(resolve)
fi
# Checked before taking the lock, so a read-only cache (the nested sandbox) works.
if cached_ok "$pkg"; then echo "$RECORD"; exit 0; fi
# One fetch at a time: tests and the CLI may ask for the kernel concurrently.
exec 9>"$DIR/.lock"
flock 9
if cached_ok "$pkg"; then echo "$RECORD"; exit 0; fi

if [ -z "$pkg" ]; then
	log "linux-image-amd64 not resolvable; running apt-get update"
	apt-get update -qq >&2 || die "apt-get update failed"
	pkg=$(resolve)
	[ -n "$pkg" ] || die "apt-cache cannot resolve linux-image-amd64 (is this Debian amd64?)"
	if cached_ok "$pkg"; then echo "$RECORD"; exit 0; fi
fi

work=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# As root apt hands the download to the _apt user, who cannot write to our cache dir.
download() { (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); }
log "downloading $pkg"
if ! download; then
	log "download failed; running apt-get update and retrying"
	apt-get update -qq >&2 || die "apt-get update failed"
	download || die "apt-get download $pkg failed"
fi
deb=$(ls "$work"/*.deb)
debver=$(dpkg-deb -f "$deb" Version)

dpkg-deb -x "$deb" "$work/x"
vmlinuz=$(ls "$work"/x/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$vmlinuz" ] || die "$pkg has no /boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}
[ -d "$work/x/lib/modules/$kver" ] || die "$pkg has no lib/modules/$kver"

dest=$DIR/$kver
[ -z "$pattern" ] || RECORD=$dest/kernel.json
rm -rf "$dest.new"
mkdir -p "$dest.new/lib/modules"
mv "$vmlinuz" "$dest.new/"
[ -f "$work/x/boot/config-$kver" ] && mv "$work/x/boot/config-$kver" "$dest.new/"
mv "$work/x/lib/modules/$kver" "$dest.new/lib/modules/"
unpack_vmlinux() { # bzImage -> ELF, as the kernel's scripts/extract-vmlinux does
	for fmt in 'xz:\3757zXZ' 'zstd:\050\265\057\375' 'gzip:\037\213\010'; do
		tool=${fmt%%:*}
		magic=$(printf "${fmt#*:}")
		off=$(LC_ALL=C grep -obUaF -- "$magic" "$1" 2>/dev/null | head -n 1 | cut -d: -f1)
		[ -n "$off" ] || continue
		case $tool in xz) dec="xz -dc --single-stream" ;; zstd) dec="zstd -dcq" ;; gzip) dec="gzip -dc" ;; esac
		tail -c +$((off + 1)) "$1" | $dec >"$2" 2>/dev/null
		[ "$(head -c 4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ] && return 0
	done
	rm -f "$2"
	return 1
}
vmlinux=$dest/vmlinux-$kver
unpack_vmlinux "$dest.new/vmlinuz-$kver" "$dest.new/vmlinux-$kver" || { log "warning: cannot unpack vmlinux"; vmlinux=; }

# depmod here once, so every consumer can resolve dependencies with modprobe -d.
depmod -b "$dest.new" "$kver"
rm -rf "$dest"
mv "$dest.new" "$dest"

cat >"$RECORD.new" <<JSON
{
  "package": "$pkg",
  "debVersion": "$debver",
  "version": "$kver",
  "kernel": "$dest/vmlinuz-$kver",
  "vmlinux": "$vmlinux",
  "modulesDir": "$dest/lib/modules/$kver"
}
JSON
mv "$RECORD.new" "$RECORD"
log "kernel $kver ($pkg $debver) in $dest"
echo "$RECORD"
