/* The agent's log: one line per message, to stderr, or to the kernel log (/dev/kmsg)
 * when the agent runs as the guest's service, so that a `quiet` boot keeps its slow
 * console free of routine lines (dmesg still has them) while errors still show. */
#ifndef TSVMM_LOG_H
#define TSVMM_LOG_H

#include <stdarg.h>

enum { AL_ERR = 3, AL_WARN = 4, AL_INFO = 6 }; /* printk levels */

/* Sends later messages to /dev/kmsg if it can be opened; returns 0 if so. */
int log_to_kmsg(void);
void alog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void valog(int level, const char *fmt, va_list ap);

#endif
