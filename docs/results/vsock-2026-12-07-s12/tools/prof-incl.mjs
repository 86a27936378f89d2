// Time of the samples under function ROOT, by every function on their stacks below it: node prof-incl.mjs FILE ROOT
import fs from 'node:fs';
const p = JSON.parse(fs.readFileSync(process.argv[2]));
const root = process.argv[3] || 'processRx';
const byId = new Map(p.nodes.map(n => [n.id, n]));
const parent = new Map(); for (const n of p.nodes) for (const c of n.children||[]) parent.set(c, n.id);
const selfT = new Map(); for (let i=0;i<p.samples.length;i++) selfT.set(p.samples[i],(selfT.get(p.samples[i])||0)+p.timeDeltas[i]);
// for each sample, walk up to find nearest root frame; attribute sample's time to each distinct function on path below root
const agg = new Map(); let tot=0;
for (const [id,t] of selfT) {
  let chain=[]; let x=id; let found=false;
  while (x!==undefined){ const n=byId.get(x); if(n.callFrame.functionName===root){found=true;break;} chain.push(n); x=parent.get(x);}
  if(!found) continue; tot+=t;
  const seen=new Set();
  for(const n of chain){const k=n.callFrame.functionName+':'+n.callFrame.lineNumber; if(seen.has(k))continue; seen.add(k); agg.set(k,(agg.get(k)||0)+t);}
}
console.log(root,'inclusive',(tot/1000).toFixed(1),'ms');
for (const [k,t] of [...agg].sort((a,b)=>b[1]-a[1]).slice(0,30)) console.log((t/1000).toFixed(1).padStart(8),(100*t/tot).toFixed(1).padStart(6)+'%',k);
