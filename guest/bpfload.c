/* Program packages in the guest: the parser (every check of docs/bpf.md), the loader
 * (raw bpf(2): maps, map-fd relocations, BPF_PROG_LOAD with the verifier log), the
 * attachers (tracepoint, kprobe, raw tracepoint, fentry/fexit) and the hint ring-buffer
 * mapping. Owns the BPF objects of one package at a time; never talks to the host
 * (ebpf.c does). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/perf_event.h>

#include "bpfload.h"
#include "hypercall.h" /* outcome codes */
#include "proto.h"     /* get16/get32/put32 */
#include "sha256.h"

#define VERIFIER_LOG_SIZE (16u << 20)

char *read_small_file(const char *path, size_t max)
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

/* ---- package parsing (every check of docs/bpf.md) ---- */

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

int pkg_parse(const uint8_t *b, uint32_t len, struct pkg *k, char *why, size_t whysz)
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

void set_result(struct result *r, uint32_t outcome, int err, const char *fmt, ...)
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

void unload(struct loaded *l, int epfd)
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

int map_update(struct loaded *l, const char *map, const uint8_t *key, uint32_t key_len, const uint8_t *value, uint32_t value_len,
	       uint64_t flags, struct result *r)
{
	for (uint32_t i = 0; i < l->nmaps; i++) {
		const struct pkg_map *m = &l->maps[i];
		if (strcmp(m->name, map))
			continue;
		if (m->type == BPF_MAP_TYPE_RINGBUF)
			return set_result(r, OUT_FAILED, EINVAL, "map '%s' is a ring buffer: no elements to write", map), -1;
		if (key_len != m->key_size || value_len != m->value_size)
			return set_result(r, OUT_FAILED, EINVAL, "map '%s' takes %u-byte keys and %u-byte values, got %u and %u", map, m->key_size,
					  m->value_size, key_len, value_len), -1;
		union bpf_attr a;
		memset(&a, 0, sizeof a);
		a.map_fd = (uint32_t)l->map_fds[i];
		a.key = (uint64_t)(uintptr_t)key;
		a.value = (uint64_t)(uintptr_t)value;
		a.flags = flags;
		if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a) < 0)
			return set_result(r, OUT_FAILED, errno, "map '%s': BPF_MAP_UPDATE_ELEM: %s", map, strerror(errno)), -1;
		return set_result(r, OUT_OK, 0, "map '%s' updated", map), 0;
	}
	return set_result(r, OUT_NOENT, ENOENT, "%s (handle %u) has no map '%s'", l->name, l->handle, map), -1;
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

struct loaded *load_package(const struct pkg *k, uint32_t handle, int epfd, struct result *r)
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
		l->maps[l->nmaps] = *m;
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
	unload(l, epfd);
	return NULL;
}

