// The virtio-rng device's public face.
export { VirtioRng, VIRTIO_ID_RNG, DEFAULT_RNG_LIMIT, MAX_REQUEST, QUEUE_SIZE, type RngCounters } from './device';
