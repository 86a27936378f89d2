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
/* Serves the device until the process is killed; exits on a fatal device error. */
void ebpf_main(const struct ebpf_opts *o) __attribute__((noreturn));

#endif
