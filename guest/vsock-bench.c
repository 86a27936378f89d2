/*
 * vsock-bench: one end of a vsock throughput run (tools/bench/vsock.mjs). Built static for the
 * guest (tools/bench/guest-build.sh -> guest/build/vsock-bench) and dynamic for the host side.
 * Owns only its own wire format below; knows nothing of tsvmm beyond Firecracker's hybrid
 * vsock handshake (CONNECT <port>\n -> OK <port>\n).
 *
 *   vsock-bench send BYTES ENDPOINT     vsock-bench recv ENDPOINT
 *   vsock-bench echo-send BYTES ENDPOINT     vsock-bench echo ENDPOINT
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
 *
 * Echo (the concurrent case): echo-send writes the same header and data while it reads
 * everything back at the same time (one poll loop, so both directions are in flight at once);
 * echo returns every byte it reads, header included, as it reads it, keeps a copy and hashes it
 * once the last byte went back. echo-send's check is byte-exact (what came back against what it
 * sent) and by digest; its secs = first byte written .. last echoed byte read. The echo end's
 * secs = first data byte read .. last byte written back.
 * Exit status: 0 when both digests match, 1 on a mismatch or an I/O error, 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
#include "sha256.h"

#define CHUNK (256 * 1024)
#define RETRY_SECS 600.0
#define HDR (8 + 64) /* u64 LE length + SHA-256 as hex */

/* The data's SHA-256 as 64 hex digits (guest/sha256.c, shared with the agent). */
static void sha256_hex(const uint8_t *data, size_t n, char out[65])
{
	uint8_t d[32];
	sha256(data, n, d);
	for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
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
	fprintf(stderr, "usage: vsock-bench send BYTES ENDPOINT | recv ENDPOINT | echo-send BYTES ENDPOINT | echo ENDPOINT\n"
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

/* The sender's data (xorshift64 words, little endian), its header (u64 LE length + SHA-256
 * hex) and digest, all made before the clock starts. */
static uint8_t *make_data(uint64_t bytes, uint8_t hdr[HDR], char sha[65])
{
	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data) die("malloc");
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (uint64_t i = 0; i < bytes; i++) {
		if ((i & 7) == 0) x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		data[i] = (uint8_t)(x >> (8 * (i & 7)));
	}
	sha256_hex(data, bytes, sha);
	for (int i = 0; i < 8; i++) hdr[i] = (uint8_t)(bytes >> (8 * i));
	memcpy(hdr + 8, sha, 64);
	return data;
}

/* The header's length, refused above 4 GiB (a corrupt header must not make us allocate it). */
static uint64_t header_bytes(const uint8_t hdr[HDR])
{
	uint64_t bytes = 0;
	for (int i = 0; i < 8; i++) bytes |= (uint64_t)hdr[i] << (8 * i);
	if (bytes > (1ull << 32)) { fprintf(stderr, "vsock-bench: refusing %llu bytes\n", (unsigned long long)bytes); exit(1); }
	return bytes;
}

static void do_send(uint64_t bytes, int fd)
{
	uint8_t hdr[HDR];
	char mine[65], peer[65] = "";
	uint8_t *data = make_data(bytes, hdr, mine);
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
	uint8_t hdr[HDR];
	char peer[65];
	if (read_full(fd, hdr, sizeof hdr) != sizeof hdr) { fprintf(stderr, "vsock-bench: short header\n"); exit(1); }
	double t0 = now();
	uint64_t bytes = header_bytes(hdr);
	memcpy(peer, hdr + 8, 64), peer[64] = 0;
	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data) die("malloc");
	size_t got = read_full(fd, data, bytes);
	double secs = now() - t0;
	if (got != bytes) { fprintf(stderr, "vsock-bench: EOF after %zu of %llu bytes\n", got, (unsigned long long)bytes); exit(1); }
	write_all(fd, "A", 1);
	char mine[65];
	sha256_hex(data, bytes, mine);
	char line[66];
	snprintf(line, sizeof line, "%s\n", mine);
	write_all(fd, line, 65);
	/* The peer closes first once it has our digest, so our close loses nothing. */
	char c;
	(void)read(fd, &c, 1);
	close(fd);
	report("recv", bytes, secs, mine, peer);
}

/* Host end of the echo: writes header + data and reads the echo back in one poll loop. */
static void do_echo_send(uint64_t bytes, int fd)
{
	uint8_t hdr[HDR];
	char mine[65], peer[65];
	uint8_t *data = make_data(bytes, hdr, mine);
	uint64_t total = HDR + bytes;
	uint8_t *back = malloc(total);
	if (!back) die("malloc");
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
	uint64_t sent = 0, got = 0;
	double t0 = now();
	while (got < total) {
		struct pollfd p = { .fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0) };
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR) continue;
			die("poll");
		}
		if (sent < total && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
			const uint8_t *src = sent < HDR ? hdr + sent : data + (sent - HDR);
			uint64_t left = sent < HDR ? HDR - sent : total - sent;
			ssize_t r = write(fd, src, left < CHUNK ? left : CHUNK);
			if (r < 0 && errno != EAGAIN && errno != EINTR) die("write");
			if (r > 0) sent += (uint64_t)r;
		}
		if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
			ssize_t r = read(fd, back + got, total - got < CHUNK ? total - got : CHUNK);
			if (r < 0 && errno != EAGAIN && errno != EINTR) die("read");
			if (r == 0) { fprintf(stderr, "vsock-bench: EOF after %llu of %llu echoed bytes\n", (unsigned long long)got, (unsigned long long)total); exit(1); }
			if (r > 0) got += (uint64_t)r;
		}
	}
	double secs = now() - t0;
	sha256_hex(back + HDR, bytes, peer);
	int same = memcmp(back, hdr, HDR) == 0 && memcmp(back + HDR, data, bytes) == 0;
	close(fd);
	/* A byte-exact mismatch with a matching digest cannot happen; report it as a mismatch anyway. */
	report("echo-send", bytes, secs, mine, same ? peer : "mismatch");
}

/* Guest end of the echo: returns every byte as it comes, then checks the digest it was sent. */
static void do_echo(int fd)
{
	uint8_t hdr[HDR];
	char peer[65], mine[65];
	if (read_full(fd, hdr, sizeof hdr) != sizeof hdr) { fprintf(stderr, "vsock-bench: short header\n"); exit(1); }
	uint64_t bytes = header_bytes(hdr);
	memcpy(peer, hdr + 8, 64), peer[64] = 0;
	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data) die("malloc");
	double t0 = now();
	write_all(fd, hdr, sizeof hdr);
	for (uint64_t off = 0; off < bytes;) {
		ssize_t r = read(fd, data + off, bytes - off < CHUNK ? bytes - off : CHUNK);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) die("read");
		if (r == 0) { fprintf(stderr, "vsock-bench: EOF after %llu of %llu bytes\n", (unsigned long long)off, (unsigned long long)bytes); exit(1); }
		write_all(fd, data + off, (size_t)r);
		off += (uint64_t)r;
	}
	double secs = now() - t0;
	sha256_hex(data, bytes, mine);
	/* The peer closes once it has everything back, so our close loses nothing. */
	char c;
	(void)read(fd, &c, 1);
	close(fd);
	report("echo", bytes, secs, mine, peer);
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
	} else if (argc == 4 && strcmp(argv[1], "echo-send") == 0) {
		char *end;
		uint64_t bytes = strtoull(argv[2], &end, 10);
		if (*end) usage();
		do_echo_send(bytes, open_endpoint(argv[3]));
	} else if (argc == 3 && strcmp(argv[1], "echo") == 0) {
		do_echo(open_endpoint(argv[2]));
	}
	usage();
}
