// Self time per function of a .cpuprofile: node prof-top.mjs FILE [N]
import fs from 'node:fs';
const f = process.argv[2];
const p = JSON.parse(fs.readFileSync(f));
const byId = new Map(p.nodes.map(n => [n.id, n]));
const self = new Map();
const dt = p.timeDeltas; let total=0;
const counts = new Map();
for (let i=0;i<p.samples.length;i++){ counts.set(p.samples[i],(counts.get(p.samples[i])||0)+dt[i]); total+=dt[i]; }
for (const [id,t] of counts){ const n=byId.get(id); const k=`${n.callFrame.functionName||'(anon)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber}`; self.set(k,(self.get(k)||0)+t);}
const arr=[...self].sort((a,b)=>b[1]-a[1]).slice(0,+process.argv[3]||40);
for (const [k,t] of arr) console.log((t/1000).toFixed(1).padStart(8),'ms',(100*t/total).toFixed(1).padStart(5)+'%',k);
console.log('total',(total/1000).toFixed(0),'ms');
