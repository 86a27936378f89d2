/* Entry points of the agent's eBPF side (ebpf.c), run in its own process by agent.c. */
#ifndef TSVMM_EBPF_H
#define TSVMM_EBPF_H

struct ebpf_opts {
	const char *sim;          /* "REGSOCK,SHMFILE,DOORBELLSOCK": device simulated over Unix sockets (tests) */
	const char *cmdline_path; /* /proc/cmdline */
	const char *allow_path;   /* /etc/tsvmm/allowed-digests */
};

/* True when there is a hypercall device to serve (tsvmm.hypercall= on the command line, or sim). */
int ebpf_wanted(const struct ebpf_opts *o);
/* Exit status of ebpf_main when there is no usable device: restarting would not help. */
#define EBPF_EXIT_NO_DEVICE 3

/* Serves the device until the process is killed. Exits 1 on an error a restart may cure
 * (the host went away, a refused HELLO), EBPF_EXIT_NO_DEVICE when there is no device. */
void ebpf_main(const struct ebpf_opts *o) __attribute__((noreturn));

/* --try-package FILE: load, attach, print hints for `seconds`, unload; no device needed. */
int ebpf_try(const char *path, unsigned seconds);

#endif
