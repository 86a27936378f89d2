import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpusAllowed, expandCpuList } from '../../procfs';
import { hostPool, readAllowedCpus, readHostTopology, TopologyError } from '../../../vmm/scheduler/topology';

const dirs: string[] = [];
function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'tsvmm-sysfs-'));
  dirs.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

/**
 * 2 packages x 2 cores x 2 SMT threads, numbered like Linux does (siblings n and n+4), with
 * core_id repeating in each package.
 */
function twoSockets(online = '0-7'): Record<string, string> {
  const f: Record<string, string> = { online: `${online}\n`, possible: '0-7\n' };
  for (let cpu = 0; cpu < 8; cpu++) {
    const t = `cpu${cpu}/topology/`;
    const first = cpu % 4;
    f[`${t}core_id`] = `${first % 2}\n`;
    f[`${t}physical_package_id`] = `${first >> 1}\n`;
    f[`${t}die_id`] = '0\n';
    f[`${t}thread_siblings_list`] = `${first},${first + 4}\n`;
  }
  return f;
}

function status(list: string): string {
  return `Name:\tnode\nCpus_allowed:\tff\nCpus_allowed_list:\t${list}\nMems_allowed_list:\t0\n`;
}

test('reads cores, packages and siblings; core keys are unique across packages', () => {
  const cpus = readHostTopology(tree(twoSockets()));
  assert.equal(cpus.map((c) => c.cpu), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.equal(cpus.map((c) => c.core), [0, 1, 2, 3, 0, 1, 2, 3]);
  assert.equal(cpus.map((c) => c.coreId), [0, 1, 0, 1, 0, 1, 0, 1]);
  assert.equal(cpus.map((c) => c.packageId), [0, 0, 1, 1, 0, 0, 1, 1]);
  assert.equal(cpus[6]!.siblings, [2, 6]);
  assert.is(cpus[6]!.dieId, 0);
});

test('offline CPUs are left out, also from sibling lists', () => {
  const cpus = readHostTopology(tree(twoSockets('0-6')));
  assert.equal(cpus.map((c) => c.cpu), [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(cpus[3]!.siblings, [3]);
  assert.is(cpus[3]!.core, 3);
});

test('missing topology files: each CPU is its own core', () => {
  const cpus = readHostTopology(tree({ online: '0-2\n', 'cpu0/uevent': '', 'cpu1/topology/core_id': 'garbage\n' }));
  assert.equal(cpus.map((c) => c.core), [0, 1, 2]);
  assert.equal(cpus.map((c) => c.coreId), [-1, -1, -1]);
  assert.equal(cpus[1]!.siblings, [1]);
});

test('no online file, or an empty one, is a TopologyError', () => {
  assert.throws(() => readHostTopology(tree({ 'cpu0/uevent': '' })), (e: unknown) => e instanceof TopologyError && /online/.test((e as Error).message));
  assert.throws(() => readHostTopology(tree({ online: '\n' })), (e: unknown) => e instanceof TopologyError);
});

test('allowed CPUs from a status file', () => {
  const root = tree({ status: status('0-1,4') });
  assert.equal(readAllowedCpus(join(root, 'status')), [0, 1, 4]);
  assert.throws(() => readAllowedCpus(join(tree({ status: 'Name: x\n' }), 'status')), (e: unknown) => e instanceof TopologyError);
});

test('allowed CPUs of this very process match /proc', () => {
  assert.equal(readAllowedCpus(), cpusAllowed());
});

test('pool = online ∩ allowed, or exactly --host-cpus', () => {
  const root = tree({ ...twoSockets(), status: status('0-5') });
  const statusPath = join(root, 'status');
  assert.equal(hostPool({ sysfsRoot: root, statusPath }).map((c) => c.cpu), [0, 1, 2, 3, 4, 5]);
  const pool = hostPool({ sysfsRoot: root, statusPath, hostCpus: '1,4-5' });
  assert.equal(pool.map((c) => c.cpu), [1, 4, 5]);
  assert.equal(pool.map((c) => c.core), [1, 0, 1]);
});

test('--host-cpus outside online ∩ allowed is refused, naming the CPUs', () => {
  const root = tree({ ...twoSockets('0-6'), status: status('0-5') });
  const statusPath = join(root, 'status');
  assert.throws(
    () => hostPool({ sysfsRoot: root, statusPath, hostCpus: '4-7' }),
    (e: unknown) => e instanceof TopologyError && /--host-cpus 6-7/.test((e as Error).message),
  );
  assert.throws(() => hostPool({ sysfsRoot: root, statusPath, hostCpus: '' }), (e: unknown) => e instanceof TopologyError);
  assert.throws(() => hostPool({ sysfsRoot: root, statusPath, hostCpus: '1-' }), /bad CPU list/);
});

test('the real host: every online CPU with the core, package and siblings its sysfs topology/ files give', () => {
  const sys = '/sys/devices/system/cpu';
  const cpus = readHostTopology();
  const online = expandCpuList(readFileSync(join(sys, 'online'), 'utf8'));
  assert.equal(cpus.map((c) => c.cpu), online);
  const topo = (cpu: number, file: string) => readFileSync(join(sys, `cpu${cpu}/topology`, file), 'utf8').trim();
  for (const c of cpus) {
    assert.is(c.coreId, Number(topo(c.cpu, 'core_id')), `cpu${c.cpu} core_id`);
    assert.is(c.packageId, Number(topo(c.cpu, 'physical_package_id')), `cpu${c.cpu} physical_package_id`);
    const siblings = expandCpuList(topo(c.cpu, 'thread_siblings_list')).filter((x) => online.includes(x));
    assert.equal(c.siblings, siblings, `cpu${c.cpu} thread_siblings_list`);
    assert.is(c.core, siblings[0], `cpu${c.cpu}: its core is named by its first sibling`);
  }
  const allowed = cpusAllowed();
  assert.equal(hostPool().map((c) => c.cpu), online.filter((c) => allowed.includes(c)));
});

test.after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test.run();
