/* The connection state machine (struct conn_state): new connections and their end, answers
 * recorded and undone, the multi-segment answer in flight, the close of a connection the kernel
 * ended, and the way back from userspace to the kernel, with the ACK the server socket is owed
 * then (ack_the_socket). Translation itself is tcp_xlate.h's. */
#pragma once
#include "conn_sync.h"
#include "segment.h"
#include "sock.h"
#include "tcp_xlate.h"

/* A client's SYN: a new connection, with what its options say (window scale, MSS). */
static __always_inline void new_connection(struct pkt *p, struct conn_key *k, struct __sk_buff *skb)
{
    struct conn_state cs = {};
    int ws = parse_wscale(skb, p);
    cs.client_wscale = ws < 0 ? 0 : ws;
    cs.flags = ws < 0 ? 0 : CONN_WS_OK;
    cs.next_seq = bpf_ntohl(p->tcp.seq) + 1;
    cs.passed_end = cs.next_seq;
    cs.client_mss = parse_mss(skb, p);
    cs.last_seen_ns = bpf_ktime_get_ns();
    closed_conns.delete(k);                         /* (an earlier connection's, on this 4-tuple) */
    if (conn_state.update(k, &cs) != 0)
        COUNT_ERR(ERR_CONN_FULL);
}

/* The connection is over: its entry goes now, not with userspace's collector, so a high rate of
 * closes cannot fill the table. The deltas stay in closed_conns for the segments still to come
 * (TIME_WAIT's, or a client's after a reset). */
static __always_inline void free_conn(struct conn_key *k, struct conn_state *cs)
{
    struct closed_conn rest = {.delta_in = cs->delta_in, .delta_out = cs->delta_out};
    if (rest.delta_in || rest.delta_out)
        closed_conns.update(k, &rest);
    conn_state.delete(k);
    COUNT(freed);
}

/* The close of a connection, followed in both directions (RFC 9293 section 3.6): each side's FIN,
 * and its acknowledgement by the other. Once both FINs are acknowledged, the server socket is gone
 * (its last ACK was the client's: LAST_ACK to CLOSED) or in TIME_WAIT (its own last ACK: this is
 * it), and the entry is freed at once, not by userspace's collector, so a high rate of closes
 * cannot fill the table. The deltas stay in closed_conns for the segments of TIME_WAIT (a FIN the
 * client sends again because that last ACK was lost, and the socket's ACK of it). Called after the
 * segment was translated; p holds it as it was: the client's in its own view, the socket's in the
 * socket's. A FIN that was blind or out of window is never acknowledged: the entry then stays,
 * for the collector. */
static __always_inline void note_close(struct conn_key *k, struct conn_state *cs, struct pkt *p, int from_socket)
{
    if (p->tcp.rst || p->tcp.syn)
        return;
    __u32 seq = bpf_ntohl(p->tcp.seq), ack = bpf_ntohl(p->tcp.ack_seq);
    int done;
    if (from_socket) {
        seq += cs->delta_out;
        ack += cs->delta_in;
        if (p->tcp.fin) {
            cs->fin_out = seq + p->payload_len + 1;
            CONN_SET(cs, CONN_FIN_OUT);
        }
        if (!(cs->flags & CONN_FIN_IN) || !p->tcp.ack || ack != cs->fin_in)
            return;
        __u64 old = CONN_SET(cs, CONN_FIN_IN_ACKED);
        done = !(old & CONN_FIN_IN_ACKED) && (old & CONN_FIN_OUT_ACKED);   /* (once, on one CPU) */
    } else {
        if (p->tcp.fin) {
            cs->fin_in = seq + p->payload_len + 1;
            CONN_SET(cs, CONN_FIN_IN);
        }
        /* (exactly: nothing follows the FIN, and a blind ACK must not end the state) */
        if (!(cs->flags & CONN_FIN_OUT) || !p->tcp.ack || ack != cs->fin_out)
            return;
        __u64 old = CONN_SET(cs, CONN_FIN_OUT_ACKED);
        done = !(old & CONN_FIN_OUT_ACKED) && (old & CONN_FIN_IN_ACKED);
    }
    if (done)
        free_conn(k, cs);
}

/* A reset from the client that the server socket will take: its sequence number, translated, is
 * exactly the socket's rcv_nxt (RFC 5961 section 3.2; Linux's tcp_validate_incoming resets the
 * socket then, and answers any other in-window reset with a challenge ACK). Asked of the socket
 * itself: in userspace's hands, the connection's next_seq lags what the socket has read. */
static __always_inline int socket_takes_reset(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs)
{
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk = lookup_server_socket(skb, p, &t);
    if (!sk)
        return 0;
    int takes = 0;
    if (sk->state != BPF_TCP_LISTEN) {
        struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);
        takes = tp && tp->rcv_nxt == socket_seq_in(p, cs);
    }
    bpf_sk_release(sk);
    return takes;
}

/* Drop a connection's state once nothing is left to translate: after the server socket's own
 * reset (from_socket: seen on egress), or at a FIN on a connection the kernel never answered on
 * (its deltas are zero: nothing to translate, whoever sent it). Connections with deltas keep their
 * entry through the closing handshake, until note_close frees it.
 * A reset from the client's side frees the entry only if the socket takes it (socket_takes_reset):
 * one that may be blind (RFC 5961 section 3: a guessed sequence number) the socket drops, or
 * answers with a challenge ACK, and the connection goes on, translated. */
static __always_inline void forget_if_done(struct __sk_buff *skb, struct conn_key *k, struct conn_state *cs,
                                           struct pkt *p, int from_socket)
{
    if ((p->tcp.rst && from_socket) || (p->tcp.fin && !cs->delta_in && !cs->delta_out))
        conn_state.delete(k);
    else if (p->tcp.rst && socket_takes_reset(skb, p, cs))
        free_conn(k, cs);
    else
        note_close(k, cs, p, from_socket);
}

/* Is this SYN for a connection that is up? Then it is blind or stale: RFC 5961 section 4 (Linux's
 * tcp_validate_incoming) has the socket answer any SYN on a synchronized connection with a
 * challenge ACK and change nothing, so the connection's state stays too. Only a SYN that opens a
 * connection (no state yet; or the lookup finds the listener, as for a handshake in progress, or
 * no full socket, as after TIME_WAIT) starts its state afresh. */
static __always_inline int syn_on_live_connection(struct __sk_buff *skb, struct pkt *p, struct conn_key *k,
                                                  struct bpf_sock_tuple *t)
{
    if (!conn_state.lookup(k))
        return 0;
    struct bpf_sock *sk = lookup_server_socket(skb, p, t);
    if (!sk)
        return 0;
    int live = sk->state != BPF_TCP_LISTEN;
    bpf_sk_release(sk);
    return live;
}

/* An ICMP error about a segment of the connection (p: the quoted one, server -> client) says the
 * path's MTU is mtu: a router on the way has a smaller one than either end (RFC 1191, RFC 8201).
 * - If it quotes a segment of the kernel's last answer (as Linux checks the quoted sequence number
 *   against what it has in flight, RFC 5927 section 4.1: a blind error changes nothing), the
 *   kernel's segments keep to the new size from now on (seg_payload), and so do the resends of an
 *   answer in flight (in_flight). An IPv4 path below 552 bytes (Linux's min_pmtu, under which its
 *   own socket sends without DF) takes no kernel segment: later answers pass to userspace, and
 *   one in flight, which cannot be completed, is aborted (userspace resets the connection).
 * - The error goes on to the socket, translated into its sequence space: Linux's TCP believes
 *   an error only if it quotes a sequence number from snd_una to snd_nxt. One the kernel sent maps
 *   to the socket's snd_nxt, so the socket, and its route, learn the path's MTU as well: a later
 *   connection's socket starts from it, and its MSS bounds the kernel's segments (sock.h). */
static __always_inline void learn_path_mtu(struct __sk_buff *skb, struct pkt *p, struct conn_key *k, __u32 mtu,
                                           __u32 seq_off, __u32 csum_off)
{
    if (p->tcp.source != bpf_htons(SERVER_PORT))
        return;
    conn_key_of(k, p, 0);
    struct conn_state *cs = conn_state.lookup(k);
    if (!cs)
        return;
    __u32 seq = bpf_ntohl(p->tcp.seq), start = cs->srv_next - cs->last_resp_len;
    int ours = (cs->flags & CONN_ANSWERED) && (__s32)(seq - start) >= 0 && (__s32)(seq - cs->srv_next) < 0;
    __u32 now = cs->path_mtu ? cs->path_mtu : 0xffff;
    if (ours && mtu < now) {
        __u32 hdrs = ip_hlen(p) + tcp_hdr_len(cs->flags & CONN_TS_SEEN);
        if (mtu < (p->v6 ? IPV6_MIN_MTU : IPV4_MIN_PMTU) || mtu <= hdrs) {
            cs->path_mtu = 1;                       /* (seg_payload: no room) */
            if (cs->flags & CONN_UNACKED)
                tell_close(k, CLOSE_ABORT);
        } else {
            cs->path_mtu = mtu;
        }
        COUNT(path_mtu);
    }
    /* An answer in flight: its resends. Each error about one of its segments clamps, not only one
     * that lowered the MTU: an answer committed on another CPU meanwhile may have recorded a
     * segment size from before, and the client would then never get the segments it lacks. */
    if (ours && cs->path_mtu > 1) {
        __u32 seg = seg_payload(skb, cs, ip_hlen(p), tcp_hdr_len(cs->flags & CONN_TS_SEEN));
        if (seg && cs->seg_size > seg)
            cs->seg_size = seg;
    }
    __u32 sock = ours ? cs->srv_next - cs->delta_out : seq - cs->delta_out;
    if (sock != seq) {
        __be32 old = p->tcp.seq, new = bpf_htonl(sock);
        bpf_skb_store_bytes(skb, seq_off, &new, sizeof(new), 0);
        bpf_l4_csum_replace(skb, csum_off, old, new, sizeof(new));   /* ICMP's: no pseudo-header field */
    }
}

/* What a client segment's ACK says of the kernel's last answer, once it covers all of it:
 * - the answer can no longer be undone: a copy of its request arriving late (reordered behind
 *   later traffic) is stale, not a sign of loss, and must not move the deltas back;
 * - for an answer that ends the connection, userspace may now close the socket, whose FIN then
 *   follows the answer. Not before: the kernel can resend a lost answer only while the socket has
 *   sent nothing after it. */
static __always_inline void note_client_ack(struct pkt *p, struct conn_key *k, struct conn_state *cs, __u64 *version)
{
    if (!p->tcp.ack || (__s32)(bpf_ntohl(p->tcp.ack_seq) - cs->srv_next) < 0)
        return;
    /* Claimed: judged on srv_next, it must not clear the bit of an answer another CPU has just
     * committed (that answer could then never be undone). Lost, it waits for the next ACK. */
    if ((cs->flags & CONN_UNDOABLE) && conn_claim(cs, *version)) {
        CONN_CLEAR(cs, CONN_UNDOABLE);
        *version = conn_release(cs);
    }
    /* (told once: the ACK can be on two CPUs at once, and only one sets the bit) */
    if ((cs->flags & (CONN_CLOSING | CONN_CLOSE_ACKED | CONN_NOSOCK)) == CONN_CLOSING &&
        !(CONN_SET(cs, CONN_CLOSE_ACKED) & CONN_CLOSE_ACKED))
        tell_close(k, CLOSE_NOW);
}

/* Our TSval (network order) for a segment answering one whose TSecr is `tsecr`. RFC 7323 section
 * 5.3: the client drops a segment whose TSval is older than the newest it holds (PAWS). The
 * request's TSecr echoes what the client held when it sent it, but the server socket may have
 * sent a newer one since (a window update, the last segments of a userspace answer), which egress
 * keeps in srv_tsval with the kernel's own. Neither is ahead of the server's clock, so the
 * socket's later segments stay in order too. */
static __always_inline __u32 our_tsval(struct conn_state *cs, __u32 tsecr)
{
    __u32 tsval = bpf_ntohl(tsecr);
    if ((cs->flags & CONN_TS_SEEN) && (__s32)(cs->srv_tsval - tsval) > 0)
        tsval = cs->srv_tsval;
    cs->srv_tsval = tsval;
    if (!(cs->flags & CONN_TS_SEEN))
        CONN_SET(cs, CONN_TS_SEEN);
    return bpf_htonl(tsval);
}

/* Undo the kernel's last answer exactly (the server socket never saw either side): its request is
 * unanswered again. The caller holds the claim (conn_sync.h). */
static __always_inline void undo_answer(struct conn_state *cs)
{
    cs->delta_in -= cs->last_req_len;
    cs->delta_out -= cs->last_resp_len;
    cs->next_seq = cs->last_req_seq;
    cs->srv_next -= cs->last_resp_len;
    CONN_CLEAR(cs, CONN_ANSWERED | CONN_CLOSING | CONN_UNACKED | CONN_UNDOABLE);
}

/* The kernel answered the request at req_seq (req_len bytes) with total bytes: the socket will
 * never see either, so the deltas grow; last_* keep what a retransmitted request needs. An undo
 * the segment called for (recover_answer) comes first, in the same change. The caller holds the
 * claim (conn_sync.h). */
static __always_inline void record_answer(struct conn_state *cs, __u32 req_seq, __u32 req_len, __u32 total,
                                          __u32 variant, int undo, __u32 items)
{
    if (undo)
        undo_answer(cs);
    cs->last_items = items;
    cs->last_req_seq = req_seq;
    cs->last_req_len = req_len;
    cs->last_resp_len = total;
    cs->delta_in += req_len;
    cs->delta_out += total;
    cs->next_seq = req_seq + req_len;
    cs->srv_next += total;
    CONN_SET(cs, CONN_ANSWERED | CONN_UNDOABLE |
                 (variant == VAR_CLOSE11 || variant == VAR_CLOSE10 ? CONN_CLOSING : 0));
}

/* Recovery of the kernel's last answer, for a segment with data or a FIN. It comes before every
 * reason to pass the segment on (the socket's ownership, TCP options, a stale heartbeat): passed
 * with the answer still counted in the deltas, a request sent again would reach the socket as old
 * data, which it acknowledges, and the answer would never be sent again. Sets *rolled_back when
 * the segment says the answer was lost: the answer is then undone, but only together with what
 * becomes of the request, the new answer (record_answer) or the pass to userspace (keep_order),
 * in one change (conn_sync.h). An undo on its own would be wrong whenever the segment was a
 * duplicate the client sent, or the network made, after all: a CPU that loses the race for the
 * change must leave the answer in place. Returns FS_CONTINUE or FS_HOLD. */
static __always_inline int recover_answer(struct pkt *p, struct conn_state *cs, int *rolled_back)
{
    if (!(cs->flags & CONN_ANSWERED) || !p->tcp.ack)
        return FS_CONTINUE;
    __u32 seq = bpf_ntohl(p->tcp.seq), ack = bpf_ntohl(p->tcp.ack_seq);
    /* The client retransmits a request the kernel answered, and has acknowledged none of the
     * answer: the answer was lost. Undo it (undo_answer), then answer afresh, with current bytes,
     * or pass it on. Deltas are never counted twice. Nothing of it is in flight any more (a FIN
     * with the request again reaches this for a longer one). */
    if ((cs->flags & CONN_UNDOABLE) && p->payload_len && seq == cs->last_req_seq &&
        ack == cs->srv_next - cs->last_resp_len) {
        *rolled_back = 1;
        return FS_CONTINUE;
    }
    /* New bytes while the client lacks part of the kernel's last answer (it pipelines, or that
     * answer was lost): passed on, the socket would acknowledge them, and with them the request
     * of the missing answer, which the client would then never send again; nobody would resend
     * the answer. Dropped instead: the client sends them again once it has the answer. A FIN is
     * such a byte (RFC 9293 section 3.4: it takes a sequence number): a client that half-closes
     * right after its request would otherwise have the request acknowledged with it. */
    if ((__s32)(ack - cs->srv_next) < 0 && (__s32)(seq + p->payload_len + p->tcp.fin - cs->next_seq) > 0)
        return FS_HOLD;
    return FS_CONTINUE;
}

/* Can the kernel answer this request in the connection's current state (undone, if rolled_back:
 * recover_answer checked it is the undone answer's request)? FS_CONTINUE, or the pass reason why
 * not. */
static __always_inline int in_sync(struct pkt *p, struct conn_state *cs, int rolled_back)
{
    if (rolled_back)
        return FS_CONTINUE;
    /* After an answer that ends the connection, nothing more is answered here (a client that
     * sends more anyway meets the server socket, which userspace is closing). */
    if (cs->flags & CONN_CLOSING)
        return PASS_CLOSING;
    /* In sync: the request starts where the previous one ended, and the client has every byte sent
     * so far (so responses can never be reordered or lost silently). */
    if (bpf_ntohl(p->tcp.seq) != cs->next_seq || bpf_ntohl(p->tcp.ack_seq) != cs->srv_next)
        return PASS_OUT_OF_SYNC;
    return FS_CONTINUE;
}

/* A connection back from userspace may be answered on a segment whose acknowledgement of
 * userspace's last bytes the server socket has not processed (it rode on this request, which the
 * socket never sees). The socket would then retransmit bytes the client has, and take the
 * connection back. So before the request becomes the answer, it is turned into the pure ACK the
 * socket should have had (its own sequence space) and a clone is delivered to it. Returns 1 once
 * the skb holds that ACK (the request is gone from it). */
static __always_inline int ack_the_socket(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs,
                                           struct resp_hdrs *hp)
{
    __u32 thl = tcp_hdr_len(p->has_ts);
    __builtin_memset(hp, 0, sizeof(*hp));          /* the caller's space: the stack is full */
    hp->eth = p->eth;
    ip_hdr(hp, p, 0, thl);
    hp->tcp = p->tcp;
    hp->tcp.seq = bpf_htonl(bpf_ntohl(p->tcp.seq) - cs->delta_in);
    hp->tcp.ack_seq = bpf_htonl(bpf_ntohl(p->tcp.ack_seq) - cs->delta_out);
    hp->tcp.doff = thl / 4;
    hp->tcp.psh = 0;
    hp->tcp.check = 0;
    if (p->has_ts)
        write_ts_option(hp->ts, p->tsval, p->tsecr);
    __u32 psum;
    __u32 hsum = header_sum(hp, p->v6, p->has_ts, 0, &psum);
    CONN_CLEAR(cs, CONN_SOCK_ACK);
    if (bpf_skb_change_tail(skb, ETH_HLEN_ + ip_hlen(p) + thl, 0) < 0)
        return 0;                                   /* the socket learns it from a later segment */
    long err = store_hdrs(skb, hp, p->v6, p->has_ts);
    if (err)
        return 1;
    store_tcp_csum(skb, ip_hlen(p), psum, hsum, 0, 0, NULL);
    skb->mark = KERNEL_MARK;                        /* fs_ingress lets it through untouched */
    bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
    skb->mark = 0;
    return 1;
}

/* The part (conn_state.part_*) of the connection's last answer that answer byte off falls in:
 * its index, with the answer bytes [*start, *end) it spans; -1 past the end. */
static __always_inline int find_part(struct conn_state *cs, __u32 off, __u32 *start, __u32 *end)
{
    __u32 s = 0, n = cs->last_items;
    for (int k = 0; k < MAX_BATCH; k++) {
        if (k >= n)
            break;
        __u32 e = s + cs->part_len[k];
        if (off < e) {
            *start = s;
            *end = e;
            return k;
        }
        s = e;
    }
    return -1;
}

/* The size class of the body the segment at answer byte off is cut from (any, past the end: the
 * pure ACK). */
static __always_inline __u32 part_cls(struct conn_state *cs, __u32 off)
{
    __u32 s, e;
    int k = find_part(cs, off, &s, &e);
    return k < 0 ? 0 : PART_CLS(cs->part_cv[k & (MAX_BATCH - 1)]);
}

/* A segment of a connection whose multi-segment answer the client does not wholly have yet (or has
 * just completed with this ACK). Returns FS_RESEND with answer_ctx set up, FS_HOLD, or FS_CONTINUE
 * (the segment is handled as usual). */
static __always_inline int in_flight(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    struct pkt *p = &ctx->p;
    if (p->tcp.syn || p->tcp.rst || !p->tcp.ack)
        return FS_CONTINUE;                         /* the socket handles those (and acknowledges) */
    __u32 ack = bpf_ntohl(p->tcp.ack_seq), seq = bpf_ntohl(p->tcp.seq);
    __u32 total = cs->last_resp_len, start = cs->srv_next - total;
    if ((__s32)(ack - start) < 0)
        return FS_CONTINUE;                         /* from before the answer */
    int whole = (__s32)(ack - cs->srv_next) >= 0;
    /* The request sent again (with a FIN if the client half-closed: Linux collapses the two), or
     * the FIN alone while the client lacks part of the answer (its tail-loss probe or the FIN's own
     * retransmission): either says what the client has, and calls for the rest. */
    int request_again = p->payload_len ? seq == cs->last_req_seq : p->tcp.fin;
    if (whole && (cs->flags & CONN_UNACKED)) {
        if (!conn_claim(cs, ctx->version))
            return FS_HOLD;                         /* (another CPU's change: judged on old facts) */
        CONN_CLEAR(cs, CONN_UNACKED);
        ctx->version = conn_release(cs);
    }
    if (whole) {
        if (p->tcp.fin || (p->payload_len && !request_again))
            return FS_CONTINUE;                     /* the next request acknowledges it all, or the
                                                     * socket's ACK of the FIN does */
    } else if (p->payload_len && !request_again) {
        return FS_HOLD;                             /* a request behind the answer: it must wait */
    }
    __u32 seg = cs->seg_size;
    if (!seg)
        return FS_CONTINUE;
    __u32 tsval = 0, tsecr = 0;
    p->has_ts = find_ts(skb, p, &tsval, &tsecr);   /* any option layout (SACK blocks, ...) */
    ctx->tsval = p->has_ts ? our_tsval(cs, tsecr) : 0;
    ctx->tsecr = tsval;
    ctx->seg_resend = 1;
    ctx->probe = 0;
    if (whole) {
        /* The client has the whole answer: acknowledge its request (again, if it sent it again
         * because that ACK was lost). */
        ctx->seg_off = total;
        ctx->seg_end = total;
        ctx->ack_seq = bpf_htonl(cs->next_seq);
        return FS_RESEND;
    }
    /* The first segment it lacks: each part is cut into segments from its own start. */
    __u32 ps = 0, pe = 0;
    if (find_part(cs, ack - start, &ps, &pe) < 0)
        return FS_CONTINUE;                         /* (not while !whole) */
    __u32 from = ps + (ack - start - ps) / seg * seg;
    ctx->ack_seq = bpf_htonl(cs->last_req_seq);     /* still not acknowledging the request */
    ctx->seg_off = from;
    if (request_again) {
        ctx->seg_end = total;                       /* everything from there */
        return FS_RESEND;
    }
    /* A duplicate ACK with SACK blocks: the client holds data beyond a hole at ack. Send that one
     * segment once per hole; a lost resend is recovered when the client sends the request again. */
    if (ack != cs->fast_ack && sack_beyond(skb, p, ack)) {
        cs->fast_ack = ack;
        ctx->seg_end = from + seg < pe ? from + seg : pe;
        return FS_RESEND;
    }
    /* Progress. Kept from the socket: it has nothing outstanding, and it may answer an ACK from
     * before its own snd_una with an ACK of its own, which would acknowledge the request. */
    return FS_HOLD;
}

/* A connection that went to userspace comes back once userspace has answered everything it read
 * and the client has acknowledged every byte of it: then nothing the server socket owes can come
 * after a kernel answer (browsers reuse connections: one cold request must not pin one for good).
 * Userspace records in user_idle how many bytes it had read and written when it last had nothing
 * left to do. The socket itself (bpf_tcp_sock) says how many it has received; this segment's
 * acknowledgement (it usually rides on the next request) must cover every byte userspace wrote,
 * which also proves none is still queued in the socket. The socket's rcv_nxt and snd_nxt then
 * re-anchor the kernel's view of both streams, under a claim from *version (conn_sync.h), which
 * then holds the new version. Returns 1 (back), 0 (not yet) or FS_RACE. */
static __always_inline int back_to_kernel(struct __sk_buff *skb, struct pkt *p, struct conn_key *k,
                                          struct conn_state *cs, __u64 *version)
{
    struct user_idle *idle = user_idle.lookup(k);
    if (!idle)
        return 0;
    __u32 ack = bpf_ntohl(p->tcp.ack_seq) - cs->delta_out;   /* in the socket's sequence space */
    if (ack != cs->srv_isn1 + (__u32)idle->written)
        return 0;
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk = lookup_server_socket(skb, p, &t);
    if (!sk)
        return 0;
    int back = 0;
    struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);
    /* The socket must also have processed every segment before this one (one can wait in its
     * backlog while the socket is busy): this request must start exactly at its rcv_nxt. And it
     * must hold nothing after it: a later segment passed on earlier (pipelined behind this one,
     * which was lost) waits in its out-of-order queue, which bpf_tcp_sock does not show. Answered
     * here, this request would never reach the socket, which would wait for its bytes for ever,
     * or take the next ones of the same length in their place and read the later segment twice.
     * (Tested inside the socket's scope: checked before the lookup, bcc's LLVM sank the test below
     * it, onto a path that returned without bpf_sk_release, which the verifier rejects.) */
    __u32 seq = bpf_ntohl(p->tcp.seq) - cs->delta_in;
    int nothing_after = (__s32)(cs->passed_end - bpf_ntohl(p->tcp.seq)) <= 0;
    if (tp && sk->state == BPF_TCP_ESTABLISHED && tp->bytes_received == idle->consumed && tp->snd_nxt == ack &&
        tp->rcv_nxt == seq && nothing_after) {
        back = FS_RACE;
        if (conn_claim(cs, *version)) {
            cs->next_seq = tp->rcv_nxt + cs->delta_in;     /* client view of where the socket stands (= this seq) */
            cs->srv_next = tp->snd_nxt + cs->delta_out;
            if (tp->snd_una != ack)
                CONN_SET(cs, CONN_SOCK_ACK);
            CONN_CLEAR(cs, CONN_USER | CONN_ANSWERED);  /* (the last kernel answer is no longer undoable) */
            *version = conn_release(cs);
            back = 1;
        }
    }
    bpf_sk_release(sk);
    if (back == 1) {
        user_idle.delete(k);
        COUNT(returns);
    }
    return back;
}
