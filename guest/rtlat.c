/* rtlat: a guest real-time task, for the `prio` policy's tests and benchmark (docs/scheduler.md,
 * tools/bench/prio.mjs). Runs a list of steps in order, printing one line per step done:
 *
 *   cpu:N        pin this thread to guest CPU N (sched_setaffinity)
 *   fifo:P rr:P  become SCHED_FIFO / SCHED_RR at priority P (sched_setscheduler)
 *   other        back to SCHED_OTHER
 *   param:P      new priority, same policy (sched_setparam)
 *   sleep:S      sleep S seconds (S may be fractional)
 *   fork:S       fork a child that sleeps S seconds and exits (it inherits the class)
 *   wait:PATH    wait until PATH exists (a test's cue; polled every 10 ms)
 *   measure:N:US cyclictest's loop: N wake-ups, one every US microseconds (clock_nanosleep
 *                TIMER_ABSTIME on CLOCK_MONOTONIC); prints the wake-up latency (how late each
 *                wake-up was) as p50/p99/max in microseconds, and the raw samples with -v.
 *                Like cyclictest, a wake-up later than the next period skips the periods it
 *                missed (counted as overruns) instead of sleeping for targets already past:
 *                each sample is one wake-up's own lateness, never a backlog of earlier ones.
 *
 * e.g. `rtlat cpu:1 fifo:50 measure:2000:1000` is `cyclictest -a 1 -p 50 -i 1000 -l 2000`.
 * Owns nothing else; exits 1 with a message when a step fails. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int verbose;

static void die(const char *step, const char *what)
{
	fprintf(stderr, "rtlat: %s: %s: %s\n", step, what, strerror(errno));
	exit(1);
}

static void setsched(const char *step, int policy, int prio)
{
	struct sched_param p = { .sched_priority = prio };
	if (sched_setscheduler(0, policy, &p) < 0)
		die(step, "sched_setscheduler");
}

static long long ns(const struct timespec *t) { return (long long)t->tv_sec * 1000000000LL + t->tv_nsec; }

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

static void measure(const char *step, long n, long us)
{
	long long *lat = malloc(sizeof *lat * (size_t)n);
	if (!lat || n < 1 || us < 1)
		die(step, "bad sample count or interval");
	struct timespec next, now;
	long overruns = 0;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (long i = 0; i < n; i++) {
		long long t = ns(&next) + us * 1000LL;
		next.tv_sec = t / 1000000000LL;
		next.tv_nsec = t % 1000000000LL;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		lat[i] = ns(&now) - ns(&next);
		/* cyclictest: while (tsgreater(&now, &next)) next += interval */
		long long t2 = ns(&next);
		while (t2 + us * 1000LL <= ns(&now)) {
			t2 += us * 1000LL;
			overruns++;
		}
		next.tv_sec = t2 / 1000000000LL;
		next.tv_nsec = t2 % 1000000000LL;
	}
	if (verbose)
		for (long i = 0; i < n; i++)
			printf("sample %lld\n", lat[i] / 1000);
	qsort(lat, (size_t)n, sizeof *lat, cmp);
	printf("latency_us n=%ld p50=%lld p99=%lld max=%lld overruns=%ld\n", n, lat[n / 2] / 1000, lat[(n * 99) / 100] / 1000, lat[n - 1] / 1000, overruns);
	free(lat);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		long a = 0, b = 0;
		double d = 0;
		if (!strcmp(s, "-v")) {
			verbose = 1;
			continue;
		} else if (sscanf(s, "cpu:%ld", &a) == 1) {
			cpu_set_t set;
			CPU_ZERO(&set);
			CPU_SET((int)a, &set);
			if (sched_setaffinity(0, sizeof set, &set) < 0)
				die(s, "sched_setaffinity");
		} else if (sscanf(s, "fifo:%ld", &a) == 1) {
			setsched(s, SCHED_FIFO, (int)a);
		} else if (sscanf(s, "rr:%ld", &a) == 1) {
			setsched(s, SCHED_RR, (int)a);
		} else if (!strcmp(s, "other")) {
			setsched(s, SCHED_OTHER, 0);
		} else if (sscanf(s, "param:%ld", &a) == 1) {
			struct sched_param p = { .sched_priority = (int)a };
			if (sched_setparam(0, &p) < 0)
				die(s, "sched_setparam");
		} else if (sscanf(s, "sleep:%lf", &d) == 1) {
			struct timespec t = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
			while (nanosleep(&t, &t) < 0 && errno == EINTR) {
			}
		} else if (sscanf(s, "fork:%lf", &d) == 1) {
			pid_t c = fork();
			if (c < 0)
				die(s, "fork");
			if (c == 0) {
				printf("child %d\n", (int)getpid());
				struct timespec t = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
				while (nanosleep(&t, &t) < 0 && errno == EINTR) {
				}
				_exit(0);
			}
		} else if (!strncmp(s, "wait:", 5)) {
			struct timespec t = { 0, 10000000 };
			while (access(s + 5, F_OK) < 0)
				nanosleep(&t, NULL);
		} else if (sscanf(s, "measure:%ld:%ld", &a, &b) == 2) {
			measure(s, a, b);
		} else {
			fprintf(stderr, "rtlat: unknown step '%s'\n", s);
			return 2;
		}
		printf("done %s tid %d cpu %d\n", s, (int)getpid(), sched_getcpu());
	}
	while (wait(NULL) > 0) {
	}
	return 0;
}
