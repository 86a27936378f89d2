/* The agent's eBPF side (docs/hypercall.md §7, docs/bpf.md): one long-lived process that
 * talks to the hypercall device, fetches program packages when the host rings its vsock
 * doorbell, checks them against the guest owner's policy, loads them with raw bpf(2),
 * attaches them, reports back, and forwards hint ring-buffer records in batches (one
 * hypercall per batch). It owns every BPF object it creates; it never interprets hints.
 * Layouts: hypercall.h (device), bpfpkg.h (package). The command channel (agent.c) is
 * separate: that this process stalls on a slow verifier never delays an exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/perf_event.h>
#include <linux/vm_sockets.h>

#include "bpfpkg.h"
#include "ebpf.h"
#include "hypercall.h"
#include "proto.h" /* get32/put32 */
#include "sha256.h"

#define MAX_LOADED 256
#define VERIFIER_LOG_SIZE (16u << 20)

static void blog(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tsvmm-agent: bpf: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tsvmm-agent: bpf: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* ---- device access: port I/O + /dev/mem, or a simulation over a Unix socket ---- */

static struct {
	int sim_fd; /* >= 0: registers are reached through the test socket */
	unsigned io;
	uint8_t *shm;
	uint32_t shm_size, h2g_off, h2g_size, g2h_off, g2h_size, g2h_seq;
} D = { .sim_fd = -1 };

static void xfer(const void *out, size_t olen, void *in, size_t ilen)
{
	for (size_t off = 0; off < olen;) {
		ssize_t n = write(D.sim_fd, (const uint8_t *)out + off, olen - off);
		if (n <= 0 && errno != EINTR)
			die("register socket: %s", n ? strerror(errno) : "closed");
		off += n > 0 ? (size_t)n : 0;
	}
	for (size_t off = 0; off < ilen;) {
		ssize_t n = read(D.sim_fd, (uint8_t *)in + off, ilen - off);
		if (n <= 0 && (n == 0 || errno != EINTR))
			die("register socket: %s", n ? strerror(errno) : "closed");
		off += n > 0 ? (size_t)n : 0;
	}
}

/* Simulated access: {u8 op (1 read, 2 write), u8 size 4, u16 offset, u32 value} -> u32. */
static uint32_t reg_rd(unsigned off)
{
	if (D.sim_fd < 0)
		return inl((unsigned short)(D.io + off));
	uint8_t m[8] = { 1, 4 }, r[4];
	put16(m + 2, (uint16_t)off);
	put32(m + 4, 0);
	xfer(m, 8, r, 4);
	return get32(r);
}

static void reg_wr(unsigned off, uint32_t v)
{
	if (D.sim_fd < 0) {
		outl(v, (unsigned short)(D.io + off));
		return;
	}
	uint8_t m[8] = { 2, 4 }, r[4];
	put16(m + 2, (uint16_t)off);
	put32(m + 4, v);
	xfer(m, 8, r, 4);
}

static uint32_t shm_rd(uint32_t off) { return __atomic_load_n((uint32_t *)(D.shm + off), __ATOMIC_ACQUIRE); }
static void shm_wr(uint32_t off, uint32_t v) { __atomic_store_n((uint32_t *)(D.shm + off), v, __ATOMIC_RELEASE); }

static void sleep_ms(uint32_t ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000 };
	while (nanosleep(&t, &t) < 0 && errno == EINTR) {
	}
}

/* Puts `len` bytes already in the g2h mailbox up for the host and performs `cmd`. */
static void g2h_post(uint32_t len)
{
	shm_wr(SHM_H_G2H_LEN, len);
	shm_wr(SHM_H_G2H_SEQ, ++D.g2h_seq);
}

/* A control hypercall: outl, then STATUS/RESULT. E_RATE means "not executed, retry in
 * RESULT ms" — waiting on it is back-off, not polling. */
static uint32_t hcall(uint32_t cmd, uint32_t *result)
{
	for (;;) {
		__asm__ volatile("" ::: "memory");
		reg_wr(HC_REG_COMMAND, cmd);
		uint32_t st = reg_rd(HC_REG_STATUS), r = reg_rd(HC_REG_RESULT);
		if (st == HC_E_RATE) {
			sleep_ms(r > 1000 ? 1000 : r);
			continue;
		}
		if (result)
			*result = r;
		return st;
	}
}

/* HINTS costs one exit: when the host took the message it copied g2h_seq into g2h_ack,
 * which we read from shared memory instead of from a register. Only a call that was not
 * taken (rate limit) reads STATUS. Returns 1 if the host took the batch. */
static int hcall_hints(void)
{
	for (;;) {
		__asm__ volatile("" ::: "memory");
		reg_wr(HC_REG_COMMAND, HC_HINTS);
		if (shm_rd(SHM_H_G2H_ACK) == D.g2h_seq)
			return 1;
		uint32_t st = reg_rd(HC_REG_STATUS), r = reg_rd(HC_REG_RESULT);
		if (st != HC_E_RATE) {
			blog("HINTS refused with status %u", st);
			return 0;
		}
		sleep_ms(r > 1000 ? 1000 : r);
	}
}

/* ---- kernel command line and policy ---- */

/* Copies the value of `key=` (a whole word of the command line) into out. */
static int cmdline_get(const char *cmdline, const char *key, char *out, size_t outsz)
{
	size_t kl = strlen(key);
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n' || *p == '\t')
			p++;
		size_t wl = strcspn(p, " \n\t");
		if (wl > kl && !strncmp(p, key, kl) && p[kl] == '=') {
			size_t vl = wl - kl - 1;
			if (vl >= outsz)
				vl = outsz - 1;
			memcpy(out, p + kl + 1, vl);
			out[vl] = 0;
			return 1;
		}
		p += wl;
	}
	return 0;
}

static char *read_small_file(const char *path, size_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *b = malloc(max + 1);
	size_t len = 0;
	ssize_t n;
	while (b && len < max && (n = read(fd, b + len, max - len)) > 0)
		len += (size_t)n;
	close(fd);
	if (b)
		b[len] = 0;
	return b;
}

static struct {
	int active; /* a list exists (file or command line): only listed digests load */
	int n;
	uint8_t d[256][32];
	char source[160];
} P;

static int hexval(int c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

/* Adds every 64-hex-digit word of `s` (separated by anything else) to the allow list. */
static void policy_add_words(char *s)
{
	for (char *p = s; *p;) {
		if (*p == '#') { /* comment to end of line */
			p += strcspn(p, "\n");
			continue;
		}
		size_t n = 0;
		while (hexval(p[n]) >= 0)
			n++;
		if (n == 64 && P.n < 256) {
			for (int i = 0; i < 32; i++)
				P.d[P.n][i] = (uint8_t)(hexval(p[2 * i]) << 4 | hexval(p[2 * i + 1]));
			P.n++;
		} else if (n) {
			blog("policy: ignoring '%.*s' (not a SHA-256 in hex)", (int)(n > 70 ? 70 : n), p);
		}
		p += n ? n : 1;
	}
}

static void policy_load(const char *cmdline, const char *allow_path)
{
	char val[4096];
	if (cmdline_get(cmdline, "tsvmm.allow", val, sizeof val)) {
		P.active = 1;
		policy_add_words(val);
		snprintf(P.source, sizeof P.source, "tsvmm.allow=");
	}
	char *f = read_small_file(allow_path, 1 << 20);
	if (f) {
		P.active = 1;
		policy_add_words(f);
		size_t l = strlen(P.source);
		snprintf(P.source + l, sizeof P.source - l, "%s%s", l ? " and " : "", allow_path);
		free(f);
	}
	if (P.active)
		blog("policy: %d allowed digest(s) from %s", P.n, P.source);
	else
		blog("policy: no allow list (%s, tsvmm.allow=): accepting every package", allow_path);
}

static int policy_allows(const uint8_t d[32])
{
	if (!P.active)
		return 1;
	for (int i = 0; i < P.n; i++)
		if (!memcmp(P.d[i], d, 32))
			return 1;
	return 0;
}

static void hex32(const uint8_t d[32], char out[65])
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

/* ---- package parsing (every check of docs/bpf.md) ---- */

struct pkg_map {
	char name[32];
	uint32_t type, key_size, value_size, max_entries, flags;
};

struct pkg_prog {
	char name[32];
	uint32_t prog_type, kind, insn_count, reloc_count;
	char attach[PKG_MAX_ATTACH + 1];
	const uint8_t *insns, *relocs;
};

struct pkg {
	char name[48], license[48];
	uint32_t nmaps, nprogs, hint_map;
	struct pkg_map maps[PKG_MAX_MAPS];
	struct pkg_prog progs[PKG_MAX_PROGS];
};

static int all_zero(const uint8_t *p, size_t n)
{
	while (n--)
		if (*p++)
			return 0;
	return 1;
}

/* A fixed NUL-padded field: 1..size-1 chars from `alphabet` (NULL: printable ASCII). */
static int fixed_str(const uint8_t *p, size_t size, const char *alphabet, char *out)
{
	size_t n = strnlen((const char *)p, size);
	if (n == 0 || n == size)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (alphabet ? !strchr(alphabet, p[i]) : (p[i] < 0x20 || p[i] > 0x7e))
			return 0;
	memcpy(out, p, n);
	out[n] = 0;
	return 1;
}

#define ALNUM "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#define BAD(...) do { snprintf(why, whysz, __VA_ARGS__); return -1; } while (0)

static uint32_t prog_type_of(uint32_t kind)
{
	switch (kind) {
	case AK_KPROBE: case AK_KRETPROBE: return BPF_PROG_TYPE_KPROBE;
	case AK_TRACEPOINT: return BPF_PROG_TYPE_TRACEPOINT;
	case AK_RAW_TRACEPOINT: return BPF_PROG_TYPE_RAW_TRACEPOINT;
	case AK_FENTRY: case AK_FEXIT: return BPF_PROG_TYPE_TRACING;
	}
	return 0;
}

static int pkg_parse(const uint8_t *b, uint32_t len, struct pkg *k, char *why, size_t whysz)
{
	if (len < PKG_HEADER_SIZE + PKG_DIGEST_SIZE)
		BAD("package of %u bytes is shorter than header + digest", len);
	if (memcmp(b + PH_MAGIC, PKG_MAGIC, 8))
		BAD("bad package magic");
	if (get16(b + PH_VERSION) != PKG_VERSION || get16(b + PH_HEADER_SIZE) != PKG_HEADER_SIZE)
		BAD("package version %u / header size %u not supported", get16(b + PH_VERSION), get16(b + PH_HEADER_SIZE));
	if (get32(b + PH_TOTAL_SIZE) != len)
		BAD("total_size %u but %u bytes received", get32(b + PH_TOTAL_SIZE), len);
	k->nmaps = get16(b + PH_MAP_COUNT);
	k->nprogs = get16(b + PH_PROG_COUNT);
	k->hint_map = get32(b + PH_HINT_MAP);
	if (k->nmaps > PKG_MAX_MAPS || k->nprogs < 1 || k->nprogs > PKG_MAX_PROGS)
		BAD("map_count %u / prog_count %u out of range", k->nmaps, k->nprogs);
	if (!all_zero(b + PH_RESERVED, 8))
		BAD("reserved header bytes are not zero");
	if (!fixed_str(b + PH_NAME, 48, ALNUM "_.-", k->name))
		BAD("bad package name");
	if (!fixed_str(b + PH_LICENSE, 48, NULL, k->license))
		BAD("bad license string");
	uint8_t d[32];
	sha256(b, len - PKG_DIGEST_SIZE, d);
	if (memcmp(d, b + len - PKG_DIGEST_SIZE, 32))
		BAD("digest does not match the package bytes");
	uint32_t end = len - PKG_DIGEST_SIZE, off = PKG_HEADER_SIZE;

	for (uint32_t i = 0; i < k->nmaps; i++, off += PKG_MAP_SIZE) {
		if (end - off < PKG_MAP_SIZE)
			BAD("map %u runs past the end", i);
		const uint8_t *m = b + off;
		struct pkg_map *pm = &k->maps[i];
		if (!fixed_str(m + PM_NAME, 32, ALNUM "_.", pm->name))
			BAD("map %u: bad name", i);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(k->maps[j].name, pm->name))
				BAD("map name '%s' used twice", pm->name);
		pm->type = get32(m + PM_TYPE);
		pm->key_size = get32(m + PM_KEY_SIZE);
		pm->value_size = get32(m + PM_VALUE_SIZE);
		pm->max_entries = get32(m + PM_MAX_ENTRIES);
		pm->flags = get32(m + PM_FLAGS);
		if (!all_zero(m + PM_RESERVED, 12) || pm->max_entries == 0)
			BAD("map '%s': reserved bytes set or max_entries 0", pm->name);
		if (pm->type == BPF_MAP_TYPE_RINGBUF &&
		    (pm->key_size || pm->value_size || pm->max_entries % 4096 || (pm->max_entries & (pm->max_entries - 1))))
			BAD("ringbuf '%s': size %u must be a power of two multiple of 4096, no key/value", pm->name, pm->max_entries);
	}
	if (k->hint_map != PKG_NO_HINT_MAP && (k->hint_map >= k->nmaps || k->maps[k->hint_map].type != BPF_MAP_TYPE_RINGBUF))
		BAD("hint_map %u is not a ringbuf map of the package", k->hint_map);

	for (uint32_t i = 0; i < k->nprogs; i++) {
		if (end - off < PKG_PROG_HDR_SIZE)
			BAD("program %u runs past the end", i);
		const uint8_t *g = b + off;
		struct pkg_prog *pp = &k->progs[i];
		if (!fixed_str(g + PP_NAME, 32, ALNUM "_.", pp->name))
			BAD("program %u: bad name", i);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(k->progs[j].name, pp->name))
				BAD("program name '%s' used twice", pp->name);
		pp->prog_type = get32(g + PP_PROG_TYPE);
		pp->kind = get32(g + PP_ATTACH_KIND);
		uint32_t alen = get32(g + PP_ATTACH_LEN);
		pp->insn_count = get32(g + PP_INSN_COUNT);
		pp->reloc_count = get32(g + PP_RELOC_COUNT);
		uint32_t rsize = get32(g + PP_RECORD_SIZE);
		if (!all_zero(g + PP_RESERVED, 8))
			BAD("program '%s': reserved bytes set", pp->name);
		if (!prog_type_of(pp->kind) || prog_type_of(pp->kind) != pp->prog_type)
			BAD("program '%s': prog_type %u does not fit attach kind %u", pp->name, pp->prog_type, pp->kind);
		if (alen < 1 || alen > PKG_MAX_ATTACH || pp->insn_count < 1 || pp->insn_count > PKG_MAX_INSNS || pp->reloc_count > PKG_MAX_RELOCS)
			BAD("program '%s': attach_len %u / insn_count %u / reloc_count %u out of range", pp->name, alen, pp->insn_count, pp->reloc_count);
		uint32_t apad = (alen + 1 + 7) & ~7u;
		uint64_t want = (uint64_t)PKG_PROG_HDR_SIZE + apad + 8ull * pp->insn_count + 8ull * pp->reloc_count;
		if (rsize != want || want > end - off)
			BAD("program '%s': record_size %u, expected %llu within %u bytes left", pp->name, rsize, (unsigned long long)want, end - off);
		const uint8_t *a = g + PP_ATTACH;
		if (memchr(a, 0, alen) || !all_zero(a + alen, apad - alen))
			BAD("program '%s': attach string is not NUL-padded", pp->name);
		for (uint32_t j = 0; j < alen; j++)
			if (a[j] < 0x21 || a[j] > 0x7e)
				BAD("program '%s': attach string has non-printable bytes", pp->name);
		memcpy(pp->attach, a, alen);
		pp->attach[alen] = 0;
		pp->insns = a + apad;
		pp->relocs = pp->insns + 8ull * pp->insn_count;
		/* Each LD_IMM64 whole; a pseudo source register only where a relocation puts a
		 * map fd: otherwise a package could name one of the agent's own fds. */
		uint8_t *relocated = calloc(pp->insn_count, 1);
		if (!relocated)
			BAD("out of memory");
		for (uint32_t r = 0; r < pp->reloc_count; r++) {
			const uint8_t *rl = pp->relocs + 8ull * r;
			uint32_t at = get32(rl), map = get16(rl + 4), kind = get16(rl + 6);
			const uint8_t *ins = at < pp->insn_count ? pp->insns + 8ull * at : NULL;
			if (!ins || at + 1 >= pp->insn_count || ins[0] != (BPF_LD | BPF_IMM | BPF_DW) || (ins[1] >> 4) != kind ||
			    (kind != RK_MAP_FD && kind != RK_MAP_VALUE) || map >= k->nmaps || relocated[at]) {
				free(relocated);
				BAD("program '%s': relocation %u (insn %u, map %u, kind %u) is invalid", pp->name, r, at, map, kind);
			}
			relocated[at] = 1;
		}
		for (uint32_t j = 0; j < pp->insn_count; j++) {
			const uint8_t *ins = pp->insns + 8ull * j;
			if (ins[0] != (BPF_LD | BPF_IMM | BPF_DW))
				continue;
			if (j + 1 >= pp->insn_count || ((ins[1] >> 4) && !relocated[j])) {
				free(relocated);
				BAD("program '%s': LD_IMM64 at %u is cut off or has an unrelocated pseudo source", pp->name, j);
			}
			j++;
		}
		free(relocated);
		off += rsize;
	}
	if (off != end)
		BAD("%u stray bytes before the digest", end - off);
	return 0;
}

/* ---- loading and attaching ---- */

struct ring {
	int fd; /* the map fd (not owned: closed with the maps) */
	uint8_t *cons, *prod, *data;
	size_t size, page;
};

struct loaded {
	uint32_t handle;
	char name[48];
	uint32_t nmaps, nprogs;
	int map_fds[PKG_MAX_MAPS], prog_fds[PKG_MAX_PROGS], link_fds[PKG_MAX_PROGS];
	uint32_t prog_ids[PKG_MAX_PROGS];
	struct ring ring;
};

/* The outcome of one request, as REPORT carries it. */
struct result {
	uint32_t outcome, err;
	char *text; /* malloc, may be NULL */
	size_t text_len;
};

static void set_result(struct result *r, uint32_t outcome, int err, const char *fmt, ...)
{
	va_list ap;
	char buf[1024];
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	r->outcome = outcome;
	r->err = (uint32_t)err;
	free(r->text);
	r->text = strdup(buf);
	r->text_len = n < 0 ? 0 : strlen(buf);
}

static long sys_bpf(int cmd, union bpf_attr *a) { return syscall(SYS_bpf, cmd, a, sizeof *a); }

static int epfd = -1;

static void unload(struct loaded *l)
{
	if (l->ring.fd >= 0) {
		epoll_ctl(epfd, EPOLL_CTL_DEL, l->ring.fd, NULL);
		munmap(l->ring.cons, l->ring.page);
		munmap(l->ring.prod, l->ring.page + 2 * l->ring.size);
	}
	for (uint32_t i = 0; i < l->nprogs; i++) {
		if (l->link_fds[i] >= 0)
			close(l->link_fds[i]); /* closing the perf event / link detaches */
		close(l->prog_fds[i]);
	}
	for (uint32_t i = 0; i < l->nmaps; i++)
		close(l->map_fds[i]);
	free(l);
}

static const char *tracefs(void)
{
	static const char *dirs[] = { "/sys/kernel/tracing", "/sys/kernel/debug/tracing" };
	static int tried_mount;
	for (;;) {
		for (int i = 0; i < 2; i++) {
			char p[64];
			snprintf(p, sizeof p, "%s/events", dirs[i]);
			if (access(p, F_OK) == 0)
				return dirs[i];
		}
		/* A minimal guest init may not have mounted it. */
		if (tried_mount++ || mount("tracefs", dirs[0], "tracefs", 0, NULL) < 0)
			return dirs[0];
	}
}

static int read_uint_file(const char *path, long *out)
{
	char *s = read_small_file(path, 64);
	if (!s)
		return -1;
	char *end;
	*out = strtol(s, &end, 10);
	int ok = end != s;
	free(s);
	return ok ? 0 : -1;
}

static int perf_open(struct perf_event_attr *attr)
{
	attr->size = sizeof *attr;
	/* pid -1, cpu 0: a BPF program on a tracepoint or kprobe event fires on every CPU. */
	return (int)syscall(SYS_perf_event_open, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
}

/* Attaches prog_fd; returns the fd that keeps it attached, or -1 with r set. */
static int attach(const struct pkg_prog *g, int prog_fd, struct result *r)
{
	struct perf_event_attr pa = { 0 };
	union bpf_attr a;
	int fd;
	switch (g->kind) {
	case AK_TRACEPOINT: {
		char path[700];
		long id;
		if (!strchr(g->attach, '/') || strstr(g->attach, ".."))
			return set_result(r, OUT_FAILED, EINVAL, "tracepoint '%s' is not category/name", g->attach), -1;
		snprintf(path, sizeof path, "%s/events/%s/id", tracefs(), g->attach);
		if (read_uint_file(path, &id) < 0)
			return set_result(r, OUT_FAILED, errno, "tracepoint %s: %s: %s", g->attach, path, strerror(errno)), -1;
		pa.type = PERF_TYPE_TRACEPOINT;
		pa.config = (uint64_t)id;
		pa.sample_period = 1;
		pa.wakeup_events = 1;
		fd = perf_open(&pa);
		break;
	}
	case AK_KPROBE:
	case AK_KRETPROBE: {
		long type, bit = 0;
		if (read_uint_file("/sys/bus/event_source/devices/kprobe/type", &type) < 0)
			return set_result(r, OUT_FAILED, errno, "kprobe PMU not available: %s", strerror(errno)), -1;
		if (g->kind == AK_KRETPROBE) {
			char *f = read_small_file("/sys/bus/event_source/devices/kprobe/format/retprobe", 64);
			if (!f || sscanf(f, "config:%ld", &bit) != 1) { /* "config:0" */
				free(f);
				return set_result(r, OUT_FAILED, ENOTSUP, "kprobe PMU has no retprobe bit"), -1;
			}
			free(f);
		}
		pa.type = (uint32_t)type;
		pa.config = g->kind == AK_KRETPROBE ? 1ull << bit : 0;
		pa.config1 = (uint64_t)(uintptr_t)g->attach; /* kprobe_func */
		pa.config2 = 0;                              /* probe_offset */
		fd = perf_open(&pa);
		break;
	}
	case AK_RAW_TRACEPOINT:
	case AK_FENTRY:
	case AK_FEXIT:
		memset(&a, 0, sizeof a);
		a.raw_tracepoint.name = g->kind == AK_RAW_TRACEPOINT ? (uint64_t)(uintptr_t)g->attach : 0;
		a.raw_tracepoint.prog_fd = (uint32_t)prog_fd;
		fd = (int)sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &a);
		if (fd < 0)
			return set_result(r, OUT_FAILED, errno, "attach %s: BPF_RAW_TRACEPOINT_OPEN: %s", g->attach, strerror(errno)), -1;
		return fd;
	default:
		return set_result(r, OUT_FAILED, EINVAL, "unknown attach kind %u", g->kind), -1;
	}
	if (fd < 0)
		return set_result(r, OUT_FAILED, errno, "attach %s: perf_event_open: %s", g->attach, strerror(errno)), -1;
	if (ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd) < 0 || ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
		int e = errno;
		close(fd);
		return set_result(r, OUT_FAILED, e, "attach %s: PERF_EVENT_IOC_SET_BPF: %s", g->attach, strerror(e)), -1;
	}
	return fd;
}

/* fentry/fexit need the BTF id of the target function in vmlinux BTF. */
static int vmlinux_func_id(const char *fn)
{
	int fd = open("/sys/kernel/btf/vmlinux", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	struct stat st;
	uint8_t *b = fstat(fd, &st) == 0 ? malloc((size_t)st.st_size) : NULL;
	size_t len = 0;
	ssize_t n;
	while (b && len < (size_t)st.st_size && (n = read(fd, b + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	close(fd);
	int found = -1;
	struct btf_header h;
	if (!b || len < sizeof h)
		goto out;
	memcpy(&h, b, sizeof h);
	if (h.magic != BTF_MAGIC || (uint64_t)h.hdr_len + h.type_off + h.type_len > len || (uint64_t)h.hdr_len + h.str_off + h.str_len > len)
		goto out;
	const uint8_t *t = b + h.hdr_len + h.type_off, *tend = t + h.type_len;
	const char *strs = (const char *)b + h.hdr_len + h.str_off;
	for (int id = 1; t + sizeof(struct btf_type) <= tend; id++) {
		struct btf_type bt;
		memcpy(&bt, t, sizeof bt);
		uint32_t kind = BTF_INFO_KIND(bt.info), vlen = BTF_INFO_VLEN(bt.info);
		if (kind == BTF_KIND_FUNC && bt.name_off < h.str_len && !strcmp(strs + bt.name_off, fn)) {
			found = id;
			break;
		}
		size_t extra = 0;
		switch (kind) {
		case BTF_KIND_INT: extra = 4; break;
		case BTF_KIND_ARRAY: extra = sizeof(struct btf_array); break;
		case BTF_KIND_STRUCT: case BTF_KIND_UNION: extra = vlen * sizeof(struct btf_member); break;
		case BTF_KIND_ENUM: extra = vlen * sizeof(struct btf_enum); break;
		case BTF_KIND_FUNC_PROTO: extra = vlen * sizeof(struct btf_param); break;
		case BTF_KIND_VAR: extra = sizeof(struct btf_var); break;
		case BTF_KIND_DATASEC: extra = vlen * sizeof(struct btf_var_secinfo); break;
		case BTF_KIND_DECL_TAG: extra = sizeof(struct btf_decl_tag); break;
		case 19 /* BTF_KIND_ENUM64 */: extra = vlen * 12; break;
		}
		t += sizeof bt + extra;
	}
out:
	free(b);
	return found;
}

/* Loads one program: returns its fd, or -1 with r set (VERIFIER carries the full log). */
static int load_prog(const struct pkg *k, const struct pkg_prog *g, const int *map_fds, struct result *r)
{
	uint8_t *insns = malloc(8ull * g->insn_count);
	if (!insns)
		return set_result(r, OUT_FAILED, ENOMEM, "out of memory"), -1;
	memcpy(insns, g->insns, 8ull * g->insn_count);
	for (uint32_t i = 0; i < g->reloc_count; i++) {
		const uint8_t *rl = g->relocs + 8ull * i;
		put32(insns + 8ull * get32(rl) + 4, (uint32_t)map_fds[get16(rl + 4)]);
	}
	union bpf_attr a;
	memset(&a, 0, sizeof a);
	a.prog_type = g->prog_type;
	a.insns = (uint64_t)(uintptr_t)insns;
	a.insn_cnt = g->insn_count;
	a.license = (uint64_t)(uintptr_t)k->license;
	memcpy(a.prog_name, g->name, strnlen(g->name, BPF_OBJ_NAME_LEN - 1));
	if (g->kind == AK_FENTRY || g->kind == AK_FEXIT) {
		int id = vmlinux_func_id(g->attach);
		if (id < 0) {
			free(insns);
			return set_result(r, OUT_FAILED, ENOENT, "%s: no function '%s' in /sys/kernel/btf/vmlinux", g->name, g->attach), -1;
		}
		a.expected_attach_type = g->kind == AK_FENTRY ? BPF_TRACE_FENTRY : BPF_TRACE_FEXIT;
		a.attach_btf_id = (uint32_t)id;
	}
	/* Without a log first (a log slows loading and can fail a good program with ENOSPC);
	 * again with the biggest log on failure, so the report has the verifier's words. */
	int fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
	if (fd < 0) {
		int e = errno;
		char *log = malloc(VERIFIER_LOG_SIZE);
		if (log) {
			log[0] = 0;
			a.log_buf = (uint64_t)(uintptr_t)log;
			a.log_size = VERIFIER_LOG_SIZE;
			a.log_level = 1;
			fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
			if (fd < 0 && errno != ENOSPC)
				e = errno;
		}
		if (fd < 0) {
			r->outcome = OUT_VERIFIER;
			r->err = (uint32_t)e;
			free(r->text);
			size_t ll = log ? strnlen(log, VERIFIER_LOG_SIZE) : 0;
			char head[128];
			int hl = snprintf(head, sizeof head, "%s: BPF_PROG_LOAD: %s\n", g->name, strerror(e));
			r->text = malloc((size_t)hl + ll + 1);
			if (r->text) {
				memcpy(r->text, head, (size_t)hl);
				if (ll)
					memcpy(r->text + hl, log, ll);
				r->text_len = (size_t)hl + ll;
			} else
				r->text_len = 0;
		}
		free(log);
	}
	free(insns);
	return fd;
}

static int ring_map(struct ring *ring, int fd, uint32_t size, struct result *r)
{
	ring->page = (size_t)sysconf(_SC_PAGESIZE);
	ring->size = size;
	ring->cons = mmap(NULL, ring->page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	/* Producer page, then the data pages mapped twice in a row: a record that wraps
	 * around the end is still contiguous. */
	ring->prod = mmap(NULL, ring->page + 2 * (size_t)size, PROT_READ, MAP_SHARED, fd, (off_t)ring->page);
	if (ring->cons == MAP_FAILED || ring->prod == MAP_FAILED) {
		int e = errno;
		if (ring->cons != MAP_FAILED)
			munmap(ring->cons, ring->page);
		if (ring->prod != MAP_FAILED)
			munmap(ring->prod, ring->page + 2 * (size_t)size);
		return set_result(r, OUT_FAILED, e, "mmap of the hint ring buffer: %s", strerror(e)), -1;
	}
	ring->data = ring->prod + ring->page;
	ring->fd = fd;
	return 0;
}

static struct loaded *load_package(const struct pkg *k, uint32_t handle, struct result *r)
{
	struct loaded *l = calloc(1, sizeof *l);
	if (!l)
		return set_result(r, OUT_FAILED, ENOMEM, "out of memory"), NULL;
	l->handle = handle;
	l->ring.fd = -1;
	snprintf(l->name, sizeof l->name, "%s", k->name);
	for (uint32_t i = 0; i < k->nmaps; i++) {
		const struct pkg_map *m = &k->maps[i];
		union bpf_attr a;
		memset(&a, 0, sizeof a);
		a.map_type = m->type;
		a.key_size = m->key_size;
		a.value_size = m->value_size;
		a.max_entries = m->max_entries;
		a.map_flags = m->flags;
		memcpy(a.map_name, m->name, strnlen(m->name, BPF_OBJ_NAME_LEN - 1));
		int fd = (int)sys_bpf(BPF_MAP_CREATE, &a);
		if (fd < 0) {
			set_result(r, OUT_FAILED, errno, "map '%s' (type %u): BPF_MAP_CREATE: %s", m->name, m->type, strerror(errno));
			goto fail;
		}
		l->map_fds[l->nmaps++] = fd;
	}
	for (uint32_t i = 0; i < k->nprogs; i++) {
		l->link_fds[i] = -1;
		int fd = load_prog(k, &k->progs[i], l->map_fds, r);
		if (fd < 0)
			goto fail;
		l->prog_fds[l->nprogs++] = fd;
		struct bpf_prog_info info;
		union bpf_attr a;
		memset(&info, 0, sizeof info);
		memset(&a, 0, sizeof a);
		a.info.bpf_fd = (uint32_t)fd;
		a.info.info_len = sizeof info;
		a.info.info = (uint64_t)(uintptr_t)&info;
		if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0) {
			set_result(r, OUT_FAILED, errno, "%s: BPF_OBJ_GET_INFO_BY_FD: %s", k->progs[i].name, strerror(errno));
			goto fail;
		}
		l->prog_ids[i] = info.id;
	}
	/* Attach only when every program loaded: a package is all or nothing. */
	for (uint32_t i = 0; i < k->nprogs; i++)
		if ((l->link_fds[i] = attach(&k->progs[i], l->prog_fds[i], r)) < 0)
			goto fail;
	if (k->hint_map != PKG_NO_HINT_MAP) {
		if (ring_map(&l->ring, l->map_fds[k->hint_map], k->maps[k->hint_map].max_entries, r) < 0)
			goto fail;
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = l };
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, l->ring.fd, &ev) < 0) {
			set_result(r, OUT_FAILED, errno, "epoll on the hint ring buffer: %s", strerror(errno));
			munmap(l->ring.cons, l->ring.page);
			munmap(l->ring.prod, l->ring.page + 2 * l->ring.size);
			l->ring.fd = -1;
			goto fail;
		}
	}
	return l;
fail:
	unload(l);
	return NULL;
}

/* ---- hints: ring buffers -> one HINTS hypercall per batch ---- */

static struct {
	uint8_t *buf; /* private copy of the batch; copied to the mailbox when sent */
	uint32_t len, count, dropped;
} B;

static void batch_flush(void)
{
	if (B.count == 0 && B.dropped == 0)
		return;
	put32(B.buf, B.count);
	put32(B.buf + 4, B.dropped);
	memcpy(D.shm + D.g2h_off, B.buf, B.len);
	g2h_post(B.len);
	uint32_t sent = B.count;
	B.dropped = hcall_hints() ? 0 : B.dropped + sent;
	B.count = 0;
	B.len = HINTS_HDR;
}

/* Copies one ring-buffer sample as a hint record. The program wrote the record header
 * {type, len} itself; the agent checks only that it is consistent, not what it means. */
static void batch_add(const uint8_t *s, uint32_t size)
{
	uint32_t rlen = size >= RECORD_HDR ? get32(s + 4) : 0;
	if (rlen < RECORD_HDR || rlen > size) {
		B.dropped++;
		return;
	}
	uint32_t padded = (rlen + 7) & ~7u;
	if (HINTS_HDR + padded > D.g2h_size) {
		B.dropped++;
		return;
	}
	if (B.len + padded > D.g2h_size)
		batch_flush();
	memcpy(B.buf + B.len, s, rlen);
	memset(B.buf + B.len + rlen, 0, padded - rlen);
	B.len += padded;
	B.count++;
}

static void ring_drain(struct ring *r)
{
	uint64_t *consp = (uint64_t *)r->cons, *prodp = (uint64_t *)r->prod;
	uint64_t cons = __atomic_load_n(consp, __ATOMIC_ACQUIRE), mask = r->size - 1;
	for (;;) {
		uint64_t prod = __atomic_load_n(prodp, __ATOMIC_ACQUIRE);
		if (cons >= prod)
			return;
		while (cons < prod) {
			uint8_t *h = r->data + (cons & mask);
			uint32_t lw = __atomic_load_n((uint32_t *)h, __ATOMIC_ACQUIRE);
			if (lw & BPF_RINGBUF_BUSY_BIT)
				return; /* still being written: the next wake-up brings it */
			uint32_t len = lw & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
			if (!(lw & BPF_RINGBUF_DISCARD_BIT))
				batch_add(h + BPF_RINGBUF_HDR_SZ, len);
			cons += (len + BPF_RINGBUF_HDR_SZ + 7) & ~7ull;
			__atomic_store_n(consp, cons, __ATOMIC_RELEASE);
		}
	}
}

/* ---- requests ---- */

static struct loaded *L[MAX_LOADED];

static struct loaded **find(uint32_t handle)
{
	for (int i = 0; i < MAX_LOADED; i++)
		if (L[i] && L[i]->handle == handle)
			return &L[i];
	return NULL;
}

static void report(uint32_t id, const struct result *r, const struct loaded *l)
{
	uint32_t nprog = r->outcome == OUT_OK && l ? l->nprogs : 0;
	size_t room = D.g2h_size - REPORT_HDR - 4 * nprog, tl = r->text_len;
	const char *text = r->text ? r->text : "";
	if (tl > room) { /* keep the end: that is where the verifier says what failed */
		text += tl - room;
		tl = room;
	}
	uint8_t *m = D.shm + D.g2h_off;
	uint8_t hdr[REPORT_HDR];
	put32(hdr, id);
	put32(hdr + 4, r->outcome);
	put32(hdr + 8, r->err);
	put32(hdr + 12, nprog);
	put32(hdr + 16, (uint32_t)tl);
	put32(hdr + 20, 0);
	memcpy(m, hdr, REPORT_HDR);
	for (uint32_t i = 0; i < nprog; i++)
		put32(m + REPORT_HDR + 4 * i, l->prog_ids[i]);
	memcpy(m + REPORT_HDR + 4 * nprog, text, tl);
	g2h_post(REPORT_HDR + 4 * nprog + (uint32_t)tl);
	uint32_t st = hcall(HC_REPORT, NULL);
	if (st != HC_OK)
		blog("REPORT of request %u refused with status %u", id, st);
}

static void handle_request(const uint8_t *q, uint32_t len)
{
	struct result r = { 0 };
	struct loaded *l = NULL;
	if (len < REQ_BODY || get32(q + REQ_BODY_LEN) != len - REQ_BODY) {
		blog("ignoring a malformed request of %u bytes", len);
		return;
	}
	uint32_t op = get32(q + REQ_OP), id = get32(q + REQ_ID), handle = get32(q + REQ_HANDLE);
	const uint8_t *body = q + REQ_BODY;
	uint32_t blen = len - REQ_BODY;
	struct loaded **slot = find(handle);
	if (op == OP_UNLOAD) {
		if (!slot) {
			set_result(&r, OUT_NOENT, ENOENT, "no package loaded under handle %u", handle);
		} else {
			if ((*slot)->ring.fd >= 0)
				ring_drain(&(*slot)->ring); /* its last hints still go out */
			blog("unloaded handle %u (%s)", handle, (*slot)->name);
			unload(*slot);
			*slot = NULL;
			set_result(&r, OUT_OK, 0, "unloaded");
		}
	} else if (op == OP_LOAD || op == OP_REPLACE) {
		uint8_t d[32];
		char hex[65];
		static struct pkg k;
		char why[512];
		/* A package's identity is the SHA-256 of everything before its digest field:
		 * computed here, never taken from the host's word. */
		if (blen >= PKG_DIGEST_SIZE)
			sha256(body, blen - PKG_DIGEST_SIZE, d);
		hex32(d, hex);
		if (blen < PKG_HEADER_SIZE + PKG_DIGEST_SIZE) {
			set_result(&r, OUT_BADPKG, EINVAL, "package of %u bytes is too short", blen);
		} else if (op == OP_LOAD && slot) {
			set_result(&r, OUT_FAILED, EEXIST, "handle %u is already in use", handle);
		} else if (!policy_allows(d)) {
			set_result(&r, OUT_REFUSED, EPERM, "package digest %s is not in the guest's allow list (%s)", hex, P.source);
			blog("refused package %s (handle %u): digest not allowed", hex, handle);
		} else if (memcmp(d, body + blen - PKG_DIGEST_SIZE, 32) || memcmp(q + REQ_DIGEST, d, 32)) {
			set_result(&r, OUT_BADPKG, EINVAL, "package digest %s does not match its digest field or the request's", hex);
		} else if (pkg_parse(body, blen, &k, why, sizeof why) < 0) {
			set_result(&r, OUT_BADPKG, EINVAL, "%s", why);
		} else {
			int free_slot = -1;
			for (int i = 0; i < MAX_LOADED && free_slot < 0; i++)
				if (!L[i])
					free_slot = i;
			if (free_slot < 0 && !slot)
				set_result(&r, OUT_FAILED, ENOSPC, "%d packages loaded already", MAX_LOADED);
			else if ((l = load_package(&k, handle, &r))) {
				if (!P.active)
					blog("policy: accepted %s (%s) without an allow list", k.name, hex);
				if (slot) { /* REPLACE: the old programs go only now that the new ones run */
					if ((*slot)->ring.fd >= 0)
						ring_drain(&(*slot)->ring);
					unload(*slot);
					*slot = l;
				} else
					L[free_slot] = l;
				char ids[64 * 11] = "";
				for (uint32_t i = 0; i < l->nprogs; i++)
					snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%u", i ? "," : "", l->prog_ids[i]);
				blog("%s handle %u: %s (%s), prog ids %s", op == OP_LOAD ? "loaded" : "replaced", handle, k.name, hex, ids);
				set_result(&r, OUT_OK, 0, "%s: %u program(s), %u map(s)", k.name, k.nprogs, k.nmaps);
			} else
				blog("loading %s (handle %u) failed: outcome %u, errno %u", k.name, handle, r.outcome, r.err);
		}
	} else {
		set_result(&r, OUT_FAILED, EINVAL, "unknown request op %u", op);
	}
	batch_flush(); /* the g2h mailbox is about to carry the REPORT */
	report(id, &r, l);
	free(r.text);
}

static void fetch_all(void)
{
	uint8_t *copy = malloc(D.h2g_size);
	if (!copy)
		die("out of memory");
	for (;;) {
		uint32_t len;
		uint32_t st = hcall(HC_FETCH, &len);
		if (st != HC_OK) {
			blog("FETCH failed with status %u", st);
			break;
		}
		if (len == 0)
			break;
		if (len > D.h2g_size || shm_rd(SHM_H_H2G_LEN) != len) {
			blog("FETCH length %u does not fit the mailbox", len);
			break;
		}
		/* Work on a private copy: the policy check and the load must see the same bytes. */
		memcpy(copy, D.shm + D.h2g_off, len);
		handle_request(copy, len);
	}
	free(copy);
}

/* ---- set-up and the event loop ---- */

static void parse_spec(const char *spec, unsigned long *io, unsigned long *base, unsigned long *size, unsigned long *port)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", spec);
	for (char *save, *it = strtok_r(buf, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
		char *at = strchr(it, '@');
		if (!at)
			continue;
		*at = 0;
		char *colon = strchr(at + 1, ':');
		unsigned long a = strtoul(at + 1, NULL, 0), b = colon ? strtoul(colon + 1, NULL, 0) : 0;
		if (!strcmp(it, "io"))
			*io = a;
		else if (!strcmp(it, "mem") && colon)
			*base = a, *size = b;
		else if (!strcmp(it, "vsock"))
			*port = a;
	}
}

int ebpf_wanted(const struct ebpf_opts *o)
{
	if (o->sim)
		return 1;
	char *cmdline = read_small_file(o->cmdline_path, 65536);
	char v[256];
	int yes = cmdline && cmdline_get(cmdline, "tsvmm.hypercall", v, sizeof v);
	free(cmdline);
	return yes;
}

static void sun_path(struct sockaddr_un *a, const char *path)
{
	if (strlen(path) >= sizeof a->sun_path)
		die("socket path too long: %s", path);
	strcpy(a->sun_path, path);
}

static int listen_doorbell(const struct ebpf_opts *o, unsigned port, const char *sim_path)
{
	int fd;
	if (sim_path) {
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		sun_path(&a, sim_path);
		unlink(sim_path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4) < 0)
			die("doorbell socket %s: %s", sim_path, strerror(errno));
	} else {
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY };
		fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4) < 0)
			die("doorbell vsock port %u: %s", port, strerror(errno));
	}
	(void)o;
	return fd;
}

void ebpf_main(const struct ebpf_opts *o)
{
	char *cmdline = read_small_file(o->cmdline_path, 65536);
	if (!cmdline)
		cmdline = strdup("");
	unsigned long io = 0, base = 0, size = 0, port = 53;
	char spec[256], *sim_reg = NULL, *sim_shm = NULL, *sim_bell = NULL, simbuf[3 * 1100];
	int memfd;
	if (o->sim) { /* REGSOCK,SHMFILE,DOORBELLSOCK */
		snprintf(simbuf, sizeof simbuf, "%s", o->sim);
		sim_reg = simbuf;
		sim_shm = strchr(sim_reg, ',');
		sim_bell = sim_shm ? strchr(sim_shm + 1, ',') : NULL;
		if (!sim_bell)
			die("--hc-sim wants REGSOCK,SHMFILE,DOORBELLSOCK");
		*sim_shm++ = 0;
		*sim_bell++ = 0;
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		sun_path(&a, sim_reg);
		D.sim_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (D.sim_fd < 0 || connect(D.sim_fd, (struct sockaddr *)&a, sizeof a) < 0)
			die("register socket %s: %s", sim_reg, strerror(errno));
	} else {
		if (!cmdline_get(cmdline, "tsvmm.hypercall", spec, sizeof spec))
			die("no tsvmm.hypercall= on the kernel command line");
		parse_spec(spec, &io, &base, &size, &port);
		if (!io || io + HC_IO_LEN > 0x10000)
			die("tsvmm.hypercall=%s: no usable io@ range", spec);
		if (ioperm(io, HC_IO_LEN, 1) < 0)
			die("ioperm(0x%lx): %s", io, strerror(errno));
		D.io = (unsigned)io;
	}
	if (reg_rd(HC_REG_MAGIC) != HC_MAGIC || reg_rd(HC_REG_VERSION) != HC_VERSION)
		die("no hypercall device (magic 0x%x, version %u)", reg_rd(HC_REG_MAGIC), reg_rd(HC_REG_VERSION));
	uint64_t rbase = reg_rd(HC_REG_SHM_BASE_LO) | (uint64_t)reg_rd(HC_REG_SHM_BASE_HI) << 32;
	D.shm_size = reg_rd(HC_REG_SHM_SIZE);
	unsigned rport = reg_rd(HC_REG_DOORBELL_PORT);
	if (!o->sim && (rbase != base || D.shm_size != size || rport != port))
		die("registers (mem 0x%llx:0x%x, vsock %u) disagree with the command line (%s)", (unsigned long long)rbase, D.shm_size, rport, spec);
	memfd = open(o->sim ? sim_shm : "/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	if (memfd < 0)
		die("open %s: %s", o->sim ? sim_shm : "/dev/mem", strerror(errno));
	D.shm = mmap(NULL, D.shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, o->sim ? 0 : (off_t)rbase);
	if (D.shm == MAP_FAILED)
		die("mmap of the shared memory: %s", strerror(errno));
	close(memfd);
	if (shm_rd(SHM_H_MAGIC) != SHM_MAGIC || shm_rd(SHM_H_VERSION) != SHM_VERSION)
		die("shared memory header: bad magic or version");
	D.h2g_off = shm_rd(SHM_H_H2G_OFF);
	D.h2g_size = shm_rd(SHM_H_H2G_SIZE);
	D.g2h_off = shm_rd(SHM_H_G2H_OFF);
	D.g2h_size = shm_rd(SHM_H_G2H_SIZE);
	if ((uint64_t)D.h2g_off + D.h2g_size > D.shm_size || (uint64_t)D.g2h_off + D.g2h_size > D.shm_size ||
	    D.g2h_size < REPORT_HDR + 4 * REPORT_MAX_PROGS + 64 || D.h2g_size < REQ_BODY)
		die("shared memory mailboxes out of bounds");
	D.g2h_seq = shm_rd(SHM_H_G2H_SEQ);
	B.buf = malloc(D.g2h_size);
	B.len = HINTS_HDR;
	if (!B.buf)
		die("out of memory");

	policy_load(cmdline, o->allow_path);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	/* Listen before HELLO: a doorbell rung before we listen would be lost. */
	int lfd = listen_doorbell(o, rport, o->sim ? sim_bell : NULL), bell = -1;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &lfd };
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);

	uint8_t *m = D.shm + D.g2h_off, hello[HELLO_HDR];
	const char *name = AGENT_VERSION;
	put32(hello, HC_VERSION);
	put32(hello + 4, (P.active ? HC_CAP_DIGEST_ALLOWLIST : 0) | HC_CAP_HINTS | HC_CAP_REPLACE);
	put32(hello + 8, (uint32_t)getpid());
	put32(hello + 12, (uint32_t)strlen(name));
	memcpy(m, hello, HELLO_HDR);
	memcpy(m + HELLO_HDR, name, strlen(name));
	g2h_post(HELLO_HDR + (uint32_t)strlen(name));
	uint32_t st = hcall(HC_HELLO, NULL);
	if (st != HC_OK)
		die("HELLO refused with status %u", st);
	blog("hypercall device up: shm %u KiB, doorbell %s%u", D.shm_size >> 10, o->sim ? "sim " : "vsock port ", rport);
	fetch_all();

	for (;;) {
		struct epoll_event evs[32];
		int n = epoll_wait(epfd, evs, 32, -1); /* no timeout: every wake-up has a cause */
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait: %s", strerror(errno));
		}
		int rang = 0;
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &lfd) {
				struct sockaddr_vm peer;
				socklen_t plen = sizeof peer;
				int c = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC | SOCK_NONBLOCK);
				if (c < 0)
					continue;
				if (!o->sim && peer.svm_cid != VMADDR_CID_HOST) { /* only the host rings */
					close(c);
					continue;
				}
				if (bell >= 0)
					close(bell); /* a new doorbell connection replaces the old one */
				bell = c;
				struct epoll_event e2 = { .events = EPOLLIN, .data.ptr = &bell };
				epoll_ctl(epfd, EPOLL_CTL_ADD, bell, &e2);
				rang = 1; /* the host may have rung before we accepted */
			} else if (p == &bell) {
				uint8_t buf[256];
				ssize_t r;
				while ((r = read(bell, buf, sizeof buf)) > 0)
					rang = 1;
				if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
					close(bell);
					bell = -1;
				}
			} else {
				ring_drain(&((struct loaded *)p)->ring);
			}
		}
		batch_flush(); /* one HINTS per wake-up, whatever the number of rings */
		if (rang)
			fetch_all();
	}
}
