// vhost-user and virtio-fs layouts against the kernel's headers: the vring structs are the
// vhost ioctl ABI (<linux/vhost_types.h>) that vhost-user copies, the config space is
// <linux/virtio_fs.h>'s, and the socket structs of kvm/libc.ts are glibc's.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import { Cmsghdr, Iovec, Msghdr, SockaddrUn } from '../../../kvm/libc';
import { VringAddr, VringState } from '../../../devices/virtio/vhost-user/messages';
import { VirtioFsConfig } from '../../../devices/virtio/fs/device';

test('vring state/addr, virtio_fs_config, msghdr, cmsghdr, iovec, sockaddr_un match the headers', () => {
  const a = new AbiExpectations();
  a.struct(VringState);
  a.struct(VringAddr);
  a.struct(VirtioFsConfig);
  a.struct(Msghdr);
  a.struct(Cmsghdr);
  a.struct(Iovec);
  a.struct(SockaddrUn);
  a.want('CMSG_LEN(0)', Cmsghdr.size);
  a.want('SCM_RIGHTS', 1);
  a.want('MSG_CMSG_CLOEXEC', 0x40000000);
  a.want('VIRTIO_ID_FS', 26);
  assert.equal(a.mismatches(['linux/vhost_types.h', 'linux/virtio_fs.h', 'linux/virtio_ids.h', 'sys/socket.h', 'sys/uio.h', 'sys/un.h']), []);
});

test.run();
