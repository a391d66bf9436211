/* What native.c and loop.c share: migrator's record header (bpf/migrator.h, read through
 * HDR_GET), the buffers' record layouts, and the passes loop.c calls for each drain. */
#ifndef MIGRATOR_NATIVE_H
#define MIGRATOR_NATIVE_H
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#define MIGRATOR_USERSPACE
#include <migrator.h>

#define HDR_SIZE sizeof(struct migrator_hdr)
/* Field f of the (possibly unaligned) header at byte pointer p, as the struct's own type. */
#define HDR_GET(p, f)                                                                            \
    ({                                                                                           \
        __typeof__(((struct migrator_hdr *)0)->f) v_;                                            \
        memcpy(&v_, (p) + offsetof(struct migrator_hdr, f), sizeof(v_));                        \
        v_;                                                                                      \
    })
/* The epoch bits of a header's flags (migrator.h EPOCHS). */
#define HDR_EPOCH(p) ((HDR_GET(p, flags) & MIGRATOR_FLAG_EPOCH_MASK) >> 2)
#define HDR_MODE(p) (HDR_GET(p, flags) & MIGRATOR_FLAG_MODE_MASK)
/* BPF ring buffer (kernel/bpf/ringbuf.c): u32 len (bit 31 busy, bit 30 discard), u32 pgoff. */
#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_HDR 8
/* perf: perf_event_header (u32 type, u16 misc, u16 size), then for a sample u32 raw size. */
#define PERF_RECORD_LOST 2
#define PERF_RECORD_SAMPLE 9
#define SAMPLE_HDR 12
#define OFF_DATA_HEAD 1024
#define OFF_DATA_TAIL 1032

enum { R_END, R_N, R_ERRORS, R_BYTES, R_STRIDE, R_FIRST, R_LOST, R_NRES };

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }


void mg_ring_gather(const uint8_t *data, uint64_t mask, const uint64_t *cons_p, const uint64_t *prod_p,
                    uint64_t max_records, uint64_t max_bytes, uint8_t *hdr, int64_t *off, uint64_t cap, int64_t *res);
void mg_ring_take(const uint8_t *data, uint64_t mask, uint64_t *cons_p, const uint64_t *prod_p,
                  uint64_t max_records, uint8_t *buf, uint64_t buf_cap, uint8_t *hdr, int64_t *off,
                  uint64_t cap, int64_t *res);
uint64_t mg_perf_pending(uint8_t *const *pages, int ncpu, uint64_t *heads);
void mg_perf_take(uint8_t *const *pages, const uint64_t *data_off, const uint64_t *data_size,
                  const uint64_t *heads, int ncpu, uint8_t *buf, uint8_t *hdr, int64_t *off, uint64_t cap,
                  int64_t *res);
void mg_pair(uint64_t nb, const int64_t *desc, uint64_t *tseq, uint64_t *tdig, uint8_t *tside, uint64_t mask,
             uint8_t *scratch, int64_t max_evidence, int64_t *out);
void mg_meter(const uint8_t *hdr, int64_t hdr_stride, uint64_t n, const int64_t *counts, const int64_t *now_ns,
              uint64_t nb, int64_t *hist, int64_t nbins, int64_t *st, int64_t *by_epoch);

#endif
