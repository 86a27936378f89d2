#!/bin/bash
# after-bench (2 runs each) then a perf look at tsvmm only
out=$1
cd /work/wt/blk
INITRD=/root/.cache/tsvmm/initramfs/default-6.1.0-57-amd64-3dd13c27658c816e.cpio.gz
date -u
node tools/bench/blk.mjs --runs 2 --small-mib 4 --large-mib 32 --timeout 200 --initrd $INITRD --out $out/after.json 2>&1 | tail -n 12
date -u
BLK_DIAG_VMMS=tsvmm timeout 300 tools/bench/blk-diag.sh $out --initrd $INITRD --small-mib 4 --large-mib 32 --timeout 200
date -u
