/* The agent's log sink (see log.h). Owns the /dev/kmsg fd; nothing else. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

static int kmsg = -1;

int log_to_kmsg(void)
{
	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	return kmsg < 0 ? -1 : 0;
}

void valog(int level, const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof line, "<%d>tsvmm-agent: ", level);

	n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	/* One write per line: kmsg takes a record per write, and lines from the agent's
	 * processes must not interleave on stderr. */
	if (kmsg >= 0 && write(kmsg, line, (size_t)n) == n)
		return;
	if (write(2, line + 3, (size_t)(n - 3)) < 0) {
	}

}

void alog(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	valog(level, fmt, ap);
	va_end(ap);
}
