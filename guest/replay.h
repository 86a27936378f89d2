/* Load-time replay of per-task scheduling state into a newly attached hint program (replay.c). */
#ifndef TSVMM_REPLAY_H
#define TSVMM_REPLAY_H

#include "bpfload.h"

#define REPLAY_AFFINITY 1u  /* the package watches sys_exit_sched_setaffinity */
#define REPLAY_SCHEDULER 2u /* the package watches sys_exit_sched_setscheduler */

struct replay_counts {
	unsigned tasks;     /* tasks walked */
	unsigned affinity;  /* sched_setaffinity calls replayed */
	unsigned scheduler; /* sched_setscheduler calls replayed */
};

/* What the package's attach points ask to be replayed (REPLAY_* bits). */
unsigned replay_wanted(const struct pkg *k);
/* One walk over the guest's tasks, replaying `what` for each user task; counts what it did. */
struct replay_counts replay_tasks(unsigned what);

#endif
