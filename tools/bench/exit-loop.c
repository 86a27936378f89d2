// exit-loop: the C twin of tsvmm's vCPU run loop, for tools/bench/exits.ts. It sets up a VM
// exactly as that benchmark's tsvmm side does (one RAM slot at guest physical 0, one vCPU in
// real mode with CS base 0) and runs KVM_RUN, counting port I/O exits until the guest halts.
// The guest code and the memory layout come from the command line, so they are defined once,
// in tools/bench/exits/lib.ts. Only libc and <linux/kvm.h>; builds with -static.
//
//   exit-loop [--forward] MEM_BYTES LOAD_ADDR HEX_CODE
//
// --forward: the peer of tsvmm's forwarded exits. The KVM_RUN thread does not answer a port
// exit itself: it hands it to a second thread (the "device thread") through a shared word and a
// futex, as tsvmm's vCPU worker hands it to the main thread through its mailbox (Atomics.wait
// and Atomics.notify are futexes too), and waits for the answer before the next KVM_RUN. What
// is measured is the cost of that hand-off in C: two thread wake-ups per exit, no event loop.
//
// Prints one JSON line {"exits":..,"seconds":..,"exits_per_sec":..}: the clock (CLOCK_MONOTONIC)
// runs from the first KVM_RUN to the HLT exit. Exit status 2 for usage errors, 1 for a failed
// call (named, with errno) or an exit the loop does not expect.
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void die(const char *call) {
	int e = errno;
	fprintf(stderr, "exit-loop: %s failed: %s (errno %d)\n", call, strerror(e), e);
	exit(1);
}

static void usage(const char *why) {
	fprintf(stderr, "exit-loop: %s\nusage: exit-loop [--forward] MEM_BYTES LOAD_ADDR HEX_CODE\n", why);
	exit(2);
}

static uint64_t number(const char *s, const char *what) {
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-') {
		fprintf(stderr, "exit-loop: %s is not a number: %s\n", what, s);
		usage("bad argument");
	}
	return v;
}

static int nibble(char c) {
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* Decodes hex into out (at most max bytes); returns the length or -1. */
static long unhex(const char *hex, uint8_t *out, size_t max) {
	size_t n = strlen(hex);
	if (n == 0 || n % 2 || n / 2 > max) return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return (long)(n / 2);
}

static double now(void) {
	struct timespec t;
	if (clock_gettime(CLOCK_MONOTONIC, &t)) die("clock_gettime(CLOCK_MONOTONIC)");
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/*
 * The hand-off of --forward. `request` counts accesses posted by the KVM_RUN thread, `answered`
 * those the device thread has served; each side sleeps on the other's word. `data` is the access
 * (kvm_run's I/O data), read and written by the device thread only between the two counts.
 */
static struct {
	_Atomic uint32_t request, answered;
	uint8_t *data;
	uint32_t size;
	uint8_t sink;
} handoff;

static void futex_wait(_Atomic uint32_t *word, uint32_t seen) {
	if (syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0) < 0 && errno != EAGAIN && errno != EINTR) die("futex(FUTEX_WAIT)");
}

static void futex_wake(_Atomic uint32_t *word) {
	if (syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0) < 0) die("futex(FUTEX_WAKE)");
}

/* The device thread: serves each posted access (a do-nothing port, as the benchmark's bus device). */
static void *device_thread(void *unused) {
	(void)unused;
	for (uint32_t served = 0;;) {
		uint32_t posted;
		while ((posted = atomic_load(&handoff.request)) == served) futex_wait(&handoff.request, served);
		for (uint32_t i = 0; i < handoff.size; i++) handoff.sink ^= handoff.data[i];
		served = posted;
		atomic_store(&handoff.answered, served);
		futex_wake(&handoff.answered);
	}
	return NULL;
}

/* Posts one access to the device thread and sleeps until it is answered. */
static void forward(uint8_t *data, uint32_t size) {
	handoff.data = data;
	handoff.size = size;
	uint32_t n = atomic_load(&handoff.request) + 1;
	atomic_store(&handoff.request, n);
	futex_wake(&handoff.request);
	uint32_t seen;
	while ((seen = atomic_load(&handoff.answered)) != n) futex_wait(&handoff.answered, seen);
}

int main(int argc, char **argv) {
	int forwarding = argc > 1 && strcmp(argv[1], "--forward") == 0;
	argv += forwarding;
	argc -= forwarding;
	if (argc != 4) usage("expected 3 arguments");
	uint64_t mem_size = number(argv[1], "MEM_BYTES");
	uint64_t load = number(argv[2], "LOAD_ADDR");
	if (mem_size == 0 || mem_size % 4096 || mem_size > (1u << 30)) usage("MEM_BYTES must be a multiple of 4096, at most 1 GiB");
	if (load >= mem_size) usage("LOAD_ADDR lies outside MEM_BYTES");
	uint8_t code[4096];
	long len = unhex(argv[3], code, sizeof code);
	if (len < 0) usage("HEX_CODE must be 1..4096 bytes as an even number of hex digits");
	if (load + (uint64_t)len > mem_size) usage("the code does not fit in MEM_BYTES at LOAD_ADDR");

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("open(/dev/kvm)");
	int version = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (version < 0) die("KVM_GET_API_VERSION");
	if (version != KVM_API_VERSION) {
		fprintf(stderr, "exit-loop: KVM API version %d, need %d\n", version, KVM_API_VERSION);
		return 1;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");

	uint8_t *ram = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED) die("mmap(guest RAM)");
	memcpy(ram + load, code, (size_t)len);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uintptr_t)ram,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) die("mmap(kvm_run)");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = load, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

	if (forwarding) {
		pthread_t device;
		int e = pthread_create(&device, NULL, device_thread, NULL);
		if (e) {
			errno = e;
			die("pthread_create(device thread)");
		}
	}
	uint64_t exits = 0;
	double t0 = now();
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) continue;
			die("KVM_RUN");
		}
		if (run->exit_reason == KVM_EXIT_IO) {
			exits++;
			if (forwarding) forward((uint8_t *)run + run->io.data_offset, (uint32_t)run->io.size * run->io.count);
			continue;
		}
		if (run->exit_reason == KVM_EXIT_HLT) break;
		fprintf(stderr, "exit-loop: unexpected exit reason %u after %llu port exits\n", run->exit_reason, (unsigned long long)exits);
		return 1;
	}
	double secs = now() - t0;
	printf("{\"exits\":%llu,\"seconds\":%.6f,\"exits_per_sec\":%.1f}\n", (unsigned long long)exits, secs, secs > 0 ? (double)exits / secs : 0.0);
	return 0;
}
