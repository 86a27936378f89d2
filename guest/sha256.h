/* SHA-256 (FIPS 180-4), one-shot: the agent checks package digests without a crypto library. */
#ifndef TSVMM_SHA256_H
#define TSVMM_SHA256_H
#include <stddef.h>
#include <stdint.h>
void sha256(const uint8_t *data, size_t len, uint8_t out[32]);
#endif
