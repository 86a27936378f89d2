// virtio-fs shares through the API (PUT /fs/{id}, before InstanceStart) and the config file
// ("fs": [...]): what reaches the machine config, field-level errors, GET /vm/config.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall } from '../../../vmm/api/client';
import { readConfigFile } from '../../../vmm/api/resources';
import { rig, tmp } from './fake';

const json = (t: string) => JSON.parse(t) as Record<string, unknown>;

test('PUT /fs/{id}: shares in order (tags follow), replace by id, --rootfs host as mount_point "/"', async () => {
  const r = await rig();
  try {
    const put = (id: string, body: unknown) => apiCall(r.sock, 'PUT', `/fs/${id}`, body);
    assert.is((await apiCall(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel })).status, 204);
    assert.is((await put('data', { shared_dir: r.dir, mount_point: '/mnt/d/', read_only: true })).status, 204);
    assert.is((await put('root', { shared_dir: '/', mount_point: '/' })).status, 204);
    assert.is((await put('data', { shared_dir: r.dir, mount_point: '/mnt/data' })).status, 204, 'replaced, keeps its place');
    const bad = async (id: string, body: unknown, re: RegExp) => {
      const x = await put(id, body);
      assert.is(x.status, 400, x.text);
      assert.match(json(x.text).fault_message as string, re);
    };
    await bad('x', { shared_dir: join(r.dir, 'nope'), mount_point: '/m' }, /fs\/x.shared_dir: cannot open .*ENOENT/);
    await bad('x', { shared_dir: r.kernel, mount_point: '/m' }, /is not a directory/);
    await bad('x', { shared_dir: r.dir, mount_point: 'rel' }, /fs\/x.mount_point: the guest directory must be an absolute path/);
    await bad('x', { shared_dir: r.dir, mount_point: '/' }, /"\/" is the host's root, read-only/);
    await bad('x', { shared_dir: r.dir, mount_point: '/mnt/data' }, /\/mnt\/data is already fs\/data's/);
    await bad('x', { mount_point: '/m' }, /fs\/x.shared_dir: missing required field/);
    const cfg = json((await apiCall(r.sock, 'GET', '/vm/config')).text);
    assert.equal(cfg.fs, [
      { fs_id: 'data', shared_dir: r.dir, mount_point: '/mnt/data', read_only: false },
      { fs_id: 'root', shared_dir: '/', mount_point: '/', read_only: true },
    ]);
    assert.is((await apiCall(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal(r.starts[0]!.shares, [
      { hostDir: r.dir, guestDir: '/mnt/data', readOnly: false, tag: 'tsvmmfs0' },
      { hostDir: '/', guestDir: '/', readOnly: true, tag: 'tsvmmfs1', root: true },
    ]);
    assert.is((await put('late', { shared_dir: r.dir, mount_point: '/late' })).status, 400, 'not after boot');
  } finally {
    await r.close();
  }
});

test('config file: "fs" array becomes the shares; bad entries named by index', () => {
  const dir = tmp();
  const kernel = join(dir, 'k');
  writeFileSync(kernel, 'x');
  const file = join(dir, 'c.json');
  writeFileSync(file, JSON.stringify({ 'boot-source': { kernel_image_path: kernel }, fs: [{ fs_id: 'a', shared_dir: dir, mount_point: '/a', read_only: true }] }));
  assert.equal(readConfigFile(file).shares, [{ hostDir: dir, guestDir: '/a', readOnly: true, tag: 'tsvmmfs0' }]);
  writeFileSync(file, JSON.stringify({ 'boot-source': { kernel_image_path: kernel }, fs: [{ shared_dir: dir, mount_point: 'a' }] }));
  assert.throws(() => readConfigFile(file), /fs\[0\].mount_point: the guest directory/);
  writeFileSync(file, JSON.stringify({ 'boot-source': { kernel_image_path: kernel }, fs: { shared_dir: dir } }));
  assert.throws(() => readConfigFile(file), /fs: must be an array/);
});

test.run();
