/* One connection on several CPUs. A conn_state entry is shared: fs_ingress runs in the softirq of
 * whichever CPU received the client's segment, fs_egress on the CPU the server socket sends from,
 * and two segments of one connection (a duplicate, a retransmission from a timer on another CPU,
 * RPS or several NIC queues) can be in fs_ingress on two CPUs at once. DESIGN.md section 4.
 *
 * - flags: every change is an atomic OR or AND. A plain read-modify-write on one CPU would undo a
 *   bit the other set in between (egress's CONN_USER, say, under ingress's CONN_ANSWERED).
 * - The sequence fields (delta_*, next_seq, srv_next, last_*) change together, so their changes
 *   are claimed, seqlock-style: `version` is even while they are stable, odd while one CPU changes
 *   them. fs_ingress reads it (conn_version) before its first check of the segment; a change
 *   compares-and-swaps it from that even value to odd (conn_claim) and makes it even again when
 *   done (conn_release). If another CPU changed anything in between, the claim fails and the
 *   segment is dropped before it changes anything: it was a duplicate of what that CPU handled,
 *   or a segment the client sends again (RFC 9293 section 3.8.1), which then meets the new state.
 *   Checks made on stale fields can therefore never be committed.
 * The BPF atomics are full barriers (Documentation/bpf/standardization/instruction-set.rst),
 * so the fields read after conn_version are at least as new as the version read. 64-bit only:
 * bcc's LLVM target has no 32-bit atomics before -mcpu=v3. */
#pragma once
#include "structs.h"

#define CONN_SET(cs, f) __sync_fetch_and_or(&(cs)->flags, (__u64)(f))
#define CONN_CLEAR(cs, f) __sync_fetch_and_and(&(cs)->flags, ~(__u64)(f))

static __always_inline __u64 conn_version(struct conn_state *cs)
{
    return __sync_fetch_and_add(&cs->version, 0);
}

/* Claim the connection's sequence fields for a change, if nothing changed them since `seen`. */
static __always_inline int conn_claim(struct conn_state *cs, __u64 seen)
{
    if (seen & 1)
        return 0;                                   /* another CPU was in the middle of a change */
    return __sync_val_compare_and_swap(&cs->version, seen, seen + 1) == seen;
}

/* The change is complete; returns the new version (a later change by the same CPU claims from it). */
static __always_inline __u64 conn_release(struct conn_state *cs)
{
    return __sync_fetch_and_add(&cs->version, 1) + 1;
}

/* Nothing changed the connection since `seen`, read before the fields the caller built a segment
 * from: the seqlock reader's check, after its reads. */
static __always_inline int conn_unchanged(struct conn_state *cs, __u64 seen)
{
    return conn_version(cs) == seen;
}

/* The server socket took the connection (egress: it sends data or its FIN). A change another CPU
 * has not claimed yet must fail: it would share sequence space with the socket. (One already
 * claimed commits: in practice the segment is a keep-alive timeout's FIN, and the client meets
 * what it meets when a request crosses a closing socket, DESIGN.md section 4.) */
static __always_inline void conn_bump(struct conn_state *cs)
{
    __sync_fetch_and_add(&cs->version, 2);          /* (parity kept: a change in progress stays odd) */
}
