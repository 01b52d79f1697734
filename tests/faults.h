/* Seeded fault schedules through the rx_sys layer: from one seed, every call rx makes (I/O,
 * accept, epoll_ctl, allocation, file) either runs normally or fails in a way the call really
 * can: a short count, EAGAIN, EINTR, a reset (ECONNRESET, EPIPE, ECONNABORTED) or ENOMEM. The
 * same seed on the same call sequence makes the same decisions. Single-threaded users only. */
#ifndef RX_TEST_FAULTS_H
#define RX_TEST_FAULTS_H

#include <stddef.h>
#include <stdint.h>

typedef enum tf_kind { TF_SHORT, TF_EAGAIN, TF_EINTR, TF_RESET, TF_ENOMEM, TF_KINDS } tf_kind;

/* The chance, per call that can fail that way, of each kind, in parts per 10,000. */
typedef struct tf_plan {
    unsigned per10k[TF_KINDS];
} tf_plan;

/* A plan drawn from the seed: for each kind none, a little, some or a lot, so that one campaign
 * covers calm runs, runs full of retries, and runs where every connection dies early. */
tf_plan tf_plan_for(uint64_t seed);

/* "short 5.00% eagain 0% ..." into buf. */
void tf_plan_describe(const tf_plan *p, char *buf, size_t cap);

/* Routes rx_sys through the injectors with the plan, its random stream started from seed, and
 * zeroed counters. tf_stop puts libc back (rx_sys_reset); the counters stay readable. */
void tf_start(uint64_t seed, const tf_plan *plan);
void tf_stop(void);

/* What the schedule did since tf_start. */
typedef struct tf_counts {
    unsigned long long calls; /* calls that went through an injector */
    unsigned long long injected[TF_KINDS];
    unsigned long long accepted; /* sockets the real accept4 returned */
} tf_counts;
extern tf_counts tf_count;

/* A small deterministic generator (splitmix64), also for the tests' own choices. */
uint64_t tf_rand(uint64_t *state);

#endif
