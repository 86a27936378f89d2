/*
 * hint-probe: the guest end of the hint latency benchmark (tools/bench/hints.ts). Owns only its
 * line protocol below; knows nothing of tsvmm. Reads one command per line on stdin and answers
 * one line on stdout for each (flushed at once):
 *
 *   clock        -> "clock <ns>"                  CLOCK_MONOTONIC now (the host maps clocks with it)
 *   pin <cpu>    -> "pinned <tid> <cpu> <ns>"     a new thread pins itself to <cpu> with
 *                                                 sched_setaffinity(2) and reads CLOCK_MONOTONIC as
 *                                                 soon as the call returns; then it exits, which
 *                                                 the affinity program reports as its UNPIN
 *   anything else, or EOF -> exit
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

static void *pin_thread(void *arg)
{
	int cpu = (int)(intptr_t)arg;
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
	return NULL;
}

int main(void)
{
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		int cpu;
		if (strcmp(line, "clock\n") == 0) {
			printf("clock %llu\n", (unsigned long long)now_ns());
			fflush(stdout);
		} else if (sscanf(line, "pin %d", &cpu) == 1 && cpu >= 0 && cpu < CPU_SETSIZE) {
			pthread_t th;
			void *failed = NULL;
			if (pthread_create(&th, NULL, pin_thread, (void *)(intptr_t)cpu) != 0) return 1;
			pthread_join(th, &failed);
			if (failed) return 1;
		} else {
			break;
		}
	}
	return 0;
}
