/* Load-time replay (docs/hypercall.md §4.2): a hint program that watches a syscall which sets
 * per-task scheduling state only sees tasks that make that call after it is attached. Tasks
 * that did so before (pinned with taskset, made real time with chrt, before the host injected
 * the program) would stay invisible. So, right after a package is attached, the agent walks the
 * guest's tasks once (/proc/<pid>/task/<tid>) and, for each user task whose state differs from
 * the default, makes the same call again with the state the task already has:
 *
 *   a program on syscalls/sys_exit_sched_setaffinity -> sched_setaffinity(tid, its own mask),
 *     for tasks whose mask is not every online CPU;
 *   a program on syscalls/sys_exit_sched_setscheduler -> sched_setscheduler(tid, its own
 *     policy and priority), for SCHED_FIFO/SCHED_RR tasks.
 *
 * The kernel treats both as no-ops (same mask, same policy and priority), and the program sees
 * them through its own hook, exactly as if the task had just made the call: the agent decides
 * nothing about hint types, and the program's own bookkeeping (its map of pinned or real-time
 * tasks) is filled by the program, atomically with the call — a task that exits during the walk
 * makes the call fail (ESRCH) and reports nothing, so no record is left without its exit.
 * Kernel threads are skipped: their placement is the kernel's, not a guest application's.
 * Owns the walk only; called by ebpf.c after a successful LOAD or REPLACE. */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>

#include "bpfload.h"
#include "replay.h"

#define PF_KTHREAD 0x00200000u
#define RESET_ON_FORK 0x40000000

unsigned replay_wanted(const struct pkg *k)
{
	unsigned what = 0;
	for (uint32_t i = 0; i < k->nprogs; i++) {
		if (k->progs[i].kind != AK_TRACEPOINT)
			continue;
		if (!strcmp(k->progs[i].attach, "syscalls/sys_exit_sched_setaffinity"))
			what |= REPLAY_AFFINITY;
		if (!strcmp(k->progs[i].attach, "syscalls/sys_exit_sched_setscheduler"))
			what |= REPLAY_SCHEDULER;
	}
	return what;
}

/* Field 9 of /proc/<pid>/task/<tid>/stat (flags); UINT32_MAX when unreadable. */
static unsigned task_flags(const char *pid, const char *tid)
{
	char path[560];
	snprintf(path, sizeof path, "/proc/%s/task/%s/stat", pid, tid);
	char *s = read_small_file(path, 4096);
	unsigned flags = ~0u;
	char *p = s ? strrchr(s, ')') : NULL; /* comm may contain spaces and parentheses */
	if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %u", &flags) != 1)
		flags = ~0u;
	free(s);
	return flags;
}

static void replay_one(pid_t tid, unsigned what, int ncpus, struct replay_counts *n)
{
	if (what & REPLAY_AFFINITY) {
		cpu_set_t set;
		if (sched_getaffinity(tid, sizeof set, &set) == 0 && CPU_COUNT(&set) < ncpus) {
			if (sched_setaffinity(tid, sizeof set, &set) == 0)
				n->affinity++;
		}
	}
	if (what & REPLAY_SCHEDULER) {
		int policy = sched_getscheduler(tid);
		struct sched_param p;
		if (policy >= 0 && ((policy & ~RESET_ON_FORK) == SCHED_FIFO || (policy & ~RESET_ON_FORK) == SCHED_RR) &&
		    sched_getparam(tid, &p) == 0 && sched_setscheduler(tid, policy, &p) == 0)
			n->scheduler++;
	}
}

struct replay_counts replay_tasks(unsigned what)
{
	struct replay_counts n = { 0, 0, 0 };
	if (!what)
		return n;
	int ncpus = get_nprocs();
	DIR *procs = opendir("/proc");
	if (!procs)
		return n;
	for (struct dirent *pe; (pe = readdir(procs));) {
		if (pe->d_name[0] < '0' || pe->d_name[0] > '9')
			continue;
		char tdir[300];
		snprintf(tdir, sizeof tdir, "/proc/%s/task", pe->d_name);
		DIR *tasks = opendir(tdir);
		if (!tasks)
			continue; /* exited meanwhile */
		for (struct dirent *te; (te = readdir(tasks));) {
			if (te->d_name[0] < '0' || te->d_name[0] > '9')
				continue;
			n.tasks++;
			unsigned flags = task_flags(pe->d_name, te->d_name);
			if (flags == ~0u || (flags & PF_KTHREAD))
				continue;
			replay_one((pid_t)atoi(te->d_name), what, ncpus, &n);
		}
		closedir(tasks);
	}
	closedir(procs);
	return n;
}
