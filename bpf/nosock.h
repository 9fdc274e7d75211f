/* Connections without a server socket (--socketless-close; DESIGN.md section 9).
 *
 * The server's network namespace answers every SYN with a SYN cookie (net.ipv4.tcp_syncookies=2,
 * set by userspace, which says so in clock.socketless): the kernel keeps nothing of a handshake
 * until an ACK whose acknowledgement number is a valid cookie arrives, and then creates the
 * established socket from that ACK alone (cookie_v4_check, cookie_v6_check). Here the handshake's
 * last ACK is kept back (dropped), so no socket exists yet, and the first request decides:
 * - a hit whose answer ends the connection (HTTP/1.0 without keep-alive, Connection: close) and
 *   fits one segment is answered here, with our FIN; the client's FIN is acknowledged here too,
 *   and the server process never hears of the connection (no accept, no socket, no close);
 * - another hit is answered here too, after the kept ACK is handed to the kernel, which creates
 *   the socket from its cookie (answer.h: socket_from_cookie): keep-alive goes on as ever;
 * - anything else passes to the kernel: the request's own ACK carries the cookie, so the socket
 *   is created then, with the request queued, and the connection goes on as any other.
 * Every loss is recovered from the client's own retransmissions: its request again (our answer was
 * lost: answered again, as recover_answer does for any kernel answer), its FIN again (our ACK of
 * it was lost: nosock_closed remembers the connection for that). A lost SYN-ACK or handshake ACK is
 * the kernel's and the client's business as ever. */
#pragma once
#include "answer.h"
#include "sock.h"

/* The handshake's last ACK of a connection the kernel may answer without a socket: keep it
 * (dropped, the connection marked CONN_NOSOCK). Only while userspace says every SYN-ACK is a
 * cookie (the listener then holds no request socket that would wait for this ACK and resend its
 * SYN-ACK), the heartbeat is fresh, and the lookup finds the listener: no socket of the connection
 * exists. Returns 1 if kept. */
static __always_inline int keep_handshake(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    struct pkt *p = &ctx->p;
    if (p->payload_len || p->tcp.fin || p->tcp.rst || !p->tcp.ack ||
        (cs->flags & (CONN_SOCK_UP | CONN_NOSOCK | CONN_ANSWERED | CONN_USER)) || !cs->srv_isn1 ||
        bpf_ntohl(p->tcp.ack_seq) != cs->srv_isn1 || bpf_ntohl(p->tcp.seq) != cs->next_seq)
        return 0;
    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk || !clk->socketless || bpf_ktime_get_ns() - clk->updated_ns > HEARTBEAT_TIMEOUT_NS)
        return 0;
    /* Not bpf_sk_lookup_tcp: it gives a request socket's listener. Even with cookies for every
     * SYN, the kernel makes a request socket for a SYN that recycles one of its TIME_WAIT sockets
     * (tcp_conn_request: a cookie only while isn is 0), and that one waits for this ACK. */
    struct bpf_sock *sk = lookup_server_skc(skb, p, &ctx->tuple);
    if (!sk)
        return 0;                                   /* (no listener: the kernel answers with a reset) */
    int listener = sk->state == BPF_TCP_LISTEN;
    bpf_sk_release(sk);
    if (!listener)
        return 0;
    /* Claimed: a request another CPU is passing meanwhile makes the socket (conn_sync.h). */
    if (!conn_claim(cs, ctx->version))
        return 0;
    CONN_SET(cs, CONN_NOSOCK);
    ctx->version = conn_release(cs);
    return 1;
}

/* Our pure ACK of the client's FIN (which ends at fin_end), from sequence cs->srv_next. */
static __always_inline int ack_fin(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs, __u32 fin_end)
{
    struct pkt *p = &ctx->p;
    __u32 tsval = 0, tsecr = 0;
    p->has_ts = find_ts(skb, p, &tsval, &tsecr);
    ctx->tsval = p->has_ts ? our_tsval(cs, tsecr) : 0;
    ctx->tsecr = tsval;
    ctx->ack_seq = bpf_htonl(fin_end);
    ctx->fin = 0;
    return send_ack(skb, ctx, cs);
}

/* A client segment of a connection without a socket (CONN_NOSOCK). Nothing of it may reach the
 * kernel's TCP, which would answer it for the listener (a reset, or a socket made from the cookie
 * behind the kernel's answer), but the request that passes to userspace (finish_pass then clears
 * CONN_NOSOCK: the kernel creates the socket). Returns FS_CONTINUE (the segment is handled as
 * usual: a request, or our answer's request sent again), FS_REDIRECT (it became our ACK of the
 * client's FIN) or FS_DROP. */
static __always_inline int nosock_segment(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    struct pkt *p = &ctx->p;
    __u32 seq = bpf_ntohl(p->tcp.seq), ack = bpf_ntohl(p->tcp.ack_seq);
    if (p->tcp.rst) {
        /* Only at exactly the next sequence number (RFC 5961 section 3.2): a blind one changes
         * nothing. No socket to reset: the state goes. */
        if (seq == cs->next_seq)
            conn_state.delete(&ctx->key);
        return FS_DROP;
    }
    if (!(cs->flags & CONN_ANSWERED)) {
        /* The first request (with a FIN: the client half-closed; userspace's). Only a segment at
         * the client's first sequence number may reach the kernel: it checks the cookie against
         * the sequence number less one, as the client's ISN (__cookie_v4_check), and would reset
         * the connection for any later one (the second segment of a split request whose first was
         * lost): dropped, it comes again after the first. A duplicate of the handshake's ACK would
         * make the kernel create the socket now. */
        return (p->payload_len || p->tcp.fin) && seq == cs->next_seq ? FS_CONTINUE : FS_DROP;
    }
    __u32 start = cs->srv_next - cs->last_resp_len;
    if (p->payload_len)                             /* our answer lost: its request again */
        return (cs->flags & CONN_UNDOABLE) && seq == cs->last_req_seq && ack == start ? FS_CONTINUE : FS_DROP;
    /* The client's FIN, once it has our answer and our FIN (ab and wrk close when they see it). A
     * FIN that crossed our answer (the client half-closed first) comes again, with this ACK. */
    if (!p->tcp.fin || seq != cs->next_seq || ack != cs->srv_next)
        return FS_DROP;
    int r = ack_fin(skb, ctx, cs, seq + 1);
    if (r != FS_REDIRECT)
        return r;
    struct nosock_closed gone = {.srv_seq = cs->srv_next, .fin_end = seq + 1, .server_win = cs->server_win,
                                 .out_ifindex = cs->out_ifindex};
    __builtin_memcpy(gone.next_hop, cs->next_hop, ETH_ALEN);
    nosock_closed.update(&ctx->key, &gone);
    conn_state.delete(&ctx->key);
    COUNT(socketless);
    return FS_REDIRECT;
}

/* A segment of a connection with no state: the FIN of a socketless one sent again (our ACK of it
 * was lost) gets that ACK again. Returns FS_REDIRECT, or FS_PASS for anything else. */
static __always_inline int nosock_late_fin(struct __sk_buff *skb, struct answer_ctx *ctx)
{
    struct pkt *p = &ctx->p;
    if (!p->tcp.fin || p->tcp.rst || p->payload_len)
        return FS_PASS;
    struct nosock_closed *gone = nosock_closed.lookup(&ctx->key);
    if (!gone || bpf_ntohl(p->tcp.seq) + 1 != gone->fin_end || bpf_ntohl(p->tcp.ack_seq) != gone->srv_seq)
        return FS_PASS;
    int zero = 0;
    struct conn_state *cs = conn_scratch.lookup(&zero);
    if (!cs)
        return FS_PASS;
    __builtin_memset(cs, 0, sizeof(*cs));
    cs->srv_next = gone->srv_seq;
    cs->server_win = gone->server_win;
    cs->out_ifindex = gone->out_ifindex;            /* (the route's way back: segment_hdrs) */
    __builtin_memcpy(cs->next_hop, gone->next_hop, ETH_ALEN);
    ctx->version = 0;                               /* (cs->version: send_ack's check) */
    return ack_fin(skb, ctx, cs, gone->fin_end);
}
