// The BTF layouts the ELF loader reads (bpf/elf.ts) against the system's <linux/btf.h>.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import { BTF_MAGIC, BtfArray, BtfHeader, BtfKind, BtfMember, BtfType, BtfVarSecinfo, btfKind, btfVlen } from '../../../bpf/elf';

test('btf_header, btf_type, btf_array, btf_member, btf_var_secinfo and the kinds match <linux/btf.h>', () => {
  const abi = new AbiExpectations();
  for (const s of [BtfHeader, BtfType, BtfArray, BtfMember, BtfVarSecinfo]) abi.struct(s);
  abi.want('BTF_MAGIC', BTF_MAGIC);
  for (const [k, v] of Object.entries(BtfKind)) abi.want(`BTF_KIND_${k}`, v);
  abi.want('BTF_INFO_KIND(0x9300abcdU)', btfKind(0x9300abcd));
  abi.want('BTF_INFO_VLEN(0x9300abcdU)', btfVlen(0x9300abcd));
  assert.equal(abi.mismatches(['linux/btf.h']), []);
  assert.ok(abi.count > 50, `checked ${abi.count} values`);
});

test.run();
