/* Program packages in the guest: parsing (docs/bpf.md), loading with raw bpf(2),
 * attaching, and mapping the hint ring buffer. Used by ebpf.c, which owns the device,
 * the policy and the event loop; this part never talks to the host. */
#ifndef TSVMM_BPFLOAD_H
#define TSVMM_BPFLOAD_H

#include <stddef.h>
#include <stdint.h>
#include "bpfpkg.h"

struct pkg_map {
	char name[32];
	uint32_t type, key_size, value_size, max_entries, flags;
};

struct pkg_prog {
	char name[32];
	uint32_t prog_type, kind, insn_count, reloc_count;
	char attach[PKG_MAX_ATTACH + 1];
	const uint8_t *insns, *relocs;
};

struct pkg {
	char name[48], license[48];
	uint32_t nmaps, nprogs, hint_map;
	struct pkg_map maps[PKG_MAX_MAPS];
	struct pkg_prog progs[PKG_MAX_PROGS];
};

struct ring {
	int fd; /* the map fd (not owned: closed with the maps) */
	uint8_t *cons, *prod, *data;
	size_t size, page;
};

struct loaded {
	uint32_t handle;
	char name[48];
	uint32_t nmaps, nprogs;
	int map_fds[PKG_MAX_MAPS], prog_fds[PKG_MAX_PROGS], link_fds[PKG_MAX_PROGS];
	struct pkg_map maps[PKG_MAX_MAPS]; /* as the package declared them: MAP_UPDATE checks sizes */
	uint32_t prog_ids[PKG_MAX_PROGS];
	struct ring ring;
};

/* The outcome of one request, as REPORT carries it. */
struct result {
	uint32_t outcome, err;
	char *text; /* malloc, may be NULL */
	size_t text_len;
};

/* Checks every rule of docs/bpf.md; -1 with the reason in `why`. Pointers in `k` point
 * into `b`, which must outlive it. */
int pkg_parse(const uint8_t *b, uint32_t len, struct pkg *k, char *why, size_t whysz);
/* Creates the maps, loads and attaches every program, maps the hint ring and adds it to
 * `epfd` (data.ptr = the result); all or nothing: NULL with `r` set on failure. */
struct loaded *load_package(const struct pkg *k, uint32_t handle, int epfd, struct result *r);
/* bpf_map_update_elem on map `map` of `l` after checking key/value sizes against it; 0, or -1
 * with `r` set (NOENT for an unknown map, FAILED with the errno otherwise). */
int map_update(struct loaded *l, const char *map, const uint8_t *key, uint32_t key_len, const uint8_t *value, uint32_t value_len,
	       uint64_t flags, struct result *r);
/* Detaches and closes everything of `l`, and frees it. */
void unload(struct loaded *l, int epfd);
void set_result(struct result *r, uint32_t outcome, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The whole of a small file, NUL-terminated (malloc), or NULL. */
char *read_small_file(const char *path, size_t max);

#endif
