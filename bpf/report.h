/* What the programs tell userspace: counters (read at scrape time by fileserver/metrics.py) and
 * close events (read by a thread of fileserver/kernel.py). */
#pragma once
#include "maps.h"

static __always_inline void count(int field_offset)
{
    int zero = 0;
    struct counters *c = counters.lookup(&zero);
    if (c)
        __sync_fetch_and_add((__u64 *)((__u8 *)c + field_offset), 1);
}
#define COUNT(field) count(offsetof(struct counters, field))
/* The masks keep any code inside the arrays, which reasons.h sizes to PASS_SLOTS and ERROR_SLOTS. */
#define COUNT_PASS(r) count(offsetof(struct counters, pass) + ((r) & (PASS_SLOTS - 1)) * sizeof(__u64))
#define COUNT_ERR(e) count(offsetof(struct counters, errors) + ((e) & (ERROR_SLOTS - 1)) * sizeof(__u64))

/* Per-interface packet and byte counts of our port's segments. */
static __always_inline void count_if(struct __sk_buff *skb, int egress)
{
    __u32 idx = skb->ifindex;
    if (idx >= MAX_IFSTATS)
        return;
    struct if_counters *c = if_stats.lookup(&idx);
    if (!c)
        return;
    if (egress) {
        c->out_packets++;
        c->out_bytes += skb->len;
    } else {
        c->in_packets++;
        c->in_bytes += skb->len;
    }
}

/* An answer to n requests is going out (recorded in cs->last_*), in place of an undone one to
 * `undone` requests (0: none) that the client sent again: each request counts as a hit once, and
 * those answered again as retransmits. */
static __always_inline void count_requests(struct conn_state *cs, __u32 n, __u32 undone)
{
    int zero = 0;
    struct counters *c = counters.lookup(&zero);
    if (!c)
        return;
    c->hits += n - undone;                          /* (a batch sent again may be answered as fewer) */
    c->retransmits += n < undone ? n : undone;
    if (!undone)
        c->hit_bytes += cs->last_resp_len;
}

/* The entry for path answered a request: its hit count, and its recency for eviction. */
static __always_inline void note_entry_hit(struct path_key *path)
{
    struct cache_ref *ref = file_cache.lookup(path);
    if (ref) {
        ref->last_hit_ns = bpf_ktime_get_ns();
        __sync_fetch_and_add(&ref->hits, 1);
    }
}

/* An answer is going out: count it (count_requests), and note the entry's hit. */
static __always_inline void count_answer(struct path_key *path, struct conn_state *cs, __u32 undone)
{
    note_entry_hit(path);
    count_requests(cs, 1, undone);
}

/* The answer counted as hits (n: the requests it answered) was undone and its requests pass to
 * userspace after all. */
static __always_inline void uncount_hit(__u32 n)
{
    int zero = 0;
    struct counters *c = counters.lookup(&zero);
    if (c)
        c->hits -= n;
}

/* An answer to several pipelined requests is going out (answer.h: send_batch_item): count each,
 * as count_answer does one. */
static __always_inline void count_batch(struct answer_ctx *ctx, struct conn_state *cs, __u32 undone)
{
    __u32 n = ctx->n_items;
#pragma unroll
    for (int k = 0; k < MAX_BATCH; k++)
        if (k < n)
            note_entry_hit(&ctx->batch_keys[k]);
    count_requests(cs, n, undone);
}

/* Tell userspace about a connection the kernel ended (close_events: it wakes a reader thread). */
static __always_inline void tell_close(struct conn_key *k, __u32 kind)
{
    /* Written in place (reserve, submit): a copy on the stack would not fit beside the callers'. */
    struct close_event *ev = close_events.ringbuf_reserve(sizeof(struct close_event));
    if (!ev) {
        COUNT_ERR(ERR_CLOSE_LOST);
        return;
    }
    __builtin_memcpy(&ev->key, k, sizeof(*k));
    ev->kind = kind;
    close_events.ringbuf_submit(ev, 0);
}
