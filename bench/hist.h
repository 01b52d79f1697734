/* hist: a log-linear latency histogram for the benches: 8 sub-buckets per power of two over
 * nanoseconds (at most 12.5 % relative error), a fixed size, so it can be sent through a pipe as
 * plain bytes and merged by adding the counts. */
#ifndef RX_BENCH_HIST_H
#define RX_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 3
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (64 * HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t min_ns, max_ns;
    uint64_t bucket[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_add(struct hist *h, uint64_t ns);
void hist_merge(struct hist *into, const struct hist *from);
/* The value at quantile q (0..1) in nanoseconds: the middle of the bucket that holds it,
 * clamped to the observed min and max. 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
