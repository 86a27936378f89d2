// Time of the samples under ROOT but not under SKIP, by ROOT's child > leaf: node prof-excl.mjs FILE ROOT SKIP
import fs from 'node:fs';
const p = JSON.parse(fs.readFileSync(process.argv[2]));
const root = process.argv[3], skip = process.argv[4];
const byId = new Map(p.nodes.map(n => [n.id, n]));
const parent = new Map(); for (const n of p.nodes) for (const c of n.children||[]) parent.set(c, n.id);
const selfT = new Map(); for (let i=0;i<p.samples.length;i++) selfT.set(p.samples[i],(selfT.get(p.samples[i])||0)+p.timeDeltas[i]);
const agg = new Map(); let tot=0;
for (const [id,t] of selfT) {
  let chain=[]; let x=id; let found=false; let skipped=false;
  while (x!==undefined){ const n=byId.get(x); const f=n.callFrame.functionName; if(f===skip) skipped=true; if(f===root){found=true;break;} chain.push(n); x=parent.get(x);}
  if(!found||skipped) continue; tot+=t;
  // attribute to the direct child of root (top-level callee) and self leaf
  const top = chain.length? chain[chain.length-1].callFrame.functionName+':'+chain[chain.length-1].callFrame.lineNumber : '(self)';
  const leaf = chain.length? chain[0].callFrame.functionName : '(self)';
  const k = top+' > '+leaf;
  agg.set(k,(agg.get(k)||0)+t);
}
console.log(root,'excluding',skip,(tot/1000).toFixed(0),'ms');
for (const [k,t] of [...agg].sort((a,b)=>b[1]-a[1]).slice(0,25)) console.log((t/1000).toFixed(0).padStart(7),(100*t/tot).toFixed(1).padStart(6)+'%',k);
