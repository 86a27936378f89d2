/*
 * hint-probe: the guest end of the hint latency benchmark (tools/bench/hints.ts). Owns only its
 * line protocol below; knows nothing of tsvmm. Reads one command per line on stdin and answers
 * one line on stdout for each (flushed at once):
 *
 *   clock        -> "clock <ns>"                  CLOCK_MONOTONIC now (the host maps clocks with it)
 *   pin <cpu>    -> "pinned <tid> <cpu> <ns>"     a new thread pins itself to <cpu> with
 *                                                 sched_setaffinity(2) and reads CLOCK_MONOTONIC as
 *                                                 soon as the call returns; then it waits
 *   release      -> "released"                    the pinned thread exits (the affinity program
 *                                                 reports that as its UNPIN)
 *   anything else, or EOF -> exit
 *
 * The pinned thread lives until `release` (or the next command): had it exited at once, its pin
 * and its exit could reach the host in one batch, which the host's scheduler plans as one turn —
 * nothing to apply, nothing to time.
 *
 * A thread per sample gives every sample its own task id, so the host can match the pin it
 * made to this very call. Exit status 0, or 1 when a pin failed (the line says why).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The pinned thread reads this pipe until main closes its write end (release). */
static int hold[2] = { -1, -1 };
static pthread_t pinned;
static int have_pinned;

static void *pin_thread(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	char c;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	int rc = sched_setaffinity(0, sizeof set, &set);
	uint64_t t = now_ns();
	if (rc != 0) {
		printf("error pin %d: %s\n", cpu, strerror(errno));
		fflush(stdout);
		return (void *)1;
	}
	printf("pinned %ld %d %llu\n", (long)syscall(SYS_gettid), cpu, (unsigned long long)t);
	fflush(stdout);
	while (read(hold[0], &c, 1) > 0)
		;
	return NULL;
}

/* Ends the pinned thread, if any; 1 when its pin had failed. */
static int release(void)
{
	void *failed = NULL;
	if (!have_pinned) return 0;
	close(hold[1]);
	pthread_join(pinned, &failed);
	close(hold[0]);
	have_pinned = 0;
	return failed != NULL;
}

int main(void)
{
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		int cpu;
		if (release()) return 1;
		if (strcmp(line, "clock\n") == 0) {
			printf("clock %llu\n", (unsigned long long)now_ns());
			fflush(stdout);
		} else if (sscanf(line, "pin %d", &cpu) == 1 && cpu >= 0 && cpu < CPU_SETSIZE) {
			if (pipe(hold) != 0 || pthread_create(&pinned, NULL, pin_thread, (void *)(intptr_t)cpu) != 0) return 1;
			have_pinned = 1;
		} else if (strcmp(line, "release\n") == 0) {
			printf("released\n");
			fflush(stdout);
		} else {
			break;
		}
	}
	return release();
}
