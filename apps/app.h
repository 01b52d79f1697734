/* What rx-echo and rx-http share: number options, and --tune, the switches that turn one C10K
 * technique off so bench/run can measure what each is worth (docs/c10k.md). */
#ifndef RX_APPS_APP_H
#define RX_APPS_APP_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <rx/rx.h>

/* Parses a decimal count (digits only, no sign) up to max. Returns 0, or -1 when malformed. */
static inline int app_parse_count(const char *s, unsigned long long max, unsigned long long *out) {
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Raises the soft limit of open files to the hard one, as nginx's worker_rlimit_nofile does: a
 * shell's usual soft limit of 1024 would cap a C10K demo at about 1,000 connections. Returns the
 * soft limit in force afterwards. */
static inline unsigned long long app_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (unsigned long long)rl.rlim_cur;
}

/* A warning when the listener sheds connections for lack of fds: at most one line a second, with
 * the count since the last one. */
typedef struct app_shed {
    const char *prog;
    rx_loop *loop;
    uint64_t next_ms;
    unsigned long long unreported;
} app_shed;

static inline void app_on_shed(rx_listener *l, app_shed *w) {
    w->unreported++;
    uint64_t now = rx_loop_now_ms(w->loop);
    if (now < w->next_ms)
        return;
    fprintf(stderr,
            "%s: out of file descriptors: %llu connection(s) closed at once (%llu in all); raise "
            "the open files limit (ulimit -n) or lower the load\n",
            w->prog, w->unreported, rx_listener_shed(l));
    w->unreported = 0;
    w->next_ms = now + 1000;
}

/* The switches every server has; app-specific ones are passed in `app` (names) and reported in
 * `app_on` (same order). */
#define TUNE_COMMON "edge, own-buffers, always-queue, nagle, accept-one, no-backpressure"

/* Applies a comma-separated list. Returns 0, or -1 after printing which name is unknown. */
static inline int tune_apply(const char *prog, const char *list, rx_server_opts *opts,
                             bool *backpressure, const char *const *app, bool *app_on) {
    char copy[256];
    if (strlen(list) >= sizeof(copy)) {
        fprintf(stderr, "%s: --tune list too long\n", prog);
        return -1;
    }
    strcpy(copy, list);
    for (char *save = NULL, *name = strtok_r(copy, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        if (!strcmp(name, "edge"))
            opts->conn.edge_triggered = true;
        else if (!strcmp(name, "own-buffers"))
            opts->conn.own_buffers = true;
        else if (!strcmp(name, "always-queue"))
            opts->conn.always_queue = true;
        else if (!strcmp(name, "nagle"))
            opts->conn.nagle = true;
        else if (!strcmp(name, "accept-one"))
            opts->listener.accept_batch = 1;
        else if (!strcmp(name, "no-backpressure"))
            *backpressure = false;
        else {
            size_t i = 0;
            while (app && app[i] && strcmp(name, app[i]))
                i++;
            if (!app || !app[i]) {
                fprintf(stderr, "%s: unknown --tune switch '%s'\n", prog, name);
                return -1;
            }
            app_on[i] = true;
        }
    }
    return 0;
}

#endif
