// The zero page and setup header of vmm/boot/setup-header.ts against the system's
// <asm/bootparam.h> (test/unit/abi.ts): every size, field offset and width, and the flags.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import {
  BootParams, CAN_USE_HEAP, E820Entry, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, SetupHeader, XLF_KERNEL_64,
} from '../../../vmm/boot/setup-header';

test('setup_header, boot_params and boot_e820_entry match <asm/bootparam.h>', () => {
  const abi = new AbiExpectations();
  for (const s of [SetupHeader, BootParams, E820Entry]) abi.struct(s);
  abi.want('LOADED_HIGH', LOADED_HIGH);
  abi.want('CAN_USE_HEAP', CAN_USE_HEAP);
  abi.want('XLF_KERNEL_64', XLF_KERNEL_64);
  abi.want('E820_MAX_ENTRIES_ZEROPAGE', E820_MAX_ENTRIES_ZEROPAGE);
  assert.equal(abi.mismatches(['asm/bootparam.h']), []);
  assert.ok(abi.count > 90, `checked ${abi.count} values`);
});

test.run();
