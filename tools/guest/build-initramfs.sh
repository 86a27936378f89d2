#!/bin/sh
# Builds a busybox initramfs (gzip'd newc cpio) for the cached Debian kernel. Owns
# $CACHE/initramfs/; reads the kernel record of fetch-kernel.sh and guest/build/.
# Prints the image path on stdout; rebuilds only when an input changed.
#
#   build-initramfs.sh [--name NAME] [--init FILE] [--modules "m1 m2 ..."] [--no-guest]
#
# Defaults build the default guest: tools/guest/init.sh, the modules tsvmm's devices need,
# and (when guest/Makefile exists) `make -C guest` with every file of guest/build/ in
# /usr/bin/. The nested sandbox reuses this script with its own init and modules.
# Image layout: /init, /bin/busybox + applet links, /lib/modules/NN-<module>.ko (NN is the
# load order, dependencies first), /usr/bin/<guest files>.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${TSVMM_CACHE:-${HOME:-/root}/.cache/tsvmm}
DEFAULT_MODULES="virtio virtio_ring virtio_mmio vsock vmw_vsock_virtio_transport_common \
vmw_vsock_virtio_transport pvpanic pvpanic_mmio"

name=default
init=$HERE/init.sh
modules=$DEFAULT_MODULES
guest=1
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=$2; shift 2 ;;
	--init) init=$2; shift 2 ;;
	--modules) modules=$2; shift 2 ;;
	--no-guest) guest=0; shift ;;
	*) echo "usage: $0 [--name NAME] [--init FILE] [--modules LIST] [--no-guest]" >&2; exit 2 ;;
	esac
done

log() { echo "build-initramfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$init" ] || die "no init script at $init"
. "$HERE/need.sh"
need modprobe kmod
need cpio cpio
need gzip gzip
find_busybox() {
	for b in /bin/busybox /usr/bin/busybox; do
		# Only a static busybox runs in an image that has no libc.
		if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then echo "$b"; return; fi
	done
}
BUSYBOX=$(find_busybox)
if [ -z "$BUSYBOX" ]; then
	need busybox-static-is-missing busybox-static
	BUSYBOX=$(find_busybox)
fi
[ -n "$BUSYBOX" ] || die "no static busybox (apt-get install busybox-static)"

record=$CACHE/kernel/kernel.json
[ -f "$record" ] || record=$("$HERE/fetch-kernel.sh")
field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$record"; }
kver=$(field version)
moddir=$(field modulesDir)
[ -f "$moddir/modules.dep" ] || die "kernel record $record points at no modules ($moddir)"
base=${moddir%/lib/modules/$kver}

# Resolve every module with its dependencies, in load order, each once.
mods=
for m in $modules; do
	deps=$(modprobe -d "$base" -S "$kver" --show-depends "$m" 2>/dev/null) ||
		{ log "warning: module $m not found for $kver; skipped"; continue; }
	for p in $(printf '%s\n' "$deps" | awk '$1 == "insmod" { print $2 }'); do
		case " $mods " in *" $p "*) ;; *) mods="$mods $p" ;; esac
	done
done

if [ "$guest" = 1 ] && [ -f "$ROOT/guest/Makefile" ]; then
	make -s -C "$ROOT/guest" >&2 || die "make -C guest failed"
fi
guest_files=
if [ "$guest" = 1 ] && [ -d "$ROOT/guest/build" ]; then
	for f in "$ROOT"/guest/build/*; do [ -f "$f" ] && guest_files="$guest_files $f"; done
fi

mkdir -p "$CACHE/initramfs"
# Everything the image is made of, so a change anywhere rebuilds it.
hash=$( {
	echo "$kver $modules"
	cat "$0" "$init" "$BUSYBOX"
	for f in $mods; do echo "$f"; cat "$f"; done
	for f in $guest_files; do echo "${f##*/}"; cat "$f"; done
} | sha256sum | cut -d' ' -f1)
# Named by its inputs' hash: two checkouts (or a checkout and a sandbox running an older
# build) sharing one cache never overwrite each other's image.
out=$CACHE/initramfs/$name-$kver-$(echo "$hash" | cut -c1-16).cpio.gz

# Checked before taking the lock, so a read-only cache (the nested sandbox) works.
if [ -f "$out" ]; then echo "$out"; exit 0; fi
exec 9>"$CACHE/initramfs/.lock"
flock 9
if [ -f "$out" ]; then echo "$out"; exit 0; fi

stage=$(mktemp -d "$CACHE/initramfs/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
cd "$stage"
mkdir -p bin sbin usr/bin usr/sbin lib/modules etc proc sys dev run tmp root mnt
cp "$BUSYBOX" bin/busybox
for a in $(bin/busybox --list-full); do
	case $a in linuxrc) continue ;; esac
	[ -e "$a" ] || ln -s /bin/busybox "$a"
done
install -m 0755 "$init" init
i=0
for f in $mods; do
	i=$((i + 1))
	m=${f##*/}
	cp "$f" "lib/modules/$(printf '%02d' $i)-${m%.ko}.ko"
done
for f in $guest_files; do cp -p "$f" usr/bin/; done
echo "root:x:0:0:root:/root:/bin/sh" >etc/passwd
echo "root:x:0:" >etc/group

find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n >"$out.new"
mv "$out.new" "$out"
# Keep the 4 newest images of this name; older ones belong to sources nobody builds any more.
ls -t "$CACHE/initramfs/$name-$kver"-*.cpio.gz | tail -n +5 | xargs -r rm -f
log "built $out ($i modules$( [ -n "$guest_files" ] && echo ", guest:$guest_files"))"
echo "$out"
