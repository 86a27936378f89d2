#!/bin/bash
# One sandbox job of the virtio-blk bench (issue 14): the image on an ext4 file system on a loop
# device inside the sandbox when one can be made (else the sandbox's tmpfs /tmp), the same file
# for both VMMs (blk.mjs makes it under $TMPDIR). Usage: job.sh OUTDIR TAG INITRD [blk.mjs args]
out=$1 tag=$2 initrd=$3
shift 3
cd "$(dirname "$0")/../../.." || exit 1
where=tmpfs
mnt=/tmp/blk-ext4
if mkdir -p $mnt && truncate -s 160M /tmp/blk-ext4.img && mkfs.ext4 -q -F /tmp/blk-ext4.img && mount -o loop /tmp/blk-ext4.img $mnt 2>/dev/null; then
	where="ext4 on a loop device ($(findmnt -no SOURCE $mnt))"
	export TMPDIR=$mnt
fi
echo "image: $where"
date -u
node tools/bench/blk.mjs --initrd "$initrd" --out "$out/$tag.json" "$@" 2>&1 | tail -n 14
date -u
[ "$where" = tmpfs ] || umount $mnt
