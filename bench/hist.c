/* hist: log-linear latency histogram (see hist.h). Values below 8 ns get one bucket each; above,
 * a value with its top bit at position e falls into one of 8 equal slices of [2^e, 2^(e+1)). */
#include "hist.h"

#include <string.h>

static unsigned bucket_of(uint64_t v) {
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= HIST_SUB_BITS */
    unsigned sub = (unsigned)(v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1);
    return (e - HIST_SUB_BITS + 1) * HIST_SUB + sub;
}

/* Lowest value and width of a bucket. */
static void bucket_range(unsigned b, uint64_t *lo, uint64_t *width) {
    if (b < HIST_SUB) {
        *lo = b;
        *width = 1;
        return;
    }
    unsigned e = b / HIST_SUB + HIST_SUB_BITS - 1;
    *width = (uint64_t)1 << (e - HIST_SUB_BITS);
    *lo = ((uint64_t)1 << e) + (uint64_t)(b % HIST_SUB) * *width;
}

void hist_init(struct hist *h) {
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

void hist_add(struct hist *h, uint64_t ns) {
    h->bucket[bucket_of(ns)]++;
    h->count++;
    h->sum_ns += ns;
    if (ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

void hist_merge(struct hist *into, const struct hist *from) {
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->bucket[i] += from->bucket[i];
    into->count += from->count;
    into->sum_ns += from->sum_ns;
    if (from->min_ns < into->min_ns)
        into->min_ns = from->min_ns;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
}

uint64_t hist_quantile(const struct hist *h, double q) {
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count)
        rank = h->count - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += h->bucket[b];
        if (seen > rank) {
            uint64_t lo, width;
            bucket_range(b, &lo, &width);
            uint64_t v = lo + width / 2;
            return v < h->min_ns ? h->min_ns : v > h->max_ns ? h->max_ns : v;
        }
    }
    return h->max_ns;
}
