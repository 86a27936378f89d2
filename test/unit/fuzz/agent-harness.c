/* Fuzz harness for the guest agent's parsing of host frames (guest/agent.c), built with
 * -fsanitize=address,undefined by test/unit/fuzz/agent-c.test.ts. It includes agent.c itself,
 * so the code under test is the agent's own, with the calls that would reach outside this
 * process redirected: fork fails (no command ever runs), files are created, renamed, opened
 * and removed only inside a private directory, alarm is off, and _exit (how the agent ends a
 * connection) returns to the harness through longjmp. Each case is one connection: a seeded
 * sequence of frames (valid HELLO most of the time, then requests with mutated payloads) is
 * written into a socketpair, then serve() runs on the other end. Everything a case allocates
 * is freed and every fd it opened is closed before the next one.
 *
 *   agent-fuzz CASES SEED     prints "FUZZ agent-c cases=N crashes=0 seed=0x..." at the end
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static jmp_buf fz_jmp;
static char fz_dir[64];
static unsigned long fz_files;

__attribute__((noreturn)) void fuzz_exit(int code) { longjmp(fz_jmp, 1 + (code & 0xff)); }
pid_t fuzz_fork(void) { errno = EAGAIN; return -1; }
unsigned int fuzz_alarm(unsigned int s) { (void)s; return 0; }

/* Allocations of the current case, freed when it ends (the agent relies on _exit to free). */
#define FZ_MAX_ALLOCS 65536
static void *fz_allocs[FZ_MAX_ALLOCS];
static size_t fz_nallocs;
static void fz_track(void *p)
{
	if (p && fz_nallocs < FZ_MAX_ALLOCS)
		fz_allocs[fz_nallocs++] = p;
}
static void fz_untrack(void *p)
{
	for (size_t i = fz_nallocs; i-- > 0;)
		if (fz_allocs[i] == p) {
			fz_allocs[i] = fz_allocs[--fz_nallocs];
			return;
		}
}
/* The connection's input buffer (HDR_SIZE + MAX_PAYLOAD) is the same for every case: one static
 * buffer (ASan still guards its ends) instead of a fresh 1 MiB mapping per case. */
static uint8_t fz_inbuf[(1u << 20) + 8];
static int fz_inbuf_used;
void *fuzz_malloc(size_t n)
{
	if (n == sizeof fz_inbuf && !fz_inbuf_used) {
		fz_inbuf_used = 1;
		return fz_inbuf;
	}
	void *p = malloc(n);
	fz_track(p);
	return p;
}
void *fuzz_calloc(size_t a, size_t b) { void *p = calloc(a, b); fz_track(p); return p; }
void *fuzz_realloc(void *o, size_t n)
{
	if (o)
		fz_untrack(o);
	void *p = realloc(o, n);
	fz_track(p ? p : o);
	return p;
}
void fuzz_free(void *p)
{
	if (p == fz_inbuf) {
		fz_inbuf_used = 0;
		return;
	}
	fz_untrack(p);
	free(p);
}

/* Files: whatever path the request names, they live in fz_dir. */
int fuzz_mkostemp(char *tmpl, int flags)
{
	size_t n = strlen(tmpl);
	if (n >= 6)
		snprintf(tmpl + n - 6, 7, "%06lu", fz_files++ % 1000000);
	char p[128];
	snprintf(p, sizeof p, "%s/put-%lu", fz_dir, fz_files);
	return open(p, O_RDWR | O_CREAT | O_TRUNC | flags, 0600);
}
int fuzz_rename(const char *a, const char *b) { (void)a; (void)b; return 0; }
/* PUT_MKDIRS: every directory "exists" already, or, one time in eight, cannot be made. */
int fuzz_mkdir(const char *p, mode_t m)
{
	(void)m;
	errno = strlen(p) % 8 ? EEXIST : EACCES;
	return -1;
}
int fuzz_unlink(const char *p) { (void)p; return 0; }
int fuzz_open(const char *path, int flags, ...)
{
	char p[128];
	if (strcmp(path, "/fuzz/small") != 0) {
		errno = ENOENT;
		return -1;
	}
	snprintf(p, sizeof p, "%s/small", fz_dir);
	return open(p, flags & ~(O_CREAT | O_TRUNC | O_WRONLY | O_RDWR));
}

#define fork fuzz_fork
#define alarm fuzz_alarm
#define _exit fuzz_exit
#define malloc fuzz_malloc
#define calloc fuzz_calloc
#define realloc fuzz_realloc
#define free fuzz_free
#define mkostemp fuzz_mkostemp
#define rename fuzz_rename
#define unlink fuzz_unlink
#define mkdir fuzz_mkdir
#define open fuzz_open
#define main agent_main
#include "../../../guest/agent.c"
#undef open
#undef mkdir
#undef unlink
#undef rename
#undef mkostemp
#undef free
#undef realloc
#undef calloc
#undef malloc
#undef _exit
#undef alarm
#undef fork
#undef main

/* ---- case generation (xorshift64*, seeded) ---- */

static uint64_t rs;
static uint32_t rnd(void)
{
	rs ^= rs >> 12;
	rs ^= rs << 25;
	rs ^= rs >> 27;
	return (uint32_t)((rs * 0x2545f4914f6cdd1dull) >> 32);
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }
static uint32_t edge(void)
{
	static const uint32_t e[] = { 0, 1, 2, 7, 8, 255, 256, 4095, 4096, 4097, 65535, 65536, 1u << 20, (1u << 20) + 1, 0x7fffffff, 0x80000000, 0xfffffff8, 0xffffffff };
	return below(4) ? e[below(sizeof e / sizeof e[0])] : rnd();
}

static uint8_t buf[4 << 20];
static size_t blen;

static void put_bytes(const void *p, size_t n)
{
	if (blen + n <= sizeof buf) {
		memcpy(buf + blen, p, n);
		blen += n;
	}
}
static void put_u32(uint32_t v) { uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) }; put_bytes(b, 4); }
static void put_u16(uint16_t v) { uint8_t b[2] = { (uint8_t)v, (uint8_t)(v >> 8) }; put_bytes(b, 2); }
static void put_str(const char *s, uint32_t len_field)
{
	put_u32(len_field);
	put_bytes(s, strlen(s));
}
static void some_str(void)
{
	if (!below(16)) { /* a long one, around the agent's limits */
		static char longs[MAX_PATH_LEN + 64];
		uint32_t n = below(2) ? MAX_PATH_LEN - 8 + below(16) : below(sizeof longs - 1);
		memset(longs, below(2) ? '/' : 'a', n);
		longs[n] = 0;
		put_str(longs, below(8) ? n : edge());
		return;
	}
	static const char *const s[] = { "", "/", "/fuzz/small", "/tmp/x", "a", "sh", "KEY=VALUE", "=x", "noequals", "a\0b", "/proc/self/status" };
	const char *v = s[below(sizeof s / sizeof s[0])];
	put_str(v, below(8) ? (uint32_t)strlen(v) : edge());
}

/* One frame: header (sometimes lying) + payload. */
static void frame(uint16_t type, void (*payload)(void))
{
	size_t at = blen;
	put_u16(type);
	put_u16(below(30) ? 0 : (uint16_t)rnd());
	put_u32(0);
	size_t start = blen;
	if (payload)
		payload();
	uint32_t len = (uint32_t)(blen - start);
	if (!below(20))
		len = edge();
	memcpy(buf + at + 4, (uint8_t[]){ (uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24) }, 4);
	/* Flip a few payload bytes now and then. */
	for (int k = below(6) ? 0 : 1 + below(4); k > 0 && blen > start; k--)
		buf[start + below((uint32_t)(blen - start))] = (uint8_t)rnd();
}

static void p_hello(void) { put_u32(below(10) ? PROTO_MAGIC : rnd()); put_u16(below(10) ? 1 : (uint16_t)rnd()); put_u16(below(10) ? 1 : (uint16_t)rnd()); }
static void p_ping(void) { put_u32(rnd()); put_u32(rnd()); }
static void p_exec(void)
{
	uint32_t argc = below(4) ? below(4) : edge(), envc = below(4) ? below(3) : edge();
	put_u32(below(8) ? 0 : rnd());
	put_u32(argc);
	put_u32(envc);
	some_str();
	for (uint32_t i = 0; i < argc && i < 8; i++)
		some_str();
	for (uint32_t i = 0; i < envc && i < 8; i++)
		some_str();
}
static void p_put(void) { put_u32(below(4) ? 0644 : rnd()); put_u32(below(8) ? below(2) /* 0 or PUT_MKDIRS */ : rnd()); some_str(); }
static void p_data(void)
{
	uint32_t n = below(4) ? below(200) : below(70000);
	for (uint32_t i = 0; i < n; i++)
		put_bytes((uint8_t[]){ (uint8_t)rnd() }, 1);
}
static uint64_t put_total;
static void p_put_end(void) { uint64_t t = below(4) ? put_total : ((uint64_t)rnd() << 32 | rnd()); put_u32((uint32_t)t); put_u32((uint32_t)(t >> 32)); }
static void p_get(void) { some_str(); }
static void p_u32(void) { put_u32(edge()); }

static void make_case(void)
{
	blen = 0;
	put_total = 0;
	if (below(10))
		frame(T_HELLO, p_hello);
	static const uint16_t types[] = { T_HELLO, T_PING, T_EXEC, T_STDIN, T_STDIN_EOF, T_SIGNAL, T_PUT, T_PUT_DATA, T_PUT_END, T_GET, 0x8001, 0x7777 };
	for (int n = 1 + below(5); n > 0; n--) {
		uint16_t t = below(6) ? types[below(sizeof types / sizeof types[0])] : (uint16_t)rnd();
		switch (t) {
		case T_HELLO: frame(t, p_hello); break;
		case T_PING: frame(t, p_ping); break;
		case T_EXEC: frame(t, p_exec); break;
		case T_PUT:
			frame(t, p_put);
			for (int k = below(4); k > 0; k--) {
				size_t before = blen;
				frame(T_PUT_DATA, p_data);
				put_total += blen - before - HDR_SIZE;
			}
			if (below(6))
				frame(T_PUT_END, p_put_end);
			break;
		case T_PUT_DATA: case T_STDIN: frame(t, p_data); break;
		case T_PUT_END: frame(t, p_put_end); break;
		case T_GET: frame(t, p_get); break;
		case T_SIGNAL: frame(t, p_u32); break;
		default: frame(t, below(2) ? p_data : NULL); break;
		}
	}
	if (!below(10) && blen > 0)
		blen = below((uint32_t)blen); /* cut short */
}

int main(int argc, char **argv)
{
	unsigned long cases = argc > 1 ? strtoul(argv[1], NULL, 0) : 1000;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 1;
	rs = seed ? seed : 1;
	signal(SIGPIPE, SIG_IGN);
	snprintf(fz_dir, sizeof fz_dir, "/tmp/tsvmm-agent-fuzz-%d", (int)getpid());
	if (mkdir(fz_dir, 0700) < 0)
		return 2;
	char small[128];
	snprintf(small, sizeof small, "%s/small", fz_dir);
	FILE *f = fopen(small, "w");
	if (!f)
		return 2;
	fputs("a small file for GET\n", f);
	fclose(f);
	int fd_floor = dup(0);
	close(fd_floor);
	time_t t0 = time(NULL);
	unsigned long outcomes[257] = { 0 };
	for (unsigned long i = 0; i < cases; i++) {
		make_case();
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
			return 3;
		if (blen > 200000) { /* the default buffers take the rest */
			int big = 2 << 20;
			setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
			setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
		}
		/* The host's bytes are queued before the agent reads; then the host hangs up. */
		for (size_t off = 0; off < blen;) {
			ssize_t w = write(sv[0], buf + off, blen - off);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		shutdown(sv[0], SHUT_WR);
		g_tmp_path = NULL;
		g_child = -1;
		int r = setjmp(fz_jmp);
		if (r == 0)
			serve(sv[1]);
		outcomes[r]++;
		fz_inbuf_used = 0;
		for (size_t k = 0; k < fz_nallocs; k++)
			free(fz_allocs[k]);
		fz_nallocs = 0;
		/* Every fd the case opened (its socket pair, 4 pipes, a file) goes. */
		for (int fd = fd_floor; fd < fd_floor + 32; fd++)
			close(fd);
		if (i % 100000 == 99999)
			fprintf(stderr, "agent-c: %lu cases\n", i + 1);
	}
	char cmd[160];
	snprintf(cmd, sizeof cmd, "rm -rf %s", fz_dir);
	if (system(cmd) != 0)
		return 4;
	printf("FUZZ agent-c cases=%lu crashes=0 seed=0x%llx ms=%ld ended-ok=%lu ended-error=%lu\n", cases, (unsigned long long)seed,
	       (long)(time(NULL) - t0) * 1000, outcomes[1], outcomes[2]);
	return 0;
}
