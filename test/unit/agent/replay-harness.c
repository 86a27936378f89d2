/* Runs the agent's load-time replay walk (guest/replay.c) once and prints what it did:
 * `tasks N affinity N scheduler N`. argv[1]: the REPLAY_* bits. Used by replay.test.ts inside
 * a fresh pid namespace, so the walk sees only the test's own tasks. */
#include <stdio.h>
#include <stdlib.h>
#include "replay.h"

int main(int argc, char **argv)
{
	struct replay_counts n = replay_tasks(argc > 1 ? (unsigned)atoi(argv[1]) : 0);
	printf("tasks %u affinity %u scheduler %u\n", n.tasks, n.affinity, n.scheduler);
	return 0;
}
