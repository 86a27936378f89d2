/* tsvmm-agent: the guest side of the host<->guest command channel. Listens on AF_VSOCK
 * (or a Unix socket for host-side tests), serves one request per connection: exec, put,
 * get, ping. Wire format: proto.h / docs/agent-protocol.md. Owns nothing outside this
 * process tree; never touches the host.
 *
 * Concurrency: one forked process per connection. Each connection is then plain
 * sequential code (blocking reads for put/get, one poll loop for exec), a malformed frame
 * or a crash ends only that process, and a hung child cannot stall other clients. The
 * cost is one fork of a small static binary per request (~0.1 ms), which is nothing next
 * to the vsock round trips. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <sys/prctl.h>

#include "ebpf.h"
#include "log.h"
#include "proto.h"

#define REQUEST_TIMEOUT_S 30     /* hello + request must arrive within this */
#define OUT_HIGH (1u << 20)      /* stop reading child pipes above this much queued output */
#define CREDIT_BATCH (32u << 10) /* coalesce STDIN_CREDIT grants */
#define DRAIN_CAP (16u << 20)    /* output read after the child exited (grandchildren may hold pipes) */
#define LINGER_S 5                /* how long a finished connection waits for the host to hang up */
#define BUSY_EXTRA 16            /* connections answered BUSY before we stop answering */

extern char **environ;

/* ---- connection buffers and framing ---- */

struct conn {
	int fd;
	uint8_t *in;          /* HDR_SIZE + MAX_PAYLOAD bytes */
	size_t in_off, in_len; /* unparsed bytes at in[in_off..] */
	uint8_t *out;         /* queued frames to send */
	size_t out_off, out_len, out_cap;
};

struct frame {
	uint16_t type;
	uint32_t len;
	const uint8_t *p; /* valid until the next conn_fill */
};

/* What a fatal error must clean up (this process serves exactly one connection). */
static pid_t g_child = -1;
static char *g_tmp_path;

static uint8_t *out_frame(struct conn *c, uint16_t type, uint32_t len)
{
	size_t need = HDR_SIZE + (size_t)len;
	if (c->out_off > 0 && c->out_off + c->out_len + need > c->out_cap) {
		memmove(c->out, c->out + c->out_off, c->out_len);
		c->out_off = 0;
	}
	if (c->out_off + c->out_len + need > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 65536;
		while (cap < c->out_len + need)
			cap *= 2;
		uint8_t *n = realloc(c->out, cap);
		if (!n) {
			alog(AL_ERR, "out of memory");
			_exit(1);
		}
		c->out = n;
		c->out_cap = cap;
	}
	uint8_t *h = c->out + c->out_off + c->out_len;
	put16(h, type);
	put16(h + 2, 0);
	put32(h + 4, len);
	c->out_len += need;
	return h + HDR_SIZE;
}

/* One write attempt; returns -1 only on a hard error (EAGAIN is not one). */
static int flush_some(struct conn *c)
{
	while (c->out_len > 0) {
		ssize_t n = write(c->fd, c->out + c->out_off, c->out_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -1;
		}
		c->out_off += (size_t)n;
		c->out_len -= (size_t)n;
	}
	c->out_off = 0;
	return 0;
}

static int flush_all(struct conn *c)
{
	while (c->out_len > 0) {
		if (flush_some(c) < 0)
			return -1;
		if (c->out_len > 0) {
			struct pollfd p = { .fd = c->fd, .events = POLLOUT };
			if (poll(&p, 1, -1) < 0 && errno != EINTR)
				return -1;
		}
	}
	return 0;
}

static void kill_child(void)
{
	if (g_child > 0) {
		kill(-g_child, SIGKILL);
		kill(g_child, SIGKILL);
		waitpid(g_child, NULL, 0);
		g_child = -1;
	}
}

static __attribute__((noreturn)) void cleanup_and_exit(int code)
{
	kill_child();
	if (g_tmp_path)
		unlink(g_tmp_path);
	_exit(code);
}

static void queue_error(struct conn *c, uint32_t code, int err, const char *fmt, ...)
{
	char msg[MAX_ERROR_MSG];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	uint8_t *p = out_frame(c, T_ERROR, 8 + (uint32_t)n);
	put32(p, code);
	put32(p + 4, (uint32_t)err);
	memcpy(p + 8, msg, (size_t)n);
}

/* Ends this connection (and only it: we are its own process) once what is queued is
 * sent. We stop writing, then read until the host hangs up: a host still sending (stdin,
 * file data, the frame after a bad one) must not write into a closed socket, where the
 * EPIPE would make it drop our last frames unread. */
static __attribute__((noreturn)) void finish(struct conn *c, int code)
{
	kill_child();
	if (g_tmp_path)
		unlink(g_tmp_path);
	if (flush_all(c) == 0 && shutdown(c->fd, SHUT_WR) == 0) {
		fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
		alarm(LINGER_S);
		char sink[4096];
		while (read(c->fd, sink, sizeof sink) > 0) {
		}
	}
	_exit(code);
}

/* Report, then end this connection. */
#define FATAL(c, code, err, ...)                              \
	do {                                                  \
		queue_error((c), (code), (err), __VA_ARGS__); \
		finish((c), 1);                               \
	} while (0)

static int host_type_known(uint16_t t)
{
	switch (t) {
	case T_HELLO: case T_PING: case T_EXEC: case T_STDIN: case T_STDIN_EOF: case T_SIGNAL:
	case T_PUT: case T_PUT_DATA: case T_PUT_END: case T_GET:
		return 1;
	}
	return 0;
}

/* Takes one complete frame out of the input buffer: 1 = got one, 0 = need more bytes.
 * The header alone decides the fatal cases, so a bad length is refused before any of
 * its payload is read. */
static int parse_frame(struct conn *c, struct frame *f)
{
	if (c->in_len < HDR_SIZE)
		return 0;
	const uint8_t *h = c->in + c->in_off;
	uint16_t type = get16(h), reserved = get16(h + 2);
	uint32_t len = get32(h + 4);
	if (len > MAX_PAYLOAD)
		FATAL(c, E_TOO_LARGE, 0, "frame length %u over limit %u", len, MAX_PAYLOAD);
	if (reserved != 0)
		FATAL(c, E_PROTO, 0, "reserved header field is %u, must be 0", reserved);
	if (!host_type_known(type))
		FATAL(c, E_UNKNOWN_TYPE, 0, "unknown message type 0x%04x", type);
	if (c->in_len < HDR_SIZE + (size_t)len)
		return 0;
	f->type = type;
	f->len = len;
	f->p = h + HDR_SIZE;
	c->in_off += HDR_SIZE + len;
	c->in_len -= HDR_SIZE + len;
	return 1;
}

/* Reads more input: >0 bytes, 0 on EOF, -1 on error, -2 if it would block. */
static ssize_t conn_fill(struct conn *c)
{
	if (c->in_off > 0) {
		memmove(c->in, c->in + c->in_off, c->in_len);
		c->in_off = 0;
	}
	for (;;) {
		ssize_t n = read(c->fd, c->in + c->in_len, HDR_SIZE + MAX_PAYLOAD - c->in_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -2 : -1;
		c->in_len += (size_t)n;
		return n;
	}
}

/* Blocking read of the next frame; returns 0 when the host closed the connection. */
static int next_frame(struct conn *c, struct frame *f)
{
	for (;;) {
		if (parse_frame(c, f))
			return 1;
		if (conn_fill(c) <= 0)
			return 0;
	}
}

/* ---- payload cursor ---- */

struct cur {
	const uint8_t *p;
	uint32_t left;
	struct conn *c;
};

static uint32_t cur_u32(struct cur *k, const char *what)
{
	if (k->left < 4)
		FATAL(k->c, E_PROTO, 0, "payload too short for %s", what);
	uint32_t v = get32(k->p);
	k->p += 4;
	k->left -= 4;
	return v;
}

static uint64_t cur_u64(struct cur *k, const char *what)
{
	uint64_t lo = cur_u32(k, what);
	return lo | (uint64_t)cur_u32(k, what) << 32;
}

/* A string is u32 length + bytes, no NUL inside; returned NUL-terminated (malloc). */
static char *cur_str(struct cur *k, uint32_t max, const char *what)
{
	uint32_t n = cur_u32(k, what);
	if (n > max || n > k->left)
		FATAL(k->c, E_PROTO, 0, "%s: length %u out of bounds", what, n);
	if (memchr(k->p, 0, n))
		FATAL(k->c, E_PROTO, 0, "%s contains a NUL byte", what);
	char *s = malloc((size_t)n + 1);
	if (!s)
		FATAL(k->c, E_INTERNAL, ENOMEM, "out of memory");
	memcpy(s, k->p, n);
	s[n] = 0;
	k->p += n;
	k->left -= n;
	return s;
}

static void cur_end(struct cur *k, const char *what)
{
	if (k->left != 0)
		FATAL(k->c, E_PROTO, 0, "%s: %u trailing bytes", what, k->left);
}

/* ---- exec ---- */

static void set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Environment: the agent's own (unless EXEC_CLEAR_ENV), overridden key by key by the
 * request, plus a PATH if none is left so that argv[0] is found as in a login shell. */
static char **build_env(char **req, uint32_t n, int clear)
{
	size_t base = 0;
	if (!clear)
		while (environ[base])
			base++;
	char **env = calloc(base + n + 2, sizeof *env);
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < base; i++) {
		size_t kl = strcspn(environ[i], "=");
		int overridden = 0;
		for (uint32_t j = 0; j < n && !overridden; j++)
			overridden = strncmp(req[j], environ[i], kl + 1) == 0;
		if (!overridden)
			env[k++] = environ[i];
	}
	int has_path = 0;
	for (uint32_t j = 0; j < n; j++)
		env[k++] = req[j];
	for (size_t i = 0; i < k; i++)
		has_path |= strncmp(env[i], "PATH=", 5) == 0;
	if (!has_path)
		env[k++] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	env[k] = NULL;
	return env;
}

/* Runs in the forked child; reports chdir/exec failure as {stage, errno} on errfd. */
static void exec_child(int in, int out, int err, int errfd, const char *cwd, char **argv, char **envp)
{
	setsid(); /* own process group: host signals reach the whole job */
	dup2(in, 0);
	dup2(out, 1);
	dup2(err, 2);
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL); /* ignored signals would survive execve */
	uint32_t rep[2] = { 1, 0 };
	if (cwd[0] && chdir(cwd) < 0) {
		rep[1] = (uint32_t)errno;
	} else {
		environ = envp; /* execvp searches the PATH of environ */
		execvp(argv[0], argv);
		rep[0] = 2;
		rep[1] = (uint32_t)errno;
	}
	if (write(errfd, rep, sizeof rep) < 0) {
	}
	_exit(127);
}

struct job {
	int in, out, err, pidfd;
	uint8_t *stdin_buf;
	size_t stdin_off, stdin_len;
	uint32_t credit;      /* stdin bytes the host may still send */
	uint32_t grant;       /* written/dropped bytes not yet granted back */
	int host_eof;         /* STDIN_EOF received */
	int exited, status;
};

static void grant_credit(struct conn *c, struct job *j, int force)
{
	if (j->grant == 0 || (!force && j->grant < CREDIT_BATCH))
		return;
	put32(out_frame(c, T_STDIN_CREDIT, 4), j->grant);
	j->credit += j->grant;
	j->grant = 0;
}

static void close_stdin(struct conn *c, struct job *j)
{
	if (j->in >= 0)
		close(j->in);
	j->in = -1;
	j->grant += (uint32_t)j->stdin_len; /* dropped, but the host may send that much again */
	j->stdin_off = j->stdin_len = 0;
	grant_credit(c, j, 1);
}

static void job_frame(struct conn *c, struct job *j, const struct frame *f)
{
	struct cur k = { f->p, f->len, c };
	switch (f->type) {
	case T_STDIN:
		if (j->host_eof)
			FATAL(c, E_STATE, 0, "STDIN after STDIN_EOF");
		if (f->len > j->credit)
			FATAL(c, E_PROTO, 0, "STDIN of %u bytes over the %u-byte credit", f->len, j->credit);
		j->credit -= f->len;
		if (j->in < 0) { /* child closed its stdin: drop */
			j->grant += f->len;
			grant_credit(c, j, 1);
			return;
		}
		if (j->stdin_off > 0) {
			memmove(j->stdin_buf, j->stdin_buf + j->stdin_off, j->stdin_len);
			j->stdin_off = 0;
		}
		memcpy(j->stdin_buf + j->stdin_len, f->p, f->len); /* fits: len <= credit */
		j->stdin_len += f->len;
		return;
	case T_STDIN_EOF:
		cur_end(&k, "STDIN_EOF");
		if (j->host_eof)
			FATAL(c, E_STATE, 0, "second STDIN_EOF");
		j->host_eof = 1;
		if (j->stdin_len == 0 && j->in >= 0)
			close_stdin(c, j);
		return;
	case T_SIGNAL: {
		uint32_t sig = cur_u32(&k, "SIGNAL");
		cur_end(&k, "SIGNAL");
		if (sig < 1 || sig >= (uint32_t)NSIG)
			FATAL(c, E_PROTO, 0, "signal %u out of range", sig);
		if (!j->exited && kill(-g_child, (int)sig) < 0)
			kill(g_child, (int)sig);
		return;
	}
	default:
		FATAL(c, E_STATE, 0, "message 0x%04x not valid during exec", f->type);
	}
}

/* Reads one chunk of child output into a frame: 1 = more may follow, 0 = EOF (fd closed). */
static int pump_output(struct conn *c, int *fd, uint16_t type)
{
	uint8_t *p = out_frame(c, type, MAX_DATA_CHUNK);
	ssize_t n;
	do
		n = read(*fd, p, MAX_DATA_CHUNK);
	while (n < 0 && errno == EINTR);
	c->out_len -= HDR_SIZE + MAX_DATA_CHUNK; /* un-reserve, then re-commit what was read */
	if (n > 0) {
		put32(p - 4, (uint32_t)n);
		c->out_len += HDR_SIZE + (size_t)n;
		return 1;
	}
	if (n < 0 && errno == EAGAIN)
		return 1;
	close(*fd);
	*fd = -1;
	return 0;
}

static void do_exec(struct conn *c, const struct frame *f)
{
	struct cur k = { f->p, f->len, c };
	uint32_t flags = cur_u32(&k, "EXEC flags");
	uint32_t argc = cur_u32(&k, "EXEC argc");
	uint32_t envc = cur_u32(&k, "EXEC envc");
	if (flags & ~EXEC_CLEAR_ENV)
		FATAL(c, E_PROTO, 0, "EXEC: unknown flags 0x%x", flags);
	if (argc < 1 || argc > MAX_ARGS || envc > MAX_ARGS)
		FATAL(c, E_PROTO, 0, "EXEC: argc %u / envc %u out of bounds", argc, envc);
	char *cwd = cur_str(&k, MAX_PATH_LEN, "EXEC cwd");
	char **argv = calloc((size_t)argc + 1, sizeof *argv);
	char **reqenv = calloc((size_t)envc + 1, sizeof *reqenv);
	if (!argv || !reqenv)
		FATAL(c, E_INTERNAL, ENOMEM, "out of memory");
	for (uint32_t i = 0; i < argc; i++)
		argv[i] = cur_str(&k, MAX_PAYLOAD, "EXEC argv");
	for (uint32_t i = 0; i < envc; i++) {
		reqenv[i] = cur_str(&k, MAX_PAYLOAD, "EXEC env");
		if (reqenv[i][0] == '=' || !strchr(reqenv[i], '='))
			FATAL(c, E_PROTO, 0, "EXEC env entry %u is not KEY=VALUE", i);
	}
	cur_end(&k, "EXEC");
	char **envp = build_env(reqenv, envc, flags & EXEC_CLEAR_ENV);
	if (!envp)
		FATAL(c, E_INTERNAL, ENOMEM, "out of memory");

	int pin[2], pout[2], perr[2], prep[2];
	if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC) || pipe2(prep, O_CLOEXEC))
		FATAL(c, E_INTERNAL, errno, "pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		FATAL(c, E_INTERNAL, errno, "fork: %s", strerror(errno));
	if (pid == 0)
		exec_child(pin[0], pout[1], perr[1], prep[1], cwd, argv, envp);
	g_child = pid;
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	close(prep[1]);
	uint32_t rep[2];
	ssize_t n;
	do
		n = read(prep[0], rep, sizeof rep);
	while (n < 0 && errno == EINTR);
	close(prep[0]);
	if (n == (ssize_t)sizeof rep) {
		waitpid(pid, NULL, 0);
		g_child = -1;
		if (rep[0] == 1)
			FATAL(c, E_SPAWN, (int)rep[1], "chdir %s: %s", cwd, strerror((int)rep[1]));
		FATAL(c, E_SPAWN, (int)rep[1], "exec %s: %s", argv[0], strerror((int)rep[1]));
	}

	struct job j = { .in = pin[1], .out = pout[0], .err = perr[0], .credit = STDIN_WINDOW };
	j.pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (j.pidfd < 0)
		FATAL(c, E_INTERNAL, errno, "pidfd_open: %s", strerror(errno));
	j.stdin_buf = malloc(STDIN_WINDOW);
	if (!j.stdin_buf)
		FATAL(c, E_INTERNAL, ENOMEM, "out of memory");
	set_nonblock(c->fd);
	set_nonblock(j.in);
	set_nonblock(j.out);
	set_nonblock(j.err);
	uint8_t *p = out_frame(c, T_EXEC_STARTED, 8);
	put32(p, (uint32_t)pid);
	put32(p + 4, STDIN_WINDOW);

	while (!j.exited) {
		enum { SOCK, PID, IN, OUT, ERR };
		struct pollfd pf[5] = {
			[SOCK] = { c->fd, POLLIN | (c->out_len ? POLLOUT : 0), 0 },
			[PID] = { j.pidfd, POLLIN, 0 },
			[IN] = { j.stdin_len ? j.in : -1, POLLOUT, 0 },
			[OUT] = { c->out_len < OUT_HIGH ? j.out : -1, POLLIN, 0 },
			[ERR] = { c->out_len < OUT_HIGH ? j.err : -1, POLLIN, 0 },
		};
		if (poll(pf, 5, -1) < 0) {
			if (errno == EINTR)
				continue;
			FATAL(c, E_INTERNAL, errno, "poll: %s", strerror(errno));
		}
		if (pf[SOCK].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = conn_fill(c);
			if (r == 0 || r == -1)
				cleanup_and_exit(0); /* host gone: the job goes too */
			struct frame fr;
			while (parse_frame(c, &fr))
				job_frame(c, &j, &fr);
		}
		if (pf[IN].revents) {
			ssize_t w = write(j.in, j.stdin_buf + j.stdin_off, j.stdin_len);
			if (w > 0) {
				j.stdin_off += (size_t)w;
				j.stdin_len -= (size_t)w;
				j.grant += (uint32_t)w;
				if (j.stdin_len == 0 && j.host_eof)
					close_stdin(c, &j);
				grant_credit(c, &j, j.stdin_len == 0);
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				close_stdin(c, &j); /* EPIPE: the child stopped reading */
			}
		}
		if (pf[OUT].revents)
			pump_output(c, &j.out, T_STDOUT);
		if (pf[ERR].revents)
			pump_output(c, &j.err, T_STDERR);
		if (pf[PID].revents && waitpid(pid, &j.status, WNOHANG) == pid)
			j.exited = 1;
		if (flush_some(c) < 0)
			cleanup_and_exit(0);
	}
	g_child = -1;
	/* Everything the child wrote before exiting is in the pipes now; take it, but not
	 * what a grandchild that kept the pipes may produce forever. */
	set_nonblock(j.out);
	set_nonblock(j.err);
	for (size_t got = 0; j.out >= 0 && got < DRAIN_CAP; got += MAX_DATA_CHUNK) {
		size_t before = c->out_len;
		if (!pump_output(c, &j.out, T_STDOUT) || c->out_len == before)
			break;
	}
	for (size_t got = 0; j.err >= 0 && got < DRAIN_CAP; got += MAX_DATA_CHUNK) {
		size_t before = c->out_len;
		if (!pump_output(c, &j.err, T_STDERR) || c->out_len == before)
			break;
	}
	p = out_frame(c, T_EXIT, 12);
	if (WIFSIGNALED(j.status)) {
		put32(p, EXIT_SIGNALED);
		put32(p + 4, (uint32_t)WTERMSIG(j.status));
		put32(p + 8, WCOREDUMP(j.status) ? EXIT_CORE_DUMPED : 0);
	} else {
		put32(p, EXIT_EXITED);
		put32(p + 4, (uint32_t)WEXITSTATUS(j.status));
		put32(p + 8, 0);
	}
	finish(c, 0);
}

/* ---- put / get ---- */

/* mkdir -p of the directory part of `path` (mode 0755, before the umask): 0, or the errno of
 * the first component that could not be made. Existing directories are fine; an existing
 * non-directory fails the put as mkostemp would (ENOTDIR). */
static int make_parents(const char *path)
{
	char dir[MAX_PATH_LEN + 1];
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path)
		return 0;
	size_t n = (size_t)(slash - path);
	memcpy(dir, path, n);
	dir[n] = 0;
	for (char *p = dir + 1;; p++) {
		if (*p != '/' && *p != 0)
			continue;
		char end = *p;
		*p = 0;
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return errno;
		*p = end;
		if (!end)
			return 0;
	}
}

static void do_put(struct conn *c, const struct frame *f)
{
	struct cur k = { f->p, f->len, c };
	uint32_t mode = cur_u32(&k, "PUT mode");
	uint32_t flags = cur_u32(&k, "PUT flags");
	char *path = cur_str(&k, MAX_PATH_LEN, "PUT path");
	cur_end(&k, "PUT");
	if (mode & ~07777u || flags & ~PUT_MKDIRS || !path[0])
		FATAL(c, E_PROTO, 0, "PUT: bad mode 0%o, flags 0x%x or empty path", mode, flags);
	int err = flags & PUT_MKDIRS ? make_parents(path) : 0;

	/* Write beside the target and rename: a reader never sees half a file. */
	const char *slash = strrchr(path, '/');
	size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
	g_tmp_path = malloc(dirlen + 32);
	if (!g_tmp_path)
		FATAL(c, E_INTERNAL, ENOMEM, "out of memory");
	memcpy(g_tmp_path, path, dirlen);
	strcpy(g_tmp_path + dirlen, ".tsvmm-put-XXXXXX");
	int fd = err ? -1 : mkostemp(g_tmp_path, O_CLOEXEC);
	if (fd < 0 && !err)
		err = errno;
	uint64_t total = 0;
	struct frame fr;
	for (;;) {
		/* After a failure, report it at once but keep reading to PUT_END so the host
		 * never writes into a closed socket (and loses the ERROR frame to EPIPE). */
		if (err && g_tmp_path) {
			queue_error(c, E_IO, err, "put %s: %s", path, strerror(err));
			flush_all(c);
			if (fd >= 0)
				unlink(g_tmp_path);
			g_tmp_path = NULL;
		}
		if (!next_frame(c, &fr))
			cleanup_and_exit(0);
		if (fr.type == T_PUT_END)
			break;
		if (fr.type != T_PUT_DATA)
			FATAL(c, E_STATE, 0, "message 0x%04x not valid during put", fr.type);
		total += fr.len;
		for (uint32_t off = 0; !err && off < fr.len;) {
			ssize_t w = write(fd, fr.p + off, fr.len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				err = errno;
			else
				off += (uint32_t)w;
		}
	}
	struct cur e = { fr.p, fr.len, c };
	uint64_t declared = cur_u64(&e, "PUT_END");
	cur_end(&e, "PUT_END");
	if (err)
		finish(c, 1); /* the ERROR went out when the write failed */
	if (declared != total)
		FATAL(c, E_PROTO, 0, "PUT_END says %llu bytes, %llu were sent",
		      (unsigned long long)declared, (unsigned long long)total);
	if (fchmod(fd, mode) < 0 || close(fd) < 0 || rename(g_tmp_path, path) < 0)
		FATAL(c, E_IO, errno, "put %s: %s", path, strerror(errno));
	g_tmp_path = NULL;
	put64(out_frame(c, T_PUT_DONE, 8), total);
	finish(c, 0);
}

static void do_get(struct conn *c, const struct frame *f)
{
	struct cur k = { f->p, f->len, c };
	char *path = cur_str(&k, MAX_PATH_LEN, "GET path");
	cur_end(&k, "GET");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		FATAL(c, E_IO, errno, "get %s: %s", path, strerror(errno));
	if (S_ISDIR(st.st_mode))
		FATAL(c, E_IO, EISDIR, "get %s: %s", path, strerror(EISDIR));
	uint8_t *p = out_frame(c, T_GET_INFO, 12);
	put64(p, S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0);
	put32(p + 8, st.st_mode & 07777);
	/* Read to EOF rather than st_size: /proc and /sys files report size 0. */
	uint64_t total = 0;
	for (;;) {
		if (flush_all(c) < 0)
			_exit(0);
		p = out_frame(c, T_GET_DATA, MAX_DATA_CHUNK);
		ssize_t n;
		do
			n = read(fd, p, MAX_DATA_CHUNK);
		while (n < 0 && errno == EINTR);
		c->out_len -= HDR_SIZE + MAX_DATA_CHUNK;
		if (n < 0)
			FATAL(c, E_IO, errno, "get %s: %s", path, strerror(errno));
		if (n == 0)
			break;
		put32(p - 4, (uint32_t)n);
		c->out_len += HDR_SIZE + (size_t)n;
		total += (uint64_t)n;
	}
	put64(out_frame(c, T_GET_END, 8), total);
	finish(c, 0);
}

/* ---- one connection ---- */

/* Over the connection limit: answer BUSY, then read what the host sends until it hangs
 * up, so that its HELLO never meets a closed socket (which would lose our answer). */
static void refuse_busy(int fd, unsigned long max_conns)
{
	struct conn c = { .fd = fd };
	queue_error(&c, E_BUSY, 0, "busy: %lu connections", max_conns);
	finish(&c, 0);
}

static void serve(int fd)
{
	struct conn c = { .fd = fd, .in = malloc(HDR_SIZE + MAX_PAYLOAD) };
	if (!c.in)
		_exit(1);
	alarm(REQUEST_TIMEOUT_S); /* a silent peer must not hold a process forever */
	struct frame f;
	if (!next_frame(&c, &f))
		_exit(0);
	if (f.type != T_HELLO)
		FATAL(&c, E_STATE, 0, "expected HELLO, got 0x%04x", f.type);
	if (f.len != 8 || get32(f.p) != PROTO_MAGIC)
		FATAL(&c, E_PROTO, 0, "bad HELLO");
	uint16_t vmin = get16(f.p + 4), vmax = get16(f.p + 6);
	if (vmin > PROTO_VERSION || vmax < PROTO_VERSION)
		FATAL(&c, E_VERSION, 0, "host speaks versions %u..%u, agent speaks %u", vmin, vmax, PROTO_VERSION);
	uint8_t *p = out_frame(&c, T_HELLO_ACK, 12 + sizeof AGENT_VERSION - 1);
	put32(p, PROTO_MAGIC);
	put16(p + 4, PROTO_VERSION);
	put16(p + 6, AGENT_FEATURES);
	put32(p + 8, MAX_PAYLOAD);
	memcpy(p + 12, AGENT_VERSION, sizeof AGENT_VERSION - 1);
	if (flush_all(&c) < 0 || !next_frame(&c, &f))
		_exit(0);
	alarm(0);
	switch (f.type) {
	case T_PING: {
		struct cur k = { f.p, f.len, &c };
		uint64_t nonce = cur_u64(&k, "PING");
		cur_end(&k, "PING");
		p = out_frame(&c, T_PONG, 8 + sizeof AGENT_VERSION - 1);
		put64(p, nonce);
		memcpy(p + 8, AGENT_VERSION, sizeof AGENT_VERSION - 1);
		finish(&c, 0);
	}
	case T_EXEC:
		do_exec(&c, &f);
		break;
	case T_PUT:
		do_put(&c, &f);
		break;
	case T_GET:
		do_get(&c, &f);
		break;
	default:
		FATAL(&c, E_STATE, 0, "message 0x%04x is not a request", f.type);
	}
	_exit(0);
}

/* ---- listener ---- */

static volatile sig_atomic_t active;
static volatile pid_t ebpf_pid = -1;

static void on_sigchld(int sig)
{
	(void)sig;
	int e = errno;
	pid_t pid;
	while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {
		if (pid == ebpf_pid)
			ebpf_pid = -1;
		else
			active--;
	}
	errno = e;
}

/* Keeps the eBPF side running: a crash or a lost device connection restarts it (with
 * back-off); the device then sees a new HELLO and tells the host which programs died. */
static void ebpf_supervise(const struct ebpf_opts *eo)
{
	for (unsigned delay = 1;; delay = delay < 32 ? delay * 2 : delay) {
		time_t started = time(NULL);
		pid_t w = fork();
		if (w == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			ebpf_main(eo);
		}
		int st = 0;
		while (w > 0 && waitpid(w, &st, 0) < 0 && errno == EINTR) {
		}
		if (w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == EBPF_EXIT_NO_DEVICE)
			_exit(0);
		if (time(NULL) - started > 60)
			delay = 1; /* it ran well for a while: this is a new failure, not a loop */
		if (w > 0)
			alog(AL_WARN, "eBPF side %d ended (%s %d); restarting in %u s", w, WIFSIGNALED(st) ? "signal" : "status",
			       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), delay);
		sleep(delay);
	}
}

static int listen_vsock(unsigned port)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY };
	/* vsock modules may still be loading when init starts us: wait for them, quietly. */
	for (int tries = 0;; tries++) {
		int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1024) == 0)
			return fd;
		if (tries == 0)
			alog(AL_WARN, "vsock port %u not available yet (%s), retrying", port, strerror(errno));
		if (fd >= 0)
			close(fd);
		sleep(1);
	}
}

static int listen_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof a.sun_path) {
		alog(AL_ERR, "unix socket path too long: %s", path);
		exit(2);
	}
	strcpy(a.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path); /* stale socket of an earlier run */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* Whoever can connect runs commands as us: owner only. */
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || chmod(path, 0600) < 0 || listen(fd, 1024) < 0) {
		alog(AL_ERR, "listen on %s: %s", path, strerror(errno));
		exit(1);
	}
	return fd;
}

static void usage(FILE *to)
{
	fputs("usage: tsvmm-agent [--port N] [--unix PATH] [--max-conns N] [--no-bpf] [--version]\n"
	      "  --port N           vsock port to listen on (default 52, any CID)\n"
	      "  --unix PATH        listen on a Unix socket instead (host-side tests)\n"
	      "  --max-conns N      connections served at once (default 512)\n"
	      "  --no-bpf           do not serve the hypercall device (eBPF packages, hints)\n"
	      "  --hc-sim R,M,D     hypercall device simulated: register socket R, shared memory\n"
	      "                     file M, doorbell socket D (host-side tests)\n"
	      "  --cmdline PATH     kernel command line to read (default /proc/cmdline)\n"
	      "  --allow-file PATH  allowed package digests (default /etc/tsvmm/allowed-digests)\n"
	      "  --try-package FILE [SECONDS]\n"
	      "                     load a program package here (no host), print its hint\n"
	      "                     records for SECONDS (default 10), unload it, exit\n", to);
}

int main(int argc, char **argv)
{
	unsigned long port = AGENT_DEFAULT_PORT, max_conns = 512;
	const char *unix_path = NULL;
	struct ebpf_opts eo = { NULL, "/proc/cmdline", "/etc/tsvmm/allowed-digests" };
	int no_bpf = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		char *end;
		if (!strcmp(a, "--version")) {
			printf("%s (protocol %d)\n", AGENT_VERSION, PROTO_VERSION);
			return 0;
		} else if (!strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (i + 1 < argc && !strcmp(a, "--unix")) {
			unix_path = argv[++i];
		} else if (!strcmp(a, "--no-bpf")) {
			no_bpf = 1;
		} else if (i + 1 < argc && !strcmp(a, "--try-package")) {
			unsigned secs = i + 2 < argc && argv[i + 2][0] != '-' ? (unsigned)atoi(argv[i + 2]) : 10;
			return ebpf_try(argv[i + 1], secs);
		} else if (i + 1 < argc && !strcmp(a, "--hc-sim")) {
			eo.sim = argv[++i];
		} else if (i + 1 < argc && !strcmp(a, "--cmdline")) {
			eo.cmdline_path = argv[++i];
		} else if (i + 1 < argc && !strcmp(a, "--allow-file")) {
			eo.allow_path = argv[++i];
		} else if (i + 1 < argc && (!strcmp(a, "--port") || !strcmp(a, "--max-conns"))) {
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v == 0 || v > UINT32_MAX) {
				alog(AL_ERR, "bad value for %s: %s", a, argv[i]);
				return 2;
			}
			*(a[2] == 'p' ? &port : &max_conns) = v;
		} else {
			usage(stderr);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (!unix_path)
		log_to_kmsg(); /* the guest's service: keep the console quiet, dmesg has it */
	int lfd = unix_path ? listen_unix(unix_path) : listen_vsock((unsigned)port);
	if (chdir("/") < 0) {
	}
	struct sigaction sa = { .sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);
	sigset_t chld, old;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	/* The eBPF side lives in its own process: a slow verifier or a device error never
	 * stalls the command channel, and it dies with us (its BPF objects with it). */
	if (!no_bpf && (eo.sim || !unix_path) && ebpf_wanted(&eo)) {
		sigprocmask(SIG_BLOCK, &chld, &old);
		pid_t pid = fork();
		if (pid == 0) {
			signal(SIGCHLD, SIG_DFL);
			sigprocmask(SIG_SETMASK, &old, NULL);
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			close(lfd);
			ebpf_supervise(&eo);
		}
		ebpf_pid = pid;
		sigprocmask(SIG_SETMASK, &old, NULL);
		if (pid < 0)
			alog(AL_ERR, "fork of the eBPF side: %s", strerror(errno));
	}
	if (unix_path)
		alog(AL_INFO, "listening on unix:%s", unix_path);
	else
		alog(AL_INFO, "listening on vsock port %lu", port);

	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED)
				alog(AL_ERR, "accept: %s", strerror(errno));
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM)
				sleep(1);
			continue;
		}
		/* Root commands for the host only: a guest process reaching port 52 through
		 * vsock loopback (CID 1) or another VM must not get a root shell. */
		struct sockaddr_vm peer = { .svm_cid = VMADDR_CID_ANY };
		socklen_t plen = sizeof peer;
		if (!unix_path && (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0 || peer.svm_cid != VMADDR_CID_HOST)) {
			alog(AL_WARN, "refused a connection from CID %u (only the host, CID 2, may connect)", peer.svm_cid);
			close(fd);
			continue;
		}
		sigprocmask(SIG_BLOCK, &chld, &old);
		if ((unsigned long)active >= max_conns + BUSY_EXTRA) {
			close(fd); /* far over the limit: not even an answer */
		} else {
			pid_t pid = fork();
			if (pid == 0) {
				signal(SIGCHLD, SIG_DFL); /* we reap our own exec child */
				sigprocmask(SIG_SETMASK, &old, NULL);
				close(lfd);
				if ((unsigned long)active >= max_conns)
					refuse_busy(fd, max_conns);
				serve(fd);
			}
			if (pid < 0)
				alog(AL_ERR, "fork: %s", strerror(errno));
			else
				active++;
			close(fd);
		}
		sigprocmask(SIG_SETMASK, &old, NULL);
	}
}
