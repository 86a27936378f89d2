/*
 * spscq: the seed paper's guest workload. A cache-aware single-producer/single-consumer
 * ring (the "lazy" Lamport queue of Maffione, Lettieri, Rizzo, "Cache-aware design of
 * general-purpose single-producer-single-consumer queues") moved between two threads pinned
 * with pthread_setaffinity_np (which the affinity eBPF program reports to tsvmm). Prints one
 * JSON line with the rate in millions of items per second and checks its own result: every
 * item is a sequence number, and the consumer verifies each arrives once and in order.
 * Owns only this process; touches nothing but its two threads' affinity.
 *
 *   spscq [-p CPU -c CPU | -u] [-d SECONDS] [-b BATCH] [-s SLOTS]
 *
 * Exit status: 0 ok, 1 the check failed, 2 usage or setup error.
 * Build with -DSPSCQ_INJECT_BUG to drop one item on purpose (tests prove the check works).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CACHELINE 64
#define ITEMS_PER_LINE (CACHELINE / sizeof(uint64_t))
#define STOP_CHECK_EVERY 1024

/*
 * Why this layout: each side's index sits on its own cache line next to that side's
 * private cached copy of the other index, so a steady-state push or pop touches only its
 * own line and the slot; the other side's line is read only when the cached copy says the
 * ring looks full (producer) or empty (consumer). The producer publishes its index once per
 * batch, so the consumer's line bounces once per batch instead of once per item. One cache
 * line of slots is kept free, so producer and consumer never write the same slot line.
 */
struct ring {
	_Alignas(CACHELINE) _Atomic uint64_t write;	/* published by the producer */
	uint64_t read_cache;				/* producer's copy of read */
	uint64_t write_local;				/* producer's unpublished index */
	_Alignas(CACHELINE) _Atomic uint64_t read;	/* published by the consumer */
	uint64_t write_cache;				/* consumer's copy of write */
	_Alignas(CACHELINE) _Atomic int stop;		/* set by main when time is up */
	_Atomic int done;				/* producer has published its last item */
	_Alignas(CACHELINE) uint64_t mask;
	uint64_t capacity;
	uint64_t batch;
	uint64_t *slots;
};

struct side {
	struct ring *q;
	int cpu; /* -1: unpinned */
	int err;
	uint64_t items;
	uint64_t bad; /* items that broke the sequence */
	uint64_t first_bad_expected, first_bad_got;
	struct timespec t_end;
};

/* Polite spinning: lets an SMT sibling (or the other vCPU's host thread) make progress. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static pthread_barrier_t start_line;
static struct timespec t_start;

static int pin_self(int cpu)
{
	if (cpu < 0)
		return 0;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static inline void publish_write(struct ring *q)
{
	atomic_store_explicit(&q->write, q->write_local, memory_order_release);
}

static void *producer(void *arg)
{
	struct side *s = arg;
	struct ring *q = s->q;
	s->err = pin_self(s->cpu);
	pthread_barrier_wait(&start_line);
	if (s->err)
		return NULL;
	uint64_t seq = 0, w = 0, unpublished = 0;
	for (;;) {
		if ((seq % STOP_CHECK_EVERY) == 0 && atomic_load_explicit(&q->stop, memory_order_relaxed))
			break;
		if (w - q->read_cache >= q->capacity) {
			/* Looks full: publish what we have (the consumer may be waiting for it), re-read. */
			if (unpublished) {
				q->write_local = w;
				publish_write(q);
				unpublished = 0;
			}
			q->read_cache = atomic_load_explicit(&q->read, memory_order_acquire);
			if (w - q->read_cache >= q->capacity) {
				/* A consumer that failed to start never drains: the stop flag must still end us. */
				if (atomic_load_explicit(&q->stop, memory_order_relaxed))
					break;
				cpu_relax();
				continue;
			}
		}
#ifdef SPSCQ_INJECT_BUG
		if (seq == 1000)
			seq++; /* the deliberate bug: item 1000 is never sent */
#endif
		q->slots[w & q->mask] = seq++;
		w++;
		if (++unpublished >= q->batch) {
			q->write_local = w;
			publish_write(q);
			unpublished = 0;
		}
	}
	q->write_local = w;
	publish_write(q);
	s->items = w;
	atomic_store_explicit(&q->done, 1, memory_order_release);
	return NULL;
}

static void *consumer(void *arg)
{
	struct side *s = arg;
	struct ring *q = s->q;
	s->err = pin_self(s->cpu);
	pthread_barrier_wait(&start_line);
	if (s->err)
		return NULL;
	uint64_t r = 0, expect = 0, since_publish = 0;
	for (;;) {
		if (r == q->write_cache) {
			/* Looks empty: give back the slots we consumed, then re-read the producer's index. */
			if (since_publish) {
				atomic_store_explicit(&q->read, r, memory_order_release);
				since_publish = 0;
			}
			int done = atomic_load_explicit(&q->done, memory_order_acquire);
			q->write_cache = atomic_load_explicit(&q->write, memory_order_acquire);
			if (r == q->write_cache) {
				if (done)
					break;
				cpu_relax();
				continue;
			}
		}
		uint64_t v = q->slots[r & q->mask];
		if (v != expect) {
			if (s->bad++ == 0) {
				s->first_bad_expected = expect;
				s->first_bad_got = v;
			}
			expect = v; /* resynchronise so one gap counts once */
		}
		expect++;
		r++;
		if (++since_publish >= q->batch) {
			atomic_store_explicit(&q->read, r, memory_order_release);
			since_publish = 0;
		}
	}
	atomic_store_explicit(&q->read, r, memory_order_release);
	clock_gettime(CLOCK_MONOTONIC, &s->t_end);
	s->items = r;
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: spscq [-p CPU -c CPU | -u] [-d SECONDS] [-b BATCH] [-s SLOTS]\n"
			"  -p/-c  pin producer/consumer to these CPUs (default 0 and 1)\n"
			"  -u     leave both threads unpinned\n"
			"  -d     run time in seconds (default 5)\n"
			"  -b     publish indexes every BATCH items (default 32)\n"
			"  -s     ring slots, a power of two >= 16 (default 512)\n");
	exit(2);
}

static long parse_long(const char *s, const char *what, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "spscq: %s '%s' must be an integer in %ld..%ld\n", what, s, min, max);
		exit(2);
	}
	return v;
}

static void json_cpu(const char *name, int cpu)
{
	if (cpu < 0)
		printf("\"%s\":null", name);
	else
		printf("\"%s\":%d", name, cpu);
}

int main(int argc, char **argv)
{
	int pcpu = 0, ccpu = 1, unpinned = 0, opt;
	double duration = 5;
	long batch = 32, slots = 512;
	while ((opt = getopt(argc, argv, "p:c:ud:b:s:h")) != -1) {
		switch (opt) {
		case 'p': pcpu = (int)parse_long(optarg, "-p", 0, CPU_SETSIZE - 1); break;
		case 'c': ccpu = (int)parse_long(optarg, "-c", 0, CPU_SETSIZE - 1); break;
		case 'u': unpinned = 1; break;
		case 'd': {
			char *end;
			duration = strtod(optarg, &end);
			if (*end != '\0' || !(duration > 0 && duration <= 86400)) {
				fprintf(stderr, "spscq: -d '%s' must be seconds in (0, 86400]\n", optarg);
				return 2;
			}
			break;
		}
		case 'b': batch = parse_long(optarg, "-b", 1, 1 << 20); break;
		case 's': slots = parse_long(optarg, "-s", 16, 1L << 26); break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	if (slots & (slots - 1)) {
		fprintf(stderr, "spscq: -s %ld is not a power of two\n", slots);
		return 2;
	}
	if (unpinned)
		pcpu = ccpu = -1;
	else if (pcpu == ccpu) {
		fprintf(stderr, "spscq: producer and consumer must be pinned to different CPUs\n");
		return 2;
	}

	static struct ring q;
	q.mask = (uint64_t)slots - 1;
	q.capacity = (uint64_t)slots - ITEMS_PER_LINE;
	q.batch = (uint64_t)batch < q.capacity / 2 ? (uint64_t)batch : q.capacity / 2;
	if (posix_memalign((void **)&q.slots, CACHELINE, (size_t)slots * sizeof(uint64_t))) {
		fprintf(stderr, "spscq: out of memory for %ld slots\n", slots);
		return 2;
	}
	memset(q.slots, 0, (size_t)slots * sizeof(uint64_t));

	struct side ps = { .q = &q, .cpu = pcpu }, cs = { .q = &q, .cpu = ccpu };
	pthread_t pt, ct;
	pthread_barrier_init(&start_line, NULL, 3);
	if (pthread_create(&ct, NULL, consumer, &cs) || pthread_create(&pt, NULL, producer, &ps)) {
		fprintf(stderr, "spscq: cannot create threads\n");
		return 2;
	}
	pthread_barrier_wait(&start_line);
	clock_gettime(CLOCK_MONOTONIC, &t_start);
	if (!ps.err && !cs.err) {
		struct timespec nap = { (time_t)duration, (long)((duration - (double)(time_t)duration) * 1e9) };
		while (nanosleep(&nap, &nap) == -1 && errno == EINTR)
			;
	}
	atomic_store(&q.stop, 1);
	pthread_join(pt, NULL);
	pthread_join(ct, NULL);
	if (ps.err || cs.err) {
		int e = ps.err ? ps.err : cs.err;
		fprintf(stderr, "spscq: pthread_setaffinity_np to CPU %d failed: %s\n", ps.err ? pcpu : ccpu, strerror(e));
		return 2;
	}

	double secs = (double)(cs.t_end.tv_sec - t_start.tv_sec) + (double)(cs.t_end.tv_nsec - t_start.tv_nsec) / 1e9;
	int ok = cs.bad == 0 && cs.items == ps.items;
	printf("{\"mpps\":%.3f,\"items\":%llu,\"seconds\":%.3f,\"pinned\":%s,", (double)cs.items / secs / 1e6,
	       (unsigned long long)cs.items, secs, unpinned ? "false" : "true");
	json_cpu("producer_cpu", pcpu);
	putchar(',');
	json_cpu("consumer_cpu", ccpu);
	printf(",\"batch\":%llu,\"slots\":%ld,\"check\":\"%s\"", (unsigned long long)q.batch, slots, ok ? "ok" : "failed");
	if (!ok)
		printf(",\"errors\":%llu,\"first_expected\":%llu,\"first_got\":%llu,\"sent\":%llu",
		       (unsigned long long)cs.bad, (unsigned long long)cs.first_bad_expected,
		       (unsigned long long)cs.first_bad_got, (unsigned long long)ps.items);
	printf("}\n");
	fflush(stdout);
	free(q.slots);
	return ok ? 0 : 1;
}
