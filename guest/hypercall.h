/* Hypercall device layouts as the agent sees them: registers, commands, statuses, the
 * shared-memory header and every mailbox message. C twin of devices/hypercall/registers.ts
 * and shmem.ts; docs/hypercall.md is the reference. No code here. */
#ifndef TSVMM_HYPERCALL_H
#define TSVMM_HYPERCALL_H

#define HC_MAGIC 0x4d565354u /* "TSVM" */
#define HC_VERSION 1
#define HC_IO_LEN 0x40

/* Registers (u32, port I/O at base + offset). */
#define HC_REG_MAGIC 0x00
#define HC_REG_VERSION 0x04
#define HC_REG_FEATURES 0x08
#define HC_REG_DOORBELL_PORT 0x0c
#define HC_REG_SHM_BASE_LO 0x10
#define HC_REG_SHM_BASE_HI 0x14
#define HC_REG_SHM_SIZE 0x18
#define HC_REG_PENDING 0x1c
#define HC_REG_COMMAND 0x20
#define HC_REG_STATUS 0x24
#define HC_REG_RESULT 0x28
#define HC_REG_SEQ 0x2c

enum hc_cmd { HC_HELLO = 1, HC_FETCH = 2, HC_REPORT = 3, HC_HINTS = 4 };
enum hc_status {
	HC_OK = 0, HC_E_UNKNOWN = 1, HC_E_STATE = 2, HC_E_LENGTH = 3, HC_E_INVALID = 4,
	HC_E_NOREQ = 5, HC_E_VERSION = 6, HC_E_RATE = 7, HC_E_ACCESS = 8,
};

/* FEATURES register bits. */
#define HC_FEAT_HINT_SOURCE (1u << 0)

/* HELLO capability bits. */
#define HC_CAP_DIGEST_ALLOWLIST (1u << 0)
#define HC_CAP_HINTS (1u << 3)
#define HC_CAP_REPLACE (1u << 4)
#define HC_CAP_HINT_SOURCE (1u << 5)

/* Shared memory header (u32 fields). */
#define SHM_MAGIC 0x4d485354u /* "TSHM" */
#define SHM_VERSION 1
#define SHM_H_MAGIC 0x00
#define SHM_H_VERSION 0x04
#define SHM_H_H2G_OFF 0x08
#define SHM_H_H2G_SIZE 0x0c
#define SHM_H_G2H_OFF 0x10
#define SHM_H_G2H_SIZE 0x14
#define SHM_H_H2G_LEN 0x18
#define SHM_H_H2G_SEQ 0x1c
#define SHM_H_G2H_LEN 0x20
#define SHM_H_G2H_SEQ 0x24
#define SHM_H_G2H_ACK 0x28
#define SHM_HDR_PAGE 0x1000

/* HELLO message: u32 version, u32 caps, u32 pid, u32 name_len, name. */
#define HELLO_HDR 0x10
#define HELLO_MAX_NAME 256

/* Request (h2g): u32 op, u32 request_id, u32 handle, u32 body_len, u8 digest[32],
 * u8 name[32], package. */
enum hc_op { OP_LOAD = 1, OP_UNLOAD = 2, OP_REPLACE = 3, OP_MAP_UPDATE = 4 };
#define REQ_OP 0x00
#define REQ_ID 0x04
#define REQ_HANDLE 0x08
#define REQ_BODY_LEN 0x0c
#define REQ_DIGEST 0x10
#define REQ_NAME 0x30
#define REQ_NAME_LEN 32
#define REQ_BODY 0x50

/* MAP_UPDATE body (the request's name field names the map): u32 key_len, u32 value_len,
 * u64 flags (BPF_ANY/NOEXIST/EXIST), key, value. */
#define MU_KEY_LEN 0x00
#define MU_VALUE_LEN 0x04
#define MU_FLAGS 0x08
#define MU_DATA 0x10

/* REPORT: u32 request_id, u32 outcome, u32 errno, u32 prog_count, u32 text_len, u32 0,
 * u32 prog_ids[prog_count], text. */
enum hc_outcome { OUT_OK = 0, OUT_REFUSED = 1, OUT_VERIFIER = 2, OUT_BADPKG = 3, OUT_NOENT = 4, OUT_FAILED = 5 };
#define REPORT_HDR 0x18
#define REPORT_MAX_PROGS 64

/* HINTS: u32 record_count, u32 dropped, records (u32 type, u32 len incl. header, payload,
 * zero padding to 8). */
#define HINTS_HDR 0x08
#define RECORD_HDR 0x08
/* SOURCE record (type 0, reserved: programs may not write it): u32 type, u32 len = 16,
 * u32 handle, u32 0. The records after it came from the ring of that handle's package. */
#define SOURCE_TYPE 0
#define SOURCE_LEN 0x10

#endif
