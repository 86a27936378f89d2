/* Program package layout (format version 1) as the agent parses it. C twin of
 * bpf/package.ts; docs/bpf.md is the reference. No code here. */
#ifndef TSVMM_BPFPKG_H
#define TSVMM_BPFPKG_H

#define PKG_MAGIC "TSVMMBPF"
#define PKG_VERSION 1
#define PKG_HEADER_SIZE 128
#define PKG_MAP_SIZE 64
#define PKG_PROG_HDR_SIZE 64
#define PKG_RELOC_SIZE 8
#define PKG_DIGEST_SIZE 32
#define PKG_MAX_MAPS 64
#define PKG_MAX_PROGS 64
#define PKG_NO_HINT_MAP 0xffffffffu
#define PKG_MAX_ATTACH 511
#define PKG_MAX_INSNS 1000000u
#define PKG_MAX_RELOCS 65535u

/* Header */
#define PH_MAGIC 0
#define PH_VERSION 8       /* u16 */
#define PH_HEADER_SIZE 10  /* u16 */
#define PH_TOTAL_SIZE 12   /* u32 */
#define PH_MAP_COUNT 16    /* u16 */
#define PH_PROG_COUNT 18   /* u16 */
#define PH_HINT_MAP 20     /* u32 */
#define PH_RESERVED 24     /* 8 bytes */
#define PH_NAME 32         /* 48 bytes */
#define PH_LICENSE 80      /* 48 bytes */

/* Map record */
#define PM_NAME 0 /* 32 bytes */
#define PM_TYPE 32
#define PM_KEY_SIZE 36
#define PM_VALUE_SIZE 40
#define PM_MAX_ENTRIES 44
#define PM_FLAGS 48
#define PM_RESERVED 52 /* 12 bytes */

/* Program record */
#define PP_NAME 0 /* 32 bytes */
#define PP_PROG_TYPE 32
#define PP_ATTACH_KIND 36
#define PP_ATTACH_LEN 40
#define PP_INSN_COUNT 44
#define PP_RELOC_COUNT 48
#define PP_RECORD_SIZE 52
#define PP_RESERVED 56 /* 8 bytes */
#define PP_ATTACH 64

enum pkg_attach { AK_KPROBE = 1, AK_KRETPROBE = 2, AK_TRACEPOINT = 3, AK_RAW_TRACEPOINT = 4, AK_FENTRY = 5, AK_FEXIT = 6 };
enum pkg_reloc { RK_MAP_FD = 1, RK_MAP_VALUE = 2 };

#endif
