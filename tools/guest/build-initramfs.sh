#!/bin/sh
# Builds a busybox initramfs (gzip'd newc cpio) for a kernel: the cached Debian kernel of
# fetch-kernel.sh by default, or any kernel given by its version and modules. Owns
# $CACHE/initramfs/ (or its writable fallback); reads guest/build/ and tools/guest/modules.txt.
# Prints the image path on stdout; rebuilds only when an input changed.
#
#   build-initramfs.sh [--name NAME] [--init FILE] [--modules "m1 m2 ..."] [--no-guest]
#                      [--kver VERSION [--moddir DIR]]
#
# Defaults build the default guest: tools/guest/init.sh, the modules of tools/guest/modules.txt
# (what tsvmm's devices need), and (when guest/Makefile exists) `make -C guest` with every file
# of guest/build/ in /usr/bin/. --kver/--moddir build it for another kernel: DIR is that
# kernel's lib/modules/VERSION tree (depmod'ed); without --moddir the kernel has no modules
# (what it needs is built in). The nested sandbox reuses this script with its own init and
# modules.
# Beside the image (or in the fallback when that cannot be written) it leaves a manifest,
# manifest-<key> (key: the checkout's physical path and this call's arguments): the image's path
# and the size, mtime and ctime (ns) of every input — this script, the init, modules.txt,
# busybox, the kernel record, the module tree's index and files, guest/ and guest/build — taken
# before they are hashed, and the inputs that must stay absent. vmm/default-guest.ts checks it
# with stat() and runs this script only on a mismatch.
# Image layout: /init, /bin/busybox + applet links, /lib/modules/NN-<module>.ko (NN is the
# load order, dependencies first; compressed modules are stored decompressed, as busybox's
# insmod needs them), /usr/bin/<guest files>.
#
# Where the cache (or the checkout's guest/build) cannot be written — a read-only share, an
# installed package — images and the guest build go to ${TMPDIR:-/tmp}/tsvmm-cache-<uid>; an
# image already in the cache is still used from there.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# The manifest's name: vmm/default-guest.ts computes the same from its own root and arguments.
MANIFEST=manifest-$(printf '%s\n' "$(cd "$ROOT" && pwd -P)" "$@" | sha256sum | cut -c1-16)
CACHE=${TSVMM_CACHE:-${HOME:-/root}/.cache/tsvmm}
FALLBACK=${TMPDIR:-/tmp}/tsvmm-cache-$(id -u)
# Every module of the feature table, in its order ("-" rows have none).
DEFAULT_MODULES=$(awk '!/^#/ && NF >= 3 { for (i = 3; i <= NF; i++) if ($i != "-") print $i }' "$HERE/modules.txt")

name=default
init=$HERE/init.sh
modules=$DEFAULT_MODULES
guest=1
kver=
moddir=
moddir_given=0
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=$2; shift 2 ;;
	--init) init=$2; shift 2 ;;
	--modules) modules=$2; shift 2 ;;
	--no-guest) guest=0; shift ;;
	--kver) kver=$2; shift 2 ;;
	--moddir) moddir=$2; moddir_given=1; shift 2 ;;
	*) echo "usage: $0 [--name NAME] [--init FILE] [--modules LIST] [--no-guest] [--kver VERSION [--moddir DIR]]" >&2; exit 2 ;;
	esac
done

log() { echo "build-initramfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$init" ] || die "no init script at $init"
case $init in /*) ;; *) init=$(pwd)/$init ;; esac
. "$HERE/need.sh"
need modprobe kmod
need cpio cpio
need gzip gzip
# TSVMM_BUSYBOX: a static busybox to use instead of the system's (recorded in the manifest).
BUSYBOX_CANDIDATES=${TSVMM_BUSYBOX:-/bin/busybox /usr/bin/busybox}
find_busybox() {
	for b in $BUSYBOX_CANDIDATES; do
		# Only a static busybox runs in an image that has no libc.
		if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then echo "$b"; return; fi
	done
}
BUSYBOX=$(find_busybox)
if [ -z "$BUSYBOX" ] && [ -n "${TSVMM_BUSYBOX:-}" ]; then
	die "TSVMM_BUSYBOX=$TSVMM_BUSYBOX is not an executable static busybox"
fi
if [ -z "$BUSYBOX" ]; then
	need busybox-static-is-missing busybox-static
	BUSYBOX=$(find_busybox)
fi
[ -n "$BUSYBOX" ] || die "no static busybox (apt-get install busybox-static)"

if [ -n "$kver" ]; then
	[ "$moddir_given" = 0 ] || [ -f "$moddir/modules.dep" ] || die "--moddir $moddir has no modules.dep (run depmod)"
else
	[ "$moddir_given" = 0 ] || die "--moddir needs --kver"
	record=$CACHE/kernel/kernel.json
	[ -f "$record" ] || record=$("$HERE/fetch-kernel.sh")
	field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$record"; }
	kver=$(field version)
	moddir=$(field modulesDir)
	[ -f "$moddir/modules.dep" ] || die "kernel record $record points at no modules ($moddir)"
fi

# Resolve every module with its dependencies, in load order, each once. modprobe finds the
# tree as <base>/lib/modules/<kver>: a tree under another name is seen through a link.
# Each module also remembers the feature (modules.txt row) that first pulled it in: the image's
# lib/modules/features lists "NN-name.ko feature", and init skips a device's modules when the
# guest has no such device.
mods=
feats=
feature_of() { awk -v m="$1" '!/^#/ && NF >= 3 { for (i = 3; i <= NF; i++) if ($i == m) { print $1; exit } }' "$HERE/modules.txt"; }
if [ -n "$moddir" ]; then
	base=${moddir%/lib/modules/$kver}
	if [ "$base" = "$moddir" ]; then
		link=$(mktemp -d "${TMPDIR:-/tmp}/tsvmm-moddir.XXXXXX")
		mkdir -p "$link/lib/modules"
		ln -s "$(cd "$moddir" && pwd)" "$link/lib/modules/$kver"
		base=$link
	fi
	for m in $modules; do
		deps=$(modprobe -d "$base" -S "$kver" --show-depends "$m" 2>/dev/null) ||
			{ log "warning: module $m not found for $kver; skipped"; continue; }
		feat=$(feature_of "$m")
		for p in $(printf '%s\n' "$deps" | awk '$1 == "insmod" { print $2 }'); do
			# Through the link: the path in the tree itself (the link is gone before the copy).
			p=$moddir${p#"$base/lib/modules/$kver"}
			case " $mods " in *" $p "*) ;; *) mods="$mods $p"; feats="$feats$p $feat
" ;; esac
		done
	done
	[ -z "${link:-}" ] || rm -rf "$link"
fi

# The guest programs: the checkout's guest/build when it is current (make -q), else built
# now — there, or in the fallback when the checkout cannot be written.
guest_dir=
if [ "$guest" = 1 ] && [ -f "$ROOT/guest/Makefile" ]; then
	guest_dir=$ROOT/guest/build
	if ! make -s -q -C "$ROOT/guest" >/dev/null 2>&1; then
		if [ -w "$ROOT/guest" ]; then
			make -s -C "$ROOT/guest" >&2 || die "make -C guest failed"
		else
			guest_dir=$FALLBACK/guest-build
			mkdir -p "$guest_dir"
			make -s -q -C "$ROOT/guest" BUILD="$guest_dir" >/dev/null 2>&1 ||
				make -s -C "$ROOT/guest" BUILD="$guest_dir" >&2 || die "make -C guest BUILD=$guest_dir failed"
		fi
	fi
elif [ "$guest" = 1 ] && [ -d "$ROOT/guest/build" ]; then
	guest_dir=$ROOT/guest/build
fi
guest_files=
if [ -n "$guest_dir" ] && [ -d "$guest_dir" ]; then
	for f in "$guest_dir"/*; do [ -f "$f" ] && guest_files="$guest_files $f"; done
fi

# The manifest's inputs, stat'ed before they are hashed: one changed after this point differs
# from its record next time. Inputs that do not exist are recorded as absent (a busybox that
# appears where none was, a guest/Makefile added).
inputs="$HERE/${0##*/} $HERE/need.sh $HERE/modules.txt $init $BUSYBOX_CANDIDATES ${record:-}"
if [ -n "$moddir" ]; then inputs="$inputs $moddir $(ls -d "$moddir"/modules.* 2>/dev/null | tr '\n' ' ')$mods"; fi
if [ "$guest" = 1 ]; then
	inputs="$inputs $ROOT/guest"
	[ -f "$ROOT/guest/Makefile" ] || inputs="$inputs $ROOT/guest/Makefile"
	for f in "$ROOT"/guest/*; do [ -f "$f" ] && inputs="$inputs $f"; done
	inputs="$inputs ${guest_dir:-$ROOT/guest/build}$guest_files"
fi
present=
absent=
for f in $inputs; do
	if [ -e "$f" ]; then present="$present $f"; else absent="${absent}absent $f
"; fi
done
snap_at=$(date +%s.%N)
# shellcheck disable=SC2086 # word-split on purpose: paths have no spaces (as everywhere here)
snapshot=$(stat -L -c 'input %s %.9Y %.9Z %n' -- $present; printf '%s' "$absent")
# An input changed in the last 20 ms (file times follow a coarse clock) could change again with
# the same size and time stamps: no manifest then, the next call checks again (git's racy rule).
racy=$(printf '%s\n' "$snapshot" | awk -v t="$snap_at" '$1 == "input" && ($3 > t - 0.02 || $4 > t - 0.02) { print $5; exit }')
# Writes the manifest for image $1 (best effort: a cache nobody can write has none).
write_manifest() {
	[ -z "$racy" ] || return 0
	mdir=${1%/*}
	[ -w "$mdir" ] || { mdir=$FALLBACK/initramfs; mkdir -p "$mdir" 2>/dev/null || return 0; }
	{
		echo "tsvmm-initramfs-manifest 1"
		echo "env TSVMM_BUSYBOX=${TSVMM_BUSYBOX:-}"
		stat -c 'image %s %n' -- "$1"
		printf '%s\n' "$snapshot"
	} >"$mdir/.$MANIFEST.$$" 2>/dev/null && mv -f "$mdir/.$MANIFEST.$$" "$mdir/$MANIFEST" 2>/dev/null ||
		rm -f "$mdir/.$MANIFEST.$$" 2>/dev/null || true
}

# Everything the image is made of, so a change anywhere rebuilds it.
hash=$( {
	echo "$kver $modules"
	cat "$HERE/modules.txt"
	cat "$0" "$init" "$BUSYBOX"
	for f in $mods; do echo "$f"; cat "$f"; done
	for f in $guest_files; do echo "${f##*/}"; cat "$f"; done
} | sha256sum | cut -d' ' -f1)
# Named by its inputs' hash: two checkouts (or a checkout and a sandbox running an older
# build) sharing one cache never overwrite each other's image.
file=$name-$kver-$(echo "$hash" | cut -c1-16).cpio.gz

# Checked before taking the lock, so a read-only cache (the nested sandbox) works.
# A hit is marked as used (its access time; not where the cache is read-only: set -e must not end
# the script there), so that the
# pruning below spares it.
for d in "$CACHE/initramfs" "$FALLBACK/initramfs"; do
	if [ -f "$d/$file" ]; then
		touch -a -c "$d/$file" 2>/dev/null || true
		write_manifest "$d/$file"
		echo "$d/$file"
		exit 0
	fi
done
dir=$CACHE/initramfs
if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
	dir=$FALLBACK/initramfs
	mkdir -p "$dir" || die "cannot create $dir"
	log "$CACHE/initramfs is not writable; building in $dir"
fi
out=$dir/$file
exec 9>"$dir/.lock"
flock 9
if [ -f "$out" ]; then write_manifest "$out"; echo "$out"; exit 0; fi

stage=$(mktemp -d "$dir/.stage.XXXXXX")
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
	dst=lib/modules/$(printf '%02d' $i)-${m%.ko*}.ko
	feat=$(printf '%s' "$feats" | awk -v p="$f" '$1 == p { print $2; exit }')
	echo "${dst##*/} ${feat:--}" >>lib/modules/features
	case $f in
	*.ko.xz) need xz xz-utils; xz -dc "$f" >"$dst" ;;
	*.ko.zst) need zstd zstd; zstd -dcq "$f" >"$dst" ;;
	*.ko.gz) gzip -dc "$f" >"$dst" ;;
	*) cp "$f" "$dst" ;;
	esac
done
for f in $guest_files; do cp -p "$f" usr/bin/; done
echo "root:x:0:0:root:/root:/bin/sh" >etc/passwd
echo "root:x:0:" >etc/group

find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n >"$out.new"
mv "$out.new" "$out"
# Drop images of this name nobody used for a day: they belong to sources nobody builds any more.
# Not "keep the N newest": several checkouts sharing one cache (worktrees, each with its own
# guest sources) each have a current image, and one checkout's build deleted another's while
# it was about to boot it.
find "$dir" -maxdepth 1 -name "$name-$kver-*.cpio.gz" ! -name "$file" -amin +1440 -exec rm -f {} + 2>/dev/null || true
# Manifests of checkouts or arguments nobody built with for a month.
find "$dir" -maxdepth 1 -name 'manifest-*' -mtime +30 -exec rm -f {} + 2>/dev/null || true
write_manifest "$out"
log "built $out ($i modules$( [ -n "$guest_files" ] && echo ", guest:$guest_files"))"
echo "$out"
