/* TC egress: server -> client. Translate the server socket's segments into the client's view, and
 * learn what the socket tells the client (its window, window scale, TSval, its ISN). Every segment
 * passes (FS_PASS). */
#include "conn.h"
#include "tcp_xlate.h"


static __always_inline int handle_egress(struct __sk_buff *skb)
{
    if (skb->mark == KERNEL_MARK) {
        skb->mark = 0;                              /* built by fs_ingress: already translated */
        return FS_PASS;
    }
    int zero = 0;
    struct egress_ctx *e = egress_scratch.lookup(&zero);
    if (!e)
        return FS_PASS;
    struct pkt *p = &e->p;
    struct conn_key *k = &e->key;
    __builtin_memset(p, 0, sizeof(*p));
    if (parse_headers(skb, p) < 0 || p->tcp.source != bpf_htons(SERVER_PORT))
        return FS_PASS;
    count_if(skb, 1);
    conn_key_of(k, p, 0);
    struct conn_state *cs = conn_state.lookup(k);
    if (!cs) {
        struct closed_conn *gone = closed_conns.lookup(k);
        if (gone)
            xlate_closed(skb, p, gone, 0);
        return FS_PASS;
    }
    note_route(skb, p, cs);
    /* The newest TSval the client may have seen: a kernel answer must not carry an older one. */
    __u32 tsval, tsecr;
    if (find_ts(skb, p, &tsval, &tsecr)) {
        tsval = bpf_ntohl(tsval);
        if (!(cs->flags & CONN_TS_SEEN) || (__s32)(tsval - cs->srv_tsval) > 0)
            cs->srv_tsval = tsval;
        if (!(cs->flags & CONN_TS_SEEN))
            CONN_SET(cs, CONN_TS_SEEN);             /* (once: an atomic per segment would bounce the line) */
    }
    if (p->tcp.syn) {
        if (cs->flags & CONN_NOSOCK)
            return FS_PASS;                         /* (kept: the client is past its handshake, nosock.h) */
        /* SYN-ACK: scaling is on only if both sides offered it (RFC 7323 section 1.3). */
        int ws = parse_wscale(skb, p);
        if (ws < 0 || !(cs->flags & CONN_WS_OK)) {
            cs->client_wscale = 0;
            CONN_CLEAR(cs, CONN_WS_OK);
            ws = 0;
        }
        cs->server_win = bpf_ntohs(p->tcp.window) >> ws;  /* a SYN's window is never scaled */
        cs->srv_next = bpf_ntohl(p->tcp.seq) + 1;
        cs->srv_isn1 = cs->srv_next;                /* no deltas yet: both views agree */
        return FS_PASS;
    }
    cs->server_win = bpf_ntohs(p->tcp.window);
    /* The server socket sends data or closes: from now on only it may send, or sequence space
     * would be shared between two senders. An answer another CPU is about to commit on older facts
     * must then fail its claim (conn_sync.h). */
    if ((p->payload_len || p->tcp.fin) && !(cs->flags & CONN_USER) && !(CONN_SET(cs, CONN_USER) & CONN_USER))
        conn_bump(cs);
    xlate_out(skb, p, cs);
    forget_if_done(skb, k, cs, p, 1);
    return FS_PASS;
}
