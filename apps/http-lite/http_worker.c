/* What each loop of rx-http owns (http_worker): its setup and cleanup, its counters, and /stats,
 * which reads every loop's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"

/* Takes the first entry of a worker's free list (http_session.c keeps the next pointer in it). */
static void *list_pop(void **list) {
    void *p = *list;
    *list = *(void **)p;
    return p;
}

/* One loop's counters, each with a relaxed load: exact, though the loop may go on meanwhile. */
static void stats_read(const http_stats *st, http_totals *out) {
    out->conns_open = http_counter_get(&st->conns_open);
    out->conns_total = http_counter_get(&st->conns_total);
    out->requests = http_counter_get(&st->requests);
    out->bytes_in = http_counter_get(&st->bytes_in);
    out->bytes_out = http_counter_get(&st->bytes_out);
    for (int k = 0; k < 6; k++)
        out->by_class[k] = http_counter_get(&st->by_class[k]);
}

static void totals_add(http_totals *t, const http_totals *one) {
    t->conns_open += one->conns_open;
    t->conns_total += one->conns_total;
    t->requests += one->requests;
    t->bytes_in += one->bytes_in;
    t->bytes_out += one->bytes_out;
    for (int k = 0; k < 6; k++)
        t->by_class[k] += one->by_class[k];
}

/* Every loop's counters and their sums, from one pass of relaxed loads: the loops go on meanwhile,
 * but the totals are the sums of the per-loop values shown. The body goes into the worker's
 * buffer, sized for every loop at setup: nothing is allocated per request. */
const char *http_stats_body(http_worker *w) {
    const http_server *srv = w->srv;
    char *body = w->stats_body;
    size_t cap = w->stats_cap, n = 0;
    http_totals t = {0}, one;
    n += (size_t)snprintf(body, cap, "{\"loops\":[");
    for (unsigned i = 0; i < srv->nworkers; i++) {
        stats_read(&srv->workers[i].stats, &one);
        totals_add(&t, &one);
        n += (size_t)snprintf(
            body + n, cap - n,
            "%s{\"connections_open\":%llu,\"connections_total\":%llu,\"requests\":%llu}",
            i ? "," : "", one.conns_open, one.conns_total, one.requests);
        if (n >= cap) /* cap holds every line (see setup): this only keeps a miscount in bounds */
            n = cap - 1;
    }
    snprintf(body + n, cap - n,
             "],\"connections_open\":%llu,\"connections_total\":%llu,\"requests\":%llu,"
             "\"bytes_in\":%llu,\"bytes_out\":%llu,\"responses\":{\"1xx\":%llu,\"2xx\":%llu,"
             "\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu}}\n",
             t.conns_open, t.conns_total, t.requests, t.bytes_in, t.bytes_out, t.by_class[1],
             t.by_class[2], t.by_class[3], t.by_class[4], t.by_class[5]);
    return body;
}

void http_stats_sum(const http_server *srv, http_totals *out) {
    http_totals one;
    *out = (http_totals){0};
    for (unsigned i = 0; i < srv->nworkers; i++) {
        stats_read(&srv->workers[i].stats, &one);
        totals_add(out, &one);
    }
}

int http_session_setup(http_server *srv) {
    srv->arg_kind = HTTP_ARG_SERVER;
    unsigned n = srv->group ? rx_loop_group_size(srv->group) : 1;
    /* aligned_alloc wants a multiple of the alignment: sizeof of an _Alignas(64) struct is one. */
    http_worker *ws = aligned_alloc(_Alignof(http_worker), n * sizeof(*ws));
    /* /stats: the totals and one entry per loop, each line at most this long with 20-digit
     * counters. */
    size_t cap = 512 + (size_t)n * 128;
    if (!ws)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        http_worker *w = &ws[i];
        memset(w, 0, sizeof(*w));
        w->fresh_mark = HTTP_ARG_FRESH;
        w->idle_mark = HTTP_ARG_IDLE;
        w->srv = srv;
        w->cfg = &srv->cfg;
        w->loop = srv->group ? rx_loop_group_loop(srv->group, i) : srv->loop;
        w->stats_cap = cap;
        rx_buffer_init(&w->log_bufs[0]); /* no memory until the first line */
        rx_buffer_init(&w->log_bufs[1]);
        w->log_fill = &w->log_bufs[0];
        w->log_out = &w->log_bufs[1];
        w->stats_body = malloc(cap);
        if (!w->stats_body) {
            while (i--)
                free(ws[i].stats_body);
            free(ws);
            return -ENOMEM;
        }
    }
    srv->workers = ws;
    srv->nworkers = n;
    return 0;
}

void http_session_cleanup(http_server *srv) {
    http_log_cleanup(srv);
    for (unsigned i = 0; i < srv->nworkers; i++) {
        http_worker *w = &srv->workers[i];
        while (w->req_pool)
            free(list_pop(&w->req_pool));
        while (w->session_pool)
            free(list_pop(&w->session_pool));
        while (w->job_pool)
            free(list_pop(&w->job_pool));
        free(w->stats_body);
    }
    free(srv->workers);
    srv->workers = NULL;
    srv->nworkers = 0;
}

static void drain_worker(void *arg) {
    http_worker *w = arg;
    w->stopping = true;
}

void http_drain(void *arg) {
    http_server *srv = arg;
    for (unsigned i = 0; i < srv->nworkers; i++)
        if (rx_loop_post(srv->workers[i].loop, drain_worker, &srv->workers[i]) < 0)
            fprintf(stderr,
                    "rx-http: out of memory: a loop keeps its connections while draining\n");
}
