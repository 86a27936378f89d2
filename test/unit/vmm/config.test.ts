// Size parsing and machine limits (vmm/config.ts): bad input fails with a ConfigError.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ConfigError, hostMemory, parseSize, validateMemory, validateVcpus } from '../../../vmm/config';

const MiB = 1024 * 1024;

function configError(fn: () => unknown, re: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, ConfigError);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('no ConfigError');
}

test('parseSize: units and plain bytes', () => {
  assert.is(parseSize('512M'), 512 * MiB);
  assert.is(parseSize('2G'), 2048 * MiB);
  assert.is(parseSize('1024K'), MiB);
  assert.is(parseSize('12345'), 12345);
  assert.is(parseSize('1g'), 1024 * MiB);
  assert.is(parseSize('256MiB'), 256 * MiB);
  assert.is(parseSize(' 64M '), 64 * MiB);
});

test('parseSize: bad strings', () => {
  for (const s of ['', 'M', '12X', '-1M', '1.5G', '0x1000', '1 G', '2T', 'lots', '99999999999999999999G']) {
    configError(() => parseSize(s), /invalid size|too large/);
  }
});

test('validateMemory: too small, not a 4 KiB multiple, bigger than the host', () => {
  validateMemory(256 * MiB);
  configError(() => validateMemory(16 * MiB), /too small.*32M/);
  configError(() => validateMemory(0), /too small/);
  configError(() => validateMemory(64 * MiB + 512), /multiple of 4 KiB/);
  const tooBig = Math.ceil((hostMemory() + 1) / 4096) * 4096;
  configError(() => validateMemory(tooBig), /larger than this host/);
});

test('validateVcpus: at least 1, at most KVM\'s limit (and 254)', () => {
  validateVcpus(1, 288);
  validateVcpus(4, 4);
  validateVcpus(254, 1024);
  configError(() => validateVcpus(0, 288), /at least 1/);
  configError(() => validateVcpus(1.5, 288), /invalid/);
  configError(() => validateVcpus(5, 4), /exceeds the limit of 4/);
  configError(() => validateVcpus(255, 1024), /limit of 254/);
});

test.run();
