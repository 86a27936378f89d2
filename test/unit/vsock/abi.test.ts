// The virtio-vsock wire layouts (devices/virtio/vsock/packet.ts, device.ts) against the system's
// <linux/virtio_vsock.h> and <linux/virtio_ids.h> (test/unit/abi.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import { VIRTIO_ID_VSOCK } from '../../../devices/virtio/device';
import { VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VsockConfig, VsockEvent } from '../../../devices/virtio/vsock/device';
import {
  OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
  TYPE_STREAM, VsockHdr,
} from '../../../devices/virtio/vsock/packet';

test('virtio_vsock_hdr, config, event and the protocol constants match <linux/virtio_vsock.h>', () => {
  const abi = new AbiExpectations();
  for (const s of [VsockHdr, VsockConfig, VsockEvent]) abi.struct(s);
  const consts: [string, number][] = [
    ['VIRTIO_ID_VSOCK', VIRTIO_ID_VSOCK], ['VIRTIO_VSOCK_TYPE_STREAM', TYPE_STREAM],
    ['VIRTIO_VSOCK_OP_REQUEST', OP_REQUEST], ['VIRTIO_VSOCK_OP_RESPONSE', OP_RESPONSE], ['VIRTIO_VSOCK_OP_RST', OP_RST],
    ['VIRTIO_VSOCK_OP_SHUTDOWN', OP_SHUTDOWN], ['VIRTIO_VSOCK_OP_RW', OP_RW], ['VIRTIO_VSOCK_OP_CREDIT_UPDATE', OP_CREDIT_UPDATE],
    ['VIRTIO_VSOCK_OP_CREDIT_REQUEST', OP_CREDIT_REQUEST], ['VIRTIO_VSOCK_SHUTDOWN_RCV', SHUTDOWN_RCV],
    ['VIRTIO_VSOCK_SHUTDOWN_SEND', SHUTDOWN_SEND], ['VIRTIO_VSOCK_EVENT_TRANSPORT_RESET', VIRTIO_VSOCK_EVENT_TRANSPORT_RESET],
  ];
  for (const [c, v] of consts) abi.want(c, v);
  assert.equal(abi.mismatches(['linux/virtio_ids.h', 'linux/virtio_vsock.h']), []);
  assert.ok(abi.count > 35, `checked ${abi.count} values`);
});

test.run();
