/* The agent's eBPF side (docs/hypercall.md §7): one long-lived process that talks to the
 * hypercall device, fetches program packages when the host rings its vsock doorbell,
 * checks them against the guest owner's policy, has bpfload.c load and attach them,
 * reports back, and forwards hint ring-buffer records in batches (one hypercall per
 * batch), each run of records preceded by a SOURCE record naming the package whose ring
 * it came from (when the host reads them). It never interprets hints. Layouts: hypercall.h (device). The command channel
 * (agent.c) is another process: a slow verifier never delays an exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/vm_sockets.h>

#include "bpfload.h"
#include "bpfpkg.h"
#include "ebpf.h"
#include "hypercall.h"
#include "log.h"
#include "proto.h" /* get32/put32 */
#include "replay.h"
#include "sha256.h"

#define MAX_LOADED 256

#define blog(...) alog(AL_INFO, "bpf: " __VA_ARGS__)
#define bwarn(...) alog(AL_WARN, "bpf: " __VA_ARGS__)

static __attribute__((noreturn)) void vdie(int code, const char *fmt, va_list ap)
{
	char f[256];
	snprintf(f, sizeof f, "bpf: %s", fmt);
	valog(AL_ERR, f, ap);
	exit(code);
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vdie(1, fmt, ap);
}

/* No device to serve (or not ours to use): the supervisor does not restart us. */
static void nodev(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vdie(EBPF_EXIT_NO_DEVICE, fmt, ap);
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
			bwarn("HINTS refused with status %u", st);
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
			bwarn("policy: ignoring '%.*s' (not a SHA-256 in hex)", (int)(n > 70 ? 70 : n), p);
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

/* ---- hints: ring buffers -> one HINTS hypercall per batch ---- */

static struct {
	uint8_t *buf; /* private copy of the batch; copied to the mailbox when sent */
	uint32_t len, count, dropped;
	uint32_t hints;  /* records in `count` that are hints (not SOURCE): lost if the batch is refused */
	uint32_t source; /* handle the last SOURCE of this batch names; 0 (never a handle): none yet */
} B;

static int try_mode; /* --try-package: no device, hints printed on stdout */
static int replay_ok; /* load-time replay (replay.c): in a guest, not with --hc-sim on a test host */
static int sources;  /* the host reads SOURCE records (FEATURES) and HELLO said we send them */

static void batch_reset(void)
{
	B.count = B.hints = B.source = 0;
	B.len = HINTS_HDR;
}

static void batch_print(void)
{
	for (uint32_t off = HINTS_HDR; off < B.len;) {
		uint32_t len = get32(B.buf + off + 4);
		printf("hint type=%u len=%u:", get32(B.buf + off), len);
		for (uint32_t i = RECORD_HDR; i < len; i++)
			printf("%s%02x", i % 8 ? "" : " ", B.buf[off + i]);
		printf("\n");
		off += (len + 7) & ~7u;
	}
	if (B.dropped)
		printf("hints dropped: %u\n", B.dropped);
	fflush(stdout);
	B.dropped = 0;
	batch_reset();
}

static void batch_flush(void)
{
	if (B.count == 0 && B.dropped == 0)
		return;
	if (try_mode)
		return batch_print();
	put32(B.buf, B.count);
	put32(B.buf + 4, B.dropped);
	memcpy(D.shm + D.g2h_off, B.buf, B.len);
	g2h_post(B.len);
	B.dropped = hcall_hints() ? 0 : B.dropped + B.hints;
	batch_reset();
}

/* Copies one ring-buffer sample of `handle`'s package as a hint record, after a SOURCE
 * record when the batch's last one names another handle (or none). The program wrote the
 * record header {type, len} itself; the agent checks only that it is consistent, not what it
 * means — and that it does not claim type 0, which would relabel the records after it. */
static void batch_add(const uint8_t *s, uint32_t size, uint32_t handle)
{
	uint32_t rlen = size >= RECORD_HDR ? get32(s + 4) : 0;
	if (rlen < RECORD_HDR || rlen > size || get32(s) == SOURCE_TYPE) {
		B.dropped++;
		return;
	}
	uint32_t padded = (rlen + 7) & ~7u, src = sources ? SOURCE_LEN : 0;
	if (HINTS_HDR + src + padded > D.g2h_size) {
		B.dropped++;
		return;
	}
	if (B.len + (B.source == handle ? 0 : src) + padded > D.g2h_size)
		batch_flush();
	if (sources && B.source != handle) {
		put32(B.buf + B.len, SOURCE_TYPE);
		put32(B.buf + B.len + 4, SOURCE_LEN);
		put32(B.buf + B.len + 8, handle);
		put32(B.buf + B.len + 12, 0);
		B.len += SOURCE_LEN;
		B.count++;
		B.source = handle;
	}
	memcpy(B.buf + B.len, s, rlen);
	memset(B.buf + B.len + rlen, 0, padded - rlen);
	B.len += padded;
	B.count++;
	B.hints++;
}

static void ring_drain(const struct loaded *l)
{
	const struct ring *r = &l->ring;
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
				batch_add(h + BPF_RINGBUF_HDR_SZ, len, l->handle);
			cons += (len + BPF_RINGBUF_HDR_SZ + 7) & ~7ull;
			__atomic_store_n(consp, cons, __ATOMIC_RELEASE);
		}
	}
}

/* ---- requests ---- */

static int epfd = -1;
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
		bwarn("REPORT of request %u refused with status %u", id, st);
}

static void handle_request(const uint8_t *q, uint32_t len)
{
	struct result r = { 0 };
	struct loaded *l = NULL;
	if (len < REQ_BODY || get32(q + REQ_BODY_LEN) != len - REQ_BODY) {
		bwarn("ignoring a malformed request of %u bytes", len);
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
				ring_drain(*slot); /* its last hints still go out */
			blog("unloaded handle %u (%s)", handle, (*slot)->name);
			unload(*slot, epfd);
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
			bwarn("refused package %s (handle %u): digest not allowed", hex, handle);
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
			else if ((l = load_package(&k, handle, epfd, &r))) {
				if (!P.active)
					blog("policy: accepted %s (%s) without an allow list", k.name, hex);
				if (slot) { /* REPLACE: the old programs go only now that the new ones run */
					if ((*slot)->ring.fd >= 0)
						ring_drain(*slot);
					unload(*slot, epfd);
					*slot = l;
				} else
					L[free_slot] = l;
				char ids[64 * 11] = "";
				for (uint32_t i = 0; i < l->nprogs; i++)
					snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%u", i ? "," : "", l->prog_ids[i]);
				blog("%s handle %u: %s (%s), prog ids %s", op == OP_LOAD ? "loaded" : "replaced", handle, k.name, hex, ids);
				/* Tasks that set their state before the program was attached (§4.2). */
				struct replay_counts rc = replay_tasks(replay_ok ? replay_wanted(&k) : 0);
				if (rc.affinity || rc.scheduler)
					blog("replayed %u affinity and %u real-time setting(s) of %u tasks into %s", rc.affinity, rc.scheduler, rc.tasks, k.name);
				set_result(&r, OUT_OK, 0, "%s: %u program(s), %u map(s); replayed %u affinity and %u real-time setting(s)", k.name, k.nprogs, k.nmaps,
					   rc.affinity, rc.scheduler);
			} else
				bwarn("loading %s (handle %u) failed: outcome %u, errno %u", k.name, handle, r.outcome, r.err);
		}
	} else if (op == OP_MAP_UPDATE) {
		char map[REQ_NAME_LEN + 1];
		memcpy(map, q + REQ_NAME, REQ_NAME_LEN);
		map[REQ_NAME_LEN] = 0;
		uint32_t kl = blen >= MU_DATA ? get32(body + MU_KEY_LEN) : 0, vl = blen >= MU_DATA ? get32(body + MU_VALUE_LEN) : 0;
		/* Sizes from the host are checked against the body, then against the map itself. */
		if (blen < MU_DATA || (uint64_t)MU_DATA + kl + vl != blen)
			set_result(&r, OUT_FAILED, EINVAL, "MAP_UPDATE body of %u bytes does not hold a %u-byte key and a %u-byte value", blen, kl, vl);
		else if (!slot)
			set_result(&r, OUT_NOENT, ENOENT, "no package loaded under handle %u", handle);
		else if (map_update(*slot, map, body + MU_DATA, kl, body + MU_DATA + kl, vl, get64(body + MU_FLAGS), &r) == 0)
			blog("handle %u (%s): map %s updated", handle, (*slot)->name, map);
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
			bwarn("FETCH failed with status %u", st);
			break;
		}
		if (len == 0)
			break;
		if (len > D.h2g_size || shm_rd(SHM_H_H2G_LEN) != len) {
			bwarn("FETCH length %u does not fit the mailbox", len);
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
			nodev("--hc-sim wants REGSOCK,SHMFILE,DOORBELLSOCK");
		*sim_shm++ = 0;
		*sim_bell++ = 0;
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		sun_path(&a, sim_reg);
		D.sim_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (D.sim_fd < 0 || connect(D.sim_fd, (struct sockaddr *)&a, sizeof a) < 0)
			die("register socket %s: %s", sim_reg, strerror(errno));
	} else {
		if (!cmdline_get(cmdline, "tsvmm.hypercall", spec, sizeof spec))
			nodev("no tsvmm.hypercall= on the kernel command line");
		parse_spec(spec, &io, &base, &size, &port);
		if (!io || io + HC_IO_LEN > 0x10000)
			nodev("tsvmm.hypercall=%s: no usable io@ range", spec);
		if (ioperm(io, HC_IO_LEN, 1) < 0)
			nodev("ioperm(0x%lx): %s", io, strerror(errno));
		D.io = (unsigned)io;
	}
	if (reg_rd(HC_REG_MAGIC) != HC_MAGIC || reg_rd(HC_REG_VERSION) != HC_VERSION)
		nodev("no hypercall device (magic 0x%x, version %u)", reg_rd(HC_REG_MAGIC), reg_rd(HC_REG_VERSION));
	uint64_t rbase = reg_rd(HC_REG_SHM_BASE_LO) | (uint64_t)reg_rd(HC_REG_SHM_BASE_HI) << 32;
	D.shm_size = reg_rd(HC_REG_SHM_SIZE);
	unsigned rport = reg_rd(HC_REG_DOORBELL_PORT);
	if (!o->sim && (rbase != base || D.shm_size != size || rport != port))
		nodev("registers (mem 0x%llx:0x%x, vsock %u) disagree with the command line (%s)", (unsigned long long)rbase, D.shm_size, rport, spec);
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
	batch_reset();
	if (!B.buf)
		die("out of memory");

	policy_load(cmdline, o->allow_path);
	/* A simulated device means a test on some host: its tasks are not ours to touch. */
	replay_ok = !o->sim;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	/* Listen before HELLO: a doorbell rung before we listen would be lost. */
	int lfd = listen_doorbell(o, rport, o->sim ? sim_bell : NULL), bell = -1;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &lfd };
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);

	uint8_t *m = D.shm + D.g2h_off, hello[HELLO_HDR];
	const char *name = AGENT_VERSION;
	/* An older host does not know SOURCE records: it would take them for hints. */
	sources = (reg_rd(HC_REG_FEATURES) & HC_FEAT_HINT_SOURCE) != 0;
	put32(hello, HC_VERSION);
	put32(hello + 4, (P.active ? HC_CAP_DIGEST_ALLOWLIST : 0) | HC_CAP_HINTS | HC_CAP_REPLACE | (sources ? HC_CAP_HINT_SOURCE : 0));
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
				struct sockaddr_vm peer = { .svm_cid = VMADDR_CID_ANY };
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
				ring_drain(p);
			}
		}
		batch_flush(); /* one HINTS per wake-up, whatever the number of rings */
		if (rang)
			fetch_all();
	}
}

/* Loads a package file without a host, prints the outcome and the hint records it
 * produces for `seconds`, then unloads it: a researcher's way to try a program in a guest
 * by hand, and how the loader is checked on a real guest kernel. */
int ebpf_try(const char *path, unsigned seconds)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size > (64 << 20))
		die("%s: %s", path, fd < 0 ? strerror(errno) : "too big");
	uint8_t *b = malloc((size_t)st.st_size + 1);
	ssize_t n = b ? read(fd, b, (size_t)st.st_size) : -1;
	close(fd);
	if (n != st.st_size)
		die("%s: short read", path);
	try_mode = 1;
	D.g2h_size = 1 << 20;
	B.buf = malloc(D.g2h_size);
	batch_reset();
	epfd = epoll_create1(EPOLL_CLOEXEC);
	static struct pkg k;
	char why[512], hex[65];
	uint8_t d[32];
	sha256(b, (size_t)n >= PKG_DIGEST_SIZE ? (size_t)n - PKG_DIGEST_SIZE : 0, d);
	hex32(d, hex);
	printf("package %s digest %s\n", path, hex);
	if (pkg_parse(b, (uint32_t)n, &k, why, sizeof why) < 0) {
		printf("BADPKG: %s\n", why);
		return 1;
	}
	struct result r = { 0 };
	struct loaded *l = load_package(&k, 1, epfd, &r);
	if (!l) {
		printf("%s errno=%u: %.*s\n", r.outcome == OUT_VERIFIER ? "VERIFIER" : "FAILED", r.err, (int)r.text_len, r.text ? r.text : "");
		return 1;
	}
	printf("OK %s: prog ids", k.name);
	for (uint32_t i = 0; i < l->nprogs; i++)
		printf(" %u", l->prog_ids[i]);
	printf("\n");
	fflush(stdout);
	time_t end = time(NULL) + seconds;
	for (time_t now; (now = time(NULL)) < end;) {
		struct epoll_event ev[8];
		int m = epoll_wait(epfd, ev, 8, (int)(end - now) * 1000);
		for (int i = 0; i < m; i++)
			ring_drain(ev[i].data.ptr);
		batch_flush();
	}
	if (l->ring.fd >= 0)
		ring_drain(l);
	batch_flush();
	unload(l, epfd);
	printf("unloaded\n");
	return 0;
}
