/* tsvmm-hostile: a guest program that does its worst to the host, for the integration test
 * test/integration/hostile.test.ts (docs/security.md). Root in the guest, like an attacker
 * who owns the guest kernel's userspace. Each mode runs for SECONDS and prints one summary line.
 *
 *   hints SECONDS         floods the hypercall device with HINTS calls, each a full mailbox of
 *                         AFFINITY records (~8,000), ignoring E_RATE (no back-off)
 *   churn SECONDS PORT    opens, writes to and drops vsock connections to the host's port PORT
 *                         (and to a port nobody listens on) as fast as it can, 32 at a time
 *   reset SECONDS         unbinds and rebinds the virtio-mmio vsock device in a loop, and between
 *                         rebinds drives its registers by hand up to DRIVER_OK with a ring
 *                         outside guest RAM (the device must refuse it, the host log must not
 *                         grow per cycle); ends with the device bound again
 *   stream PORT BYTES     the legitimate client: sends BYTES of a fixed pseudo-random stream to
 *                         the host's port PORT (the host checks it byte for byte)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "hypercall.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* The legitimate stream's bytes: xorshift32 from a fixed seed, the host computes the same. */
static uint32_t stream_state = 0x9e3779b9u;
static uint8_t stream_byte(void)
{
	uint32_t x = stream_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	stream_state = x;
	return (uint8_t)x;
}

static int vsock_connect(unsigned port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port };
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
		return fd;
	if (fd >= 0)
		close(fd);
	return -1;
}

static int mode_stream(unsigned port, unsigned long long bytes)
{
	int fd = -1;
	for (int tries = 0; fd < 0 && tries < 100; tries++) {
		fd = vsock_connect(port);
		if (fd < 0)
			usleep(100000);
	}
	if (fd < 0) {
		printf("hostile: stream: connect to port %u failed: %s\n", port, strerror(errno));
		return 1;
	}
	static uint8_t buf[65536];
	unsigned long long sent = 0;
	while (sent < bytes) {
		size_t n = bytes - sent < sizeof buf ? (size_t)(bytes - sent) : sizeof buf;
		for (size_t i = 0; i < n; i++)
			buf[i] = stream_byte();
		for (size_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				printf("hostile: stream: write after %llu bytes: %s\n", sent + off, strerror(errno));
				return 1;
			}
			off += (size_t)w;
		}
		sent += n;
	}
	shutdown(fd, SHUT_WR);
	char c;
	while (read(fd, &c, 1) > 0) {
	}
	close(fd);
	printf("hostile: stream sent %llu bytes\n", sent);
	return 0;
}

static int mode_churn(double secs, unsigned port)
{
	unsigned long opened = 0, failed = 0;
	static char junk[8192];
	memset(junk, 'c', sizeof junk);
	double end = now() + secs;
	while (now() < end) {
		int fds[32];
		for (int i = 0; i < 32; i++) {
			fds[i] = vsock_connect(i % 8 == 7 ? port + 1000 : port); /* every 8th: nobody listens */
			if (fds[i] < 0) {
				failed++;
				continue;
			}
			opened++;
			if (write(fds[i], junk, (size_t)(1 + rand() % (int)sizeof junk)) < 0) {
			}
		}
		for (int i = 0; i < 32; i++) {
			if (fds[i] < 0)
				continue;
			if (i % 2) { /* abortive close: RST instead of SHUTDOWN */
				struct linger l = { 1, 0 };
				setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &l, sizeof l);
			}
			close(fds[i]);
		}
	}
	printf("hostile: churn opened %lu connections, %lu refused\n", opened, failed);
	return 0;
}

/* ---- the hypercall device, as the agent finds it ---- */

static int hc_open(unsigned *io, uint8_t **shm, uint32_t *size)
{
	char cmdline[4096] = { 0 };
	FILE *f = fopen("/proc/cmdline", "r");
	if (!f || !fgets(cmdline, sizeof cmdline, f))
		return -1;
	fclose(f);
	char *p = strstr(cmdline, "tsvmm.hypercall=io@");
	if (!p)
		return -1;
	*io = (unsigned)strtoul(p + strlen("tsvmm.hypercall=io@"), NULL, 0);
	if (ioperm(*io, HC_IO_LEN, 1) < 0)
		return -1;
	uint64_t base = inl((unsigned short)(*io + HC_REG_SHM_BASE_LO)) | (uint64_t)inl((unsigned short)(*io + HC_REG_SHM_BASE_HI)) << 32;
	*size = inl((unsigned short)(*io + HC_REG_SHM_SIZE));
	int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return -1;
	*shm = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
	close(fd);
	return *shm == MAP_FAILED ? -1 : 0;
}

static int mode_hints(double secs)
{
	unsigned io;
	uint8_t *shm;
	uint32_t size;
	if (hc_open(&io, &shm, &size) < 0) {
		printf("hostile: hints: no hypercall device: %s\n", strerror(errno));
		return 1;
	}
	uint32_t g2h_off, g2h_size;
	memcpy(&g2h_off, shm + SHM_H_G2H_OFF, 4);
	memcpy(&g2h_size, shm + SHM_H_G2H_SIZE, 4);
	uint8_t *m = shm + g2h_off;
	uint32_t n = (g2h_size - HINTS_HDR) / 64;
	/* A session of our own: HELLO first (the host would answer E_STATE otherwise). */
	static const char name[] = "hostile\ntsvmm: forged line\x1b[2J";
	put32(m, HC_VERSION);
	put32(m + 4, HC_CAP_HINTS);
	put32(m + 8, (uint32_t)getpid());
	put32(m + 12, sizeof name - 1);
	memcpy(m + HELLO_HDR, name, sizeof name - 1);
	put32(shm + SHM_H_G2H_LEN, HELLO_HDR + sizeof name - 1);
	outl(HC_HELLO, (unsigned short)(io + HC_REG_COMMAND));
	unsigned long calls = 0, taken = 0, refused = 0;
	double end = now() + secs;
	uint32_t seq = 0;
	while (now() < end) {
		put32(m, n);
		put32(m + 4, 0);
		for (uint32_t i = 0; i < n; i++) {
			uint8_t *r = m + HINTS_HDR + 64 * i;
			memset(r, 0, 64);
			put32(r, 1);       /* AFFINITY */
			put32(r + 4, 64);
			put32(r + 8, 1000 + i); /* tgid */
			put32(r + 12, 1000 + i); /* tid */
			memcpy(r + 16, "hostile", 7);
			r[32] = (uint8_t)(1u << (i % 2)); /* vCPU 0 or 1 */
		}
		put32(shm + SHM_H_G2H_LEN, HINTS_HDR + 64 * n);
		put32(shm + SHM_H_G2H_SEQ, ++seq);
		outl(HC_HINTS, (unsigned short)(io + HC_REG_COMMAND));
		calls++;
		if (inl((unsigned short)(io + HC_REG_STATUS)) == 0)
			taken++;
		else
			refused++;
	}
	printf("hostile: hints %lu calls of %u records, %lu taken, %lu refused\n", calls, n, taken, refused);
	return 0;
}

/* ---- the vsock device's virtio-mmio transport, by hand ---- */

static int vsock_platform_dev(char *name, size_t len)
{
	DIR *d = opendir("/sys/bus/virtio/devices");
	struct dirent *e;
	int found = -1;
	while (d && (e = readdir(d))) {
		char p[512], id[32] = { 0 }, link[512];
		snprintf(p, sizeof p, "/sys/bus/virtio/devices/%s/device", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		if (fgets(id, sizeof id, f) && strtoul(id, NULL, 0) == 0x13) {
			snprintf(p, sizeof p, "/sys/bus/virtio/devices/%s", e->d_name);
			ssize_t n = readlink(p, link, sizeof link - 1);
			if (n > 0) {
				link[n] = 0;
				char *end = strrchr(link, '/');
				if (end) {
					*end = 0;
					char *start = strrchr(link, '/');
					snprintf(name, len, "%s", start ? start + 1 : link);
					found = 0;
				}
			}
		}
		fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

static unsigned long iomem_base(const char *name)
{
	FILE *f = fopen("/proc/iomem", "r");
	char line[256];
	unsigned long base = 0;
	while (f && fgets(line, sizeof line, f))
		if (strstr(line, name))
			base = strtoul(line + strspn(line, " "), NULL, 16);
	if (f)
		fclose(f);
	return base;
}

static int sysfs_write(const char *path, const char *v)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, v, strlen(v));
	close(fd);
	return w < 0 ? -1 : 0;
}

/* virtio-mmio registers (the device's own register block, virtio 1.x §4.2.2). */
enum { R_STATUS = 0x070, R_DRV_FEAT = 0x020, R_DRV_FEAT_SEL = 0x024, R_QSEL = 0x030, R_QNUM = 0x038, R_QREADY = 0x044,
       R_QDESC_LO = 0x080, R_QDESC_HI = 0x084, R_QDRV_LO = 0x090, R_QDRV_HI = 0x094, R_QDEV_LO = 0x0a0, R_QDEV_HI = 0x0a4 };

static int mode_reset(double secs)
{
	char dev[512];
	if (vsock_platform_dev(dev, sizeof dev) < 0) {
		printf("hostile: reset: no vsock device\n");
		return 1;
	}
	unsigned long base = iomem_base(dev);
	unsigned long cycles = 0, pokes = 0;
	double end = now() + secs;
	while (now() < end) {
		sysfs_write("/sys/bus/platform/drivers/virtio-mmio/unbind", dev);
		/* Unbound, the register block is ours: DRIVER_OK with a ring outside RAM. */
		int fd = base ? open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC) : -1;
		volatile uint32_t *r = fd >= 0 ? mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base) : MAP_FAILED;
		if (fd >= 0)
			close(fd);
		if (r != MAP_FAILED) {
			for (int k = 0; k < 20; k++) {
				r[R_STATUS / 4] = 0;
				r[R_STATUS / 4] = 1 | 2;
				r[R_DRV_FEAT_SEL / 4] = 1;
				r[R_DRV_FEAT / 4] = 1; /* VIRTIO_F_VERSION_1 */
				r[R_DRV_FEAT_SEL / 4] = 0;
				r[R_DRV_FEAT / 4] = 0;
				r[R_STATUS / 4] = 1 | 2 | 8;
				r[R_QSEL / 4] = 0;
				r[R_QNUM / 4] = 64;
				r[R_QDESC_LO / 4] = 0;
				r[R_QDESC_HI / 4] = 0xfff00000u; /* far outside RAM */
				r[R_QDRV_LO / 4] = 0;
				r[R_QDRV_HI / 4] = 0xfff00000u;
				r[R_QDEV_LO / 4] = 0;
				r[R_QDEV_HI / 4] = 0xfff00000u;
				r[R_QREADY / 4] = 1;
				r[R_STATUS / 4] = 1 | 2 | 8 | 4;
				pokes++;
			}
			r[R_STATUS / 4] = 0;
			munmap((void *)r, 0x1000);
		}
		sysfs_write("/sys/bus/platform/drivers/virtio-mmio/bind", dev);
		cycles++;
	}
	printf("hostile: reset %lu unbind/bind cycles, %lu bad DRIVER_OKs (device %s at 0x%lx)\n", cycles, pokes, dev, base);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && !strcmp(argv[1], "hints"))
		return mode_hints(atof(argv[2]));
	if (argc >= 4 && !strcmp(argv[1], "churn"))
		return mode_churn(atof(argv[2]), (unsigned)atoi(argv[3]));
	if (argc >= 3 && !strcmp(argv[1], "reset"))
		return mode_reset(atof(argv[2]));
	if (argc >= 4 && !strcmp(argv[1], "stream"))
		return mode_stream((unsigned)atoi(argv[2]), strtoull(argv[3], NULL, 0));
	fprintf(stderr, "usage: tsvmm-hostile hints SECONDS | churn SECONDS PORT | reset SECONDS | stream PORT BYTES\n");
	return 2;
}
