/*
 * vsock-bench: one end of a vsock throughput run (tools/bench/vsock.mjs). Built static for the
 * guest (tools/bench/guest-build.sh -> guest/build/vsock-bench) and dynamic for the host side.
 * Owns only its own wire format below; knows nothing of tsvmm beyond Firecracker's hybrid
 * vsock handshake (CONNECT <port>\n -> OK <port>\n).
 *
 *   vsock-bench send BYTES ENDPOINT     vsock-bench recv ENDPOINT
 *   ENDPOINT: listen:PORT | connect:CID:PORT | uds-connect:PATH:PORT | uds-listen:PATH
 *
 * Wire: sender -> u64 LE length, its SHA-256 of the data (64 hex digits), LENGTH bytes;
 * receiver -> 1 byte ack as soon as the last byte is in, then its own SHA-256 (64 hex
 * digits + '\n'). So both ends check the digest. The data is generated and hashed
 * before the clock starts and the receiver hashes after it stops, so the timed part is the
 * transfer alone (a nested guest hashes slower than the device moves bytes).
 * Each side prints one line:
 *   vsock-bench: role=send|recv bytes=N secs=S mib_s=M sha256=H peer_sha256=H ok=0|1
 * sender: secs = first byte written .. ack read; receiver: first byte read .. last byte read.
 * Exit status: 0 when both digests match, 1 on a mismatch or an I/O error, 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define CHUNK (256 * 1024)
#define RETRY_SECS 600.0

/* SHA-256, FIPS 180-4, streaming. */
struct sha { uint32_t h[8]; uint8_t buf[64]; size_t fill; uint64_t total; };

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(struct sha *s, const uint8_t *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha_init(struct sha *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, iv, sizeof iv);
	s->fill = 0, s->total = 0;
}

static void sha_update(struct sha *s, const uint8_t *p, size_t n)
{
	s->total += n;
	while (n > 0) {
		if (s->fill == 0 && n >= 64) {
			sha_block(s, p), p += 64, n -= 64;
			continue;
		}
		size_t k = 64 - s->fill < n ? 64 - s->fill : n;
		memcpy(s->buf + s->fill, p, k), s->fill += k, p += k, n -= k;
		if (s->fill == 64) sha_block(s, s->buf), s->fill = 0;
	}
}

static void sha_hex(struct sha *s, char out[65])
{
	uint64_t bits = s->total * 8;
	uint8_t pad = 0x80, zero = 0, len[8];
	sha_update(s, &pad, 1);
	while (s->fill != 56) sha_update(s, &zero, 1);
	for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha_update(s, len, 8);
	for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", s->h[i]);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "vsock-bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: vsock-bench send BYTES ENDPOINT | recv ENDPOINT\n"
			"  ENDPOINT: listen:PORT | connect:CID:PORT | uds-connect:PATH:PORT | uds-listen:PATH\n");
	exit(2);
}

static void write_all(int fd, const void *p, size_t n)
{
	while (n > 0) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) die("write");
		p = (const uint8_t *)p + r, n -= (size_t)r;
	}
}

/* Returns bytes read; fewer than n only at EOF. */
static size_t read_full(int fd, void *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (uint8_t *)p + got, n - got);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) die("read");
		if (r == 0) break;
		got += (size_t)r;
	}
	return got;
}

static int uds_addr(const char *path, struct sockaddr_un *a)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof a->sun_path) { errno = ENAMETOOLONG; die(path); }
	strcpy(a->sun_path, path);
	return 0;
}

/* The listener may not be up yet (guest still booting, VMM not started): retry. */
static int connect_retry(int family, const struct sockaddr *sa, socklen_t len, const char *what)
{
	double deadline = now() + RETRY_SECS;
	for (;;) {
		int fd = socket(family, SOCK_STREAM, 0);
		if (fd < 0) die("socket");
		if (connect(fd, sa, len) == 0) return fd;
		int e = errno;
		close(fd);
		if (now() > deadline) { errno = e; die(what); }
		usleep(50 * 1000);
	}
}

/* Hybrid vsock: CONNECT <port>\n, then OK <host port>\n. A closed socket without OK means
 * nobody listens in the guest yet: retry. The reply is read byte by byte so no stream data
 * is swallowed. */
static int uds_connect(const char *path, unsigned port)
{
	struct sockaddr_un a;
	uds_addr(path, &a);
	double deadline = now() + RETRY_SECS;
	for (;;) {
		int fd = connect_retry(AF_UNIX, (struct sockaddr *)&a, sizeof a, path);
		char line[64];
		int n = snprintf(line, sizeof line, "CONNECT %u\n", port);
		write_all(fd, line, (size_t)n);
		/* A VMM that never answers must not hang us: give up on this attempt after 5 s. */
		size_t i = 0;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		while (i < sizeof line - 1 && poll(&p, 1, 5000) == 1 && read(fd, line + i, 1) == 1 && line[i] != '\n') i++;
		line[i] = 0;
		if (strncmp(line, "OK ", 3) == 0) return fd;
		close(fd);
		if (now() > deadline) { fprintf(stderr, "vsock-bench: no OK from %s port %u\n", path, port); exit(1); }
		usleep(100 * 1000);
	}
}

static int accept_one(int family, struct sockaddr *sa, socklen_t len)
{
	int l = socket(family, SOCK_STREAM, 0);
	if (l < 0) die("socket");
	if (bind(l, sa, len) < 0) die("bind");
	if (listen(l, 1) < 0) die("listen");
	/* Tell a waiting orchestrator the listener is up. */
	fprintf(stderr, "vsock-bench: listening\n");
	int fd = accept(l, NULL, NULL);
	if (fd < 0) die("accept");
	close(l);
	return fd;
}

static int open_endpoint(const char *ep)
{
	char *s = strdup(ep), *colon;
	if (strncmp(s, "listen:", 7) == 0) {
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					 .svm_port = (unsigned)strtoul(s + 7, NULL, 10) };
		return accept_one(AF_VSOCK, (struct sockaddr *)&a, sizeof a);
	}
	if (strncmp(s, "connect:", 8) == 0 && (colon = strchr(s + 8, ':'))) {
		struct sockaddr_vm a = { .svm_family = AF_VSOCK,
					 .svm_cid = (unsigned)strtoul(s + 8, NULL, 10),
					 .svm_port = (unsigned)strtoul(colon + 1, NULL, 10) };
		return connect_retry(AF_VSOCK, (struct sockaddr *)&a, sizeof a, "vsock connect");
	}
	if (strncmp(s, "uds-connect:", 12) == 0 && (colon = strrchr(s + 12, ':'))) {
		*colon = 0;
		return uds_connect(s + 12, (unsigned)strtoul(colon + 1, NULL, 10));
	}
	if (strncmp(s, "uds-listen:", 11) == 0) {
		struct sockaddr_un a;
		uds_addr(s + 11, &a);
		unlink(s + 11);
		return accept_one(AF_UNIX, (struct sockaddr *)&a, sizeof a);
	}
	usage();
	return -1;
}

static void report(const char *role, uint64_t bytes, double secs, const char *sha, const char *peer)
{
	int ok = strcmp(sha, peer) == 0;
	printf("vsock-bench: role=%s bytes=%llu secs=%.6f mib_s=%.3f sha256=%s peer_sha256=%s ok=%d\n",
	       role, (unsigned long long)bytes, secs, secs > 0 ? bytes / 1048576.0 / secs : 0.0, sha, peer, ok);
	fflush(stdout);
	exit(ok ? 0 : 1);
}

static void do_send(uint64_t bytes, int fd)
{
	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data) die("malloc");
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (uint64_t i = 0; i < bytes; i++) {
		if ((i & 7) == 0) x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		data[i] = (uint8_t)(x >> (8 * (i & 7)));
	}
	struct sha s;
	char mine[65], peer[65] = "";
	sha_init(&s), sha_update(&s, data, bytes), sha_hex(&s, mine);
	uint8_t hdr[8 + 64];
	for (int i = 0; i < 8; i++) hdr[i] = (uint8_t)(bytes >> (8 * i));
	memcpy(hdr + 8, mine, 64);
	double t0 = now();
	write_all(fd, hdr, sizeof hdr);
	for (uint64_t off = 0; off < bytes; off += CHUNK)
		write_all(fd, data + off, bytes - off < CHUNK ? bytes - off : CHUNK);
	uint8_t ack;
	if (read_full(fd, &ack, 1) != 1) { fprintf(stderr, "vsock-bench: no ack from the receiver\n"); exit(1); }
	double secs = now() - t0;
	size_t n = read_full(fd, peer, 65);
	peer[n ? n - 1 : 0] = 0;
	close(fd);
	report("send", bytes, secs, mine, peer);
}

static void do_recv(int fd)
{
	uint8_t hdr[8 + 64];
	char peer[65];
	if (read_full(fd, hdr, sizeof hdr) != sizeof hdr) { fprintf(stderr, "vsock-bench: short header\n"); exit(1); }
	double t0 = now();
	uint64_t bytes = 0;
	for (int i = 0; i < 8; i++) bytes |= (uint64_t)hdr[i] << (8 * i);
	memcpy(peer, hdr + 8, 64), peer[64] = 0;
	if (bytes > (1ull << 32)) { fprintf(stderr, "vsock-bench: refusing %llu bytes\n", (unsigned long long)bytes); exit(1); }
	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data) die("malloc");
	size_t got = read_full(fd, data, bytes);
	double secs = now() - t0;
	if (got != bytes) { fprintf(stderr, "vsock-bench: EOF after %zu of %llu bytes\n", got, (unsigned long long)bytes); exit(1); }
	write_all(fd, "A", 1);
	struct sha s;
	char mine[65];
	sha_init(&s), sha_update(&s, data, bytes), sha_hex(&s, mine);
	char line[66];
	snprintf(line, sizeof line, "%s\n", mine);
	write_all(fd, line, 65);
	/* The peer closes first once it has our digest, so our close loses nothing. */
	char c;
	(void)read(fd, &c, 1);
	close(fd);
	report("recv", bytes, secs, mine, peer);
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "send") == 0) {
		char *end;
		uint64_t bytes = strtoull(argv[2], &end, 10);
		if (*end) usage();
		do_send(bytes, open_endpoint(argv[3]));
	} else if (argc == 3 && strcmp(argv[1], "recv") == 0) {
		do_recv(open_endpoint(argv[2]));
	}
	usage();
}
