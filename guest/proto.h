/* Wire protocol between the host (vmm/agent/protocol.ts) and tsvmm-agent: message types,
 * limits, error codes and the little-endian field helpers. docs/agent-protocol.md is the
 * reference; this header is its C twin and must change together with it and with
 * vmm/agent/protocol.ts. Owns nothing else (no I/O here). */
#ifndef TSVMM_PROTO_H
#define TSVMM_PROTO_H

#include <stdint.h>
#include <string.h>

#define PROTO_MAGIC 0x41565354u /* "TSVA" as bytes on the wire */
#define PROTO_VERSION 1
#define AGENT_VERSION "tsvmm-agent 0.1.0"
#define AGENT_DEFAULT_PORT 52

/* Frame header: u16 type, u16 reserved (0), u32 payload length. */
#define HDR_SIZE 8
#define MAX_PAYLOAD (1u << 20)   /* any frame */
#define MAX_DATA_CHUNK (1u << 16) /* STDOUT/STDERR/GET_DATA chunks the agent sends */
#define STDIN_WINDOW (256u << 10) /* stdin bytes the host may have in flight */
#define MAX_PATH_LEN 4096
#define MAX_ARGS 4096
#define MAX_ERROR_MSG 1024

enum msg_type {
	/* host -> agent */
	T_HELLO = 0x0001,     /* u32 magic, u16 min_version, u16 max_version */
	T_PING = 0x0002,      /* u64 nonce */
	T_EXEC = 0x0010,      /* u32 flags, u32 argc, u32 envc, str cwd, argc*str, envc*str */
	T_STDIN = 0x0011,     /* bytes */
	T_STDIN_EOF = 0x0012, /* empty */
	T_SIGNAL = 0x0013,    /* u32 signo */
	T_PUT = 0x0020,       /* u32 mode, u32 flags (PUT_MKDIRS), str path */
	T_PUT_DATA = 0x0021,  /* bytes */
	T_PUT_END = 0x0022,   /* u64 total size */
	T_GET = 0x0030,       /* str path */
	/* agent -> host */
	T_HELLO_ACK = 0x8001,    /* u32 magic, u16 version, u16 features, u32 max_payload, utf8 agent */
	T_PONG = 0x8002,         /* u64 nonce, utf8 agent */
	T_EXEC_STARTED = 0x8010, /* u32 pid, u32 stdin credit */
	T_STDOUT = 0x8011,       /* bytes */
	T_STDERR = 0x8012,       /* bytes */
	T_STDIN_CREDIT = 0x8013, /* u32 bytes */
	T_EXIT = 0x8014,         /* u32 kind, u32 value, u32 flags */
	T_PUT_DONE = 0x8020,     /* u64 size */
	T_GET_INFO = 0x8030,     /* u64 size (hint), u32 mode */
	T_GET_DATA = 0x8031,     /* bytes */
	T_GET_END = 0x8032,      /* u64 total size */
	T_ERROR = 0x80ff,        /* u32 code, i32 errno, utf8 message */
};

/* HELLO_ACK features: what this agent does beyond protocol version 1 as first published. A host
 * uses a feature only when the agent announced it; an agent that predates the field sends 0. */
#define FEATURE_PUT_MKDIRS 1u /* PUT honours PUT_MKDIRS */
#define AGENT_FEATURES FEATURE_PUT_MKDIRS

#define PUT_MKDIRS 1u /* create missing parent directories (mode 0755), as mkdir -p */

#define EXEC_CLEAR_ENV 1u
#define EXIT_EXITED 1u
#define EXIT_SIGNALED 2u
#define EXIT_CORE_DUMPED 1u

enum err_code {
	E_PROTO = 1,        /* malformed frame or payload */
	E_UNKNOWN_TYPE = 2, /* message type not defined */
	E_TOO_LARGE = 3,    /* length over MAX_PAYLOAD */
	E_VERSION = 4,      /* no common protocol version */
	E_SPAWN = 5,        /* exec: chdir/execvp failed (errno set) */
	E_IO = 6,           /* put/get: file error (errno set) */
	E_BUSY = 7,         /* too many connections */
	E_STATE = 8,        /* known type, not valid at this point */
	E_INTERNAL = 9,     /* agent-side failure (fork, pipe, ...) */
};

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }

#endif
