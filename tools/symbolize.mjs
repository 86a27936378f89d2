#!/usr/bin/env node
// Names the kernel addresses in a tsvmm diagnosis (rip, registers, stack words): every
// 0xffffffff........ in the text read from FILE or stdin gets `<symbol+0xoff>` after it, from the
// guest kernel's System.map (Debian ships it in linux-image-<version>-dbg, under
// /usr/lib/debug/boot/). The addresses are the ones the guest ran at: a kernel that randomized
// its base (KASLR) needs `nokaslr`, which an unpacked vmlinux entered directly has in effect.
//
//   node tools/symbolize.mjs System.map-6.1.0-57-amd64 < hang.txt
import { readFileSync } from 'node:fs';

const [map, file] = process.argv.slice(2);
if (!map) {
  console.error('usage: node tools/symbolize.mjs SYSTEM_MAP [FILE]   (reads stdin without FILE)');
  process.exit(2);
}
const syms = [];
for (const line of readFileSync(map, 'utf8').split('\n')) {
  const [addr, type, name] = line.split(' ');
  if (name && /^[tTwW]$/.test(type)) syms.push([BigInt(`0x${addr}`), name]);
}
if (!syms.length) {
  console.error(`${map}: no text symbols (a stub System.map? Debian's real one is in the -dbg package)`);
  process.exit(1);
}
syms.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

/** The symbol at or below `a`, by binary search. */
function lookup(a) {
  let lo = 0;
  let hi = syms.length - 1;
  if (a < syms[0][0]) return undefined;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (syms[mid][0] <= a) lo = mid;
    else hi = mid - 1;
  }
  return `${syms[lo][1]}+0x${(a - syms[lo][0]).toString(16)}`;
}

const text = readFileSync(file ?? 0, 'utf8');
process.stdout.write(text.replace(/0xffffffff[0-9a-f]{8}\b/g, (m) => {
  const s = lookup(BigInt(m));
  return s ? `${m} <${s}>` : m;
}));
