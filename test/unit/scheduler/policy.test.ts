import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { dedicationOrder, plan, PolicyError, type Placement, type Policy, type PoolCpu } from '../../../vmm/scheduler/policy';

/** n CPUs, no SMT. */
const flat = (n: number): PoolCpu[] => Array.from({ length: n }, (_, i) => ({ cpu: i, core: i }));
/** Linux-style numbering: thread t of core c is CPU t*cores + c (siblings 0/4, 1/5, ...). */
function smt(cores: number, threads: number): PoolCpu[] {
  const out: PoolCpu[] = [];
  for (let t = 0; t < threads; t++) for (let c = 0; c < cores; c++) out.push({ cpu: t * cores + c, core: c });
  return out;
}
/** Adjacent numbering: siblings 0/1, 2/3, ... */
function smtAdjacent(cores: number): PoolCpu[] {
  return Array.from({ length: cores * 2 }, (_, i) => ({ cpu: i, core: i & ~1 }));
}
const tasks = (o: Record<number, number[]> = {}): Map<number, number[]> =>
  new Map(Object.entries(o).map(([tid, v]) => [Number(tid), v]));
const cpus = (p: Placement[]): number[][] => p.map((x) => [...x.cpus]);
const kinds = (p: Placement[]): string[] => p.map((x) => x.kind);

test('dedication order: one CPU per core first, then siblings', () => {
  assert.equal(dedicationOrder(smt(4, 2)), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.equal(dedicationOrder(smtAdjacent(4)), [0, 2, 4, 6, 1, 3, 5, 7]);
  assert.equal(dedicationOrder([...smtAdjacent(2)].reverse()), [0, 2, 1, 3]);
  assert.equal(dedicationOrder(flat(3)), [0, 1, 2]);
});

test('none: every vCPU floats over the whole pool, hints or not', () => {
  const p = plan({ pool: flat(4), vcpus: 3, policy: 'none', tasks: tasks({ 7: [1] }) });
  assert.equal(cpus(p), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]);
  assert.equal(kinds(p), ['float', 'float', 'float']);
  assert.equal(p[1]!.tasks, [7]);
});

test('static, 4 CPUs no SMT: vCPU i on CPU i', () => {
  const p = plan({ pool: flat(4), vcpus: 4, policy: 'static', tasks: tasks() });
  assert.equal(cpus(p), [[0], [1], [2], [3]]);
  assert.equal(kinds(p), ['static', 'static', 'static', 'static']);
  assert.match(p[2]!.reason, 'own CPU 2');
});

test('static, 4 cores x 2 SMT: distinct cores before siblings', () => {
  const p = plan({ pool: smtAdjacent(4), vcpus: 6, policy: 'static', tasks: tasks() });
  assert.equal(cpus(p), [[0], [2], [4], [6], [1], [3]]);
});

test('static wraps around when vCPUs outnumber CPUs, and says so', () => {
  const p = plan({ pool: flat(2), vcpus: 5, policy: 'static', tasks: tasks() });
  assert.equal(cpus(p), [[0], [1], [0], [1], [0]]);
  assert.equal(kinds(p), ['shared', 'shared', 'shared', 'shared', 'shared']);
  assert.match(p[0]!.reason, 'wraps around');
  assert.match(p[0]!.reason, 'shared with vCPUs 2,4');
  assert.match(p[3]!.reason, 'shared with vCPUs 1');
});

test('hinted without hints: everyone floats over the pool', () => {
  const p = plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks() });
  assert.equal(cpus(p), [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]);
});

test('hinted, 4 CPUs: a pinned vCPU gets a dedicated CPU, the rest float over what is left', () => {
  const p = plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks({ 100: [2] }) });
  assert.equal(cpus(p), [[1, 2, 3], [1, 2, 3], [0], [1, 2, 3]]);
  assert.equal(kinds(p), ['float', 'float', 'dedicated', 'float']);
  assert.match(p[2]!.reason, 'tasks 100 pinned here; dedicated CPU 0');
  assert.match(p[0]!.reason, 'not dedicated (1-3)');
});

test('hinted, 4 cores x 2 SMT: dedicated vCPUs land on distinct cores first', () => {
  for (const pool of [smt(4, 2), smtAdjacent(4)]) {
    const core = new Map(pool.map((c) => [c.cpu, c.core]));
    const p = plan({ pool, vcpus: 6, policy: 'hinted', tasks: tasks({ 1: [0], 2: [1], 3: [2], 4: [3] }) });
    const used = p.slice(0, 4).map((x) => x.cpus);
    assert.ok(used.every((c) => c.length === 1));
    assert.is(new Set(used.map((c) => core.get(c[0]!))).size, 4, 'four distinct cores');
    assert.equal(kinds(p), ['dedicated', 'dedicated', 'dedicated', 'dedicated', 'float', 'float']);
    assert.equal(p[4]!.cpus.length, 4); // the four siblings left
  }
  const p = plan({ pool: smtAdjacent(4), vcpus: 6, policy: 'hinted', tasks: tasks({ 1: [0], 2: [1], 3: [2], 4: [3], 5: [4] }) });
  assert.equal(cpus(p).slice(0, 5), [[0], [2], [4], [6], [1]]);
});

test('hinted: a task confined to k vCPUs gives them k CPUs as a group', () => {
  const p = plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks({ 9: [0, 1] }) });
  assert.equal(cpus(p), [[0, 1], [0, 1], [2, 3], [2, 3]]);
  assert.equal(kinds(p), ['dedicated', 'dedicated', 'float', 'float']);
  assert.match(p[0]!.reason, 'confined to vCPUs 0-1; dedicated CPUs 0-1 for the group');
});

test('hinted: overlapping masks join one group; a singly pinned vCPU keeps its own CPU', () => {
  let p = plan({ pool: flat(6), vcpus: 5, policy: 'hinted', tasks: tasks({ 1: [0, 1], 2: [1, 2] }) });
  assert.equal(cpus(p).slice(0, 3), [[0, 1, 2], [0, 1, 2], [0, 1, 2]]);
  p = plan({ pool: flat(6), vcpus: 5, policy: 'hinted', tasks: tasks({ 1: [0, 1], 2: [0] }) });
  assert.equal(cpus(p), [[0], [1], [2, 3, 4, 5], [2, 3, 4, 5], [2, 3, 4, 5]]);
  assert.equal(p[0]!.tasks, [1, 2]);
});

test('hinted, 2 CPUs 4 vCPUs: dedicated where possible, others float over the whole pool', () => {
  let p = plan({ pool: flat(2), vcpus: 4, policy: 'hinted', tasks: tasks({ 5: [3] }) });
  assert.equal(cpus(p), [[1], [1], [1], [0]]);
  p = plan({ pool: flat(2), vcpus: 4, policy: 'hinted', tasks: tasks({ 5: [3], 6: [0] }) });
  assert.equal(cpus(p), [[0], [0, 1], [0, 1], [1]]);
  assert.match(p[1]!.reason, 'no free CPU left, floats over the whole pool');
});

test('hinted, more pinned vCPUs than CPUs: dedicate, then share the least used', () => {
  const p = plan({ pool: flat(2), vcpus: 4, policy: 'hinted', tasks: tasks({ 1: [0], 2: [1], 3: [2], 4: [3] }) });
  assert.equal(cpus(p), [[0], [1], [0], [1]]);
  assert.equal(kinds(p), ['shared', 'shared', 'shared', 'shared']);
  assert.match(p[2]!.reason, 'pool exhausted (4 hinted vCPUs, 2 CPUs): shares CPU 0');
  // Deterministic: the same input gives the same answer.
  assert.equal(cpus(plan({ pool: flat(2), vcpus: 4, policy: 'hinted', tasks: tasks({ 4: [3], 3: [2], 2: [1], 1: [0] }) })), cpus(p));
  // A group larger than the pool gets the whole pool once, not a CPU twice.
  const g = plan({ pool: flat(2), vcpus: 4, policy: 'hinted', tasks: tasks({ 1: [0, 1, 2] }) });
  assert.equal(cpus(g), [[0, 1], [0, 1], [0, 1], [0, 1]]);
  assert.equal(kinds(g), ['shared', 'shared', 'shared', 'float']);
});

test('hinted, 3 pinned on 2 CPUs: one dedicated, the two others share', () => {
  const p = plan({ pool: flat(2), vcpus: 3, policy: 'hinted', tasks: tasks({ 1: [0], 2: [1], 3: [2] }) });
  assert.equal(cpus(p), [[0], [1], [0]]);
  assert.equal(kinds(p), ['shared', 'dedicated', 'shared']);
});

test('pool subset: CPUs come from the pool only', () => {
  const pool = smt(4, 2).filter((c) => [1, 2, 5, 6].includes(c.cpu));
  const p = plan({ pool, vcpus: 4, policy: 'hinted', tasks: tasks({ 1: [0], 2: [1], 3: [2] }) });
  assert.equal(cpus(p), [[1], [2], [5], [6]]);
  const s = plan({ pool, vcpus: 3, policy: 'static', tasks: tasks() });
  assert.equal(cpus(s), [[1], [2], [5]]);
  const n = plan({ pool, vcpus: 1, policy: 'none', tasks: tasks() });
  assert.equal(cpus(n), [[1, 2, 5, 6]]);
});

test('stability: pinning another task does not move an already pinned vCPU', () => {
  const first = plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks({ 10: [3] }) });
  assert.equal(first[3]!.cpus, [0]);
  const second = plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks({ 10: [3], 11: [1] }), previous: first });
  assert.equal(cpus(second), [[2, 3], [1], [2, 3], [0]]);
  // Without the previous plan vCPU 1 would have come first.
  assert.equal(plan({ pool: flat(4), vcpus: 4, policy: 'hinted', tasks: tasks({ 10: [3], 11: [1] }) })[1]!.cpus, [0]);
  // A previous CPU that left the pool is not kept.
  const shrunk = plan({ pool: flat(4).slice(1), vcpus: 4, policy: 'hinted', tasks: tasks({ 10: [3] }), previous: first });
  assert.equal(shrunk[3]!.cpus, [1]);
});

test('property: whatever the input, CPUs come from the pool; dedicated CPUs are exclusive', () => {
  let seed = 12345;
  const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed % n);
  const policies: Policy[] = ['none', 'static', 'hinted'];
  let previous: Placement[] | undefined;
  for (let round = 0; round < 500; round++) {
    const all = smt(8, 2);
    const pool = all.filter(() => rnd(3) > 0);
    if (pool.length === 0) continue;
    const vcpus = 1 + rnd(12);
    const t = new Map<number, number[]>();
    for (let i = rnd(8); i > 0; i--) {
      const set = [...new Set(Array.from({ length: 1 + rnd(3) }, () => rnd(vcpus)))].sort((a, b) => a - b);
      if (set.length < vcpus) t.set(100 + rnd(20), set);
    }
    const p = plan({ pool, vcpus, policy: policies[rnd(3)]!, tasks: t, previous });
    previous = p;
    const inPool = new Set(pool.map((c) => c.cpu));
    assert.is(p.length, vcpus);
    const owner = new Map<number, string>();
    for (const x of p) {
      assert.ok(x.cpus.length > 0 && x.cpus.every((c) => inPool.has(c)), `vCPU ${x.vcpu} outside the pool`);
      assert.equal([...x.cpus], [...new Set(x.cpus)].sort((a, b) => a - b));
      if (x.kind !== 'dedicated') continue;
      const key = x.cpus.join(',');
      for (const c of x.cpus) {
        assert.ok(!owner.has(c) || owner.get(c) === key, `CPU ${c} dedicated twice`);
        owner.set(c, key);
      }
    }
    for (const x of p) if (x.kind === 'float' && owner.size < inPool.size) assert.ok(x.cpus.every((c) => !owner.has(c)), 'float over a dedicated CPU');
  }
});

test('bad input is a PolicyError', () => {
  const isPolicyError = (e: unknown): boolean => e instanceof PolicyError;
  assert.throws(() => plan({ pool: [], vcpus: 1, policy: 'none', tasks: tasks() }), isPolicyError);
  assert.throws(() => plan({ pool: flat(1), vcpus: 0, policy: 'none', tasks: tasks() }), isPolicyError);
  assert.throws(() => plan({ pool: flat(1), vcpus: 2, policy: 'bogus' as Policy, tasks: tasks() }), isPolicyError);
  assert.throws(() => plan({ pool: flat(2), vcpus: 2, policy: 'hinted', tasks: tasks({ 1: [0, 1] }) }), isPolicyError);
  assert.throws(() => plan({ pool: flat(2), vcpus: 2, policy: 'hinted', tasks: tasks({ 1: [2] }) }), isPolicyError);
  assert.throws(() => plan({ pool: [{ cpu: 1, core: 1 }, { cpu: 1, core: 1 }], vcpus: 1, policy: 'none', tasks: tasks() }), isPolicyError);
});

test.run();
