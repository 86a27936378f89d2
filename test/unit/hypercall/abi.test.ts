// The hypercall protocol's numbers and layouts (devices/hypercall/registers.ts, shmem.ts) against
// their C twin, guest/hypercall.h, which the guest agent is built with (test/unit/abi.ts): a
// register, command, status or field that drifts on one side fails here, not in a guest.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { AbiExpectations } from '../abi';
import { Caps, Cmd, Features, HC_IO_LEN, HC_MAGIC, HC_VERSION, Reg, Status } from '../../../devices/hypercall/registers';
import {
  HELLO_MAX_NAME, HelloHeader, HintsHeader, MapUpdateHeader, Op, Outcome, PAGE, RecordHeader, REPORT_MAX_PROGS, ReportHeader, RequestHeader, SHM_MAGIC,
  SHM_VERSION, SOURCE_TYPE, ShmHeader, SourceRecord,
} from '../../../devices/hypercall/shmem';

const here = dirname(fileURLToPath(import.meta.url));
/** The checkout's guest/ (this file runs from dist/test/unit/hypercall or test/unit/hypercall). */
const guestDir = join(here, here.includes('/dist/') ? '../../../../guest' : '../../../guest');
const SCREAMING = (camel: string): string => camel.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

test('registers, commands, statuses, capability bits and shared-memory layouts match guest/hypercall.h', () => {
  const abi = new AbiExpectations();
  abi.want('HC_MAGIC', HC_MAGIC);
  abi.want('HC_VERSION', HC_VERSION);
  abi.want('HC_IO_LEN', HC_IO_LEN);
  for (const [k, v] of Object.entries(Reg)) abi.want(`HC_REG_${k}`, v);
  for (const [k, v] of Object.entries(Cmd)) abi.want(`HC_${k}`, v);
  for (const [k, v] of Object.entries(Status)) abi.want(`HC_${k}`, v);
  abi.want('HC_FEAT_HINT_SOURCE', Features.HINT_SOURCE);
  // The agent names only the capability bits it may set.
  for (const k of ['DIGEST_ALLOWLIST', 'HINTS', 'REPLACE', 'HINT_SOURCE'] as const) abi.want(`HC_CAP_${k}`, Caps[k]);
  abi.want('SHM_MAGIC', SHM_MAGIC);
  abi.want('SHM_VERSION', SHM_VERSION);
  abi.want('SHM_HDR_PAGE', PAGE);
  for (const [k, , offset] of ShmHeader.layout()) abi.want(`SHM_H_${SCREAMING(k)}`, offset);
  abi.want('HELLO_HDR', HelloHeader.size);
  abi.want('HELLO_MAX_NAME', HELLO_MAX_NAME);
  for (const [k, v] of Object.entries(Op)) abi.want(`OP_${k}`, v);
  const req: Record<string, string> = { requestId: 'REQ_ID' };
  for (const [k, , offset] of RequestHeader.layout()) abi.want(req[k] ?? `REQ_${SCREAMING(k)}`, offset);
  abi.want('REQ_BODY', RequestHeader.size);
  for (const [k, , offset] of MapUpdateHeader.layout()) abi.want(`MU_${SCREAMING(k)}`, offset);
  abi.want('MU_DATA', MapUpdateHeader.size);
  for (const [k, v] of Object.entries(Outcome)) abi.want(`OUT_${k}`, v);
  abi.want('REPORT_HDR', ReportHeader.size);
  abi.want('REPORT_MAX_PROGS', REPORT_MAX_PROGS);
  abi.want('HINTS_HDR', HintsHeader.size);
  abi.want('RECORD_HDR', RecordHeader.size);
  abi.want('SOURCE_TYPE', SOURCE_TYPE);
  abi.want('SOURCE_LEN', SourceRecord.size);
  assert.equal(abi.mismatches(['hypercall.h'], [guestDir]), []);
  assert.ok(abi.count > 50, `checked ${abi.count} values`);
});

test.run();
