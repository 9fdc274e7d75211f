/* Sequence translation between the client's view of the connection and the server socket's, the
 * way netfilter's seqadj does for NAT helpers. Bytes answered in the kernel were never seen by the
 * server socket (delta_in); bytes sent by the kernel were never sent by it (delta_out).
 *   client -> server: seq -= delta_in,  ack -= delta_out
 *   server -> client: seq += delta_out, ack += delta_in
 * SACK blocks are in the other side's sequence space and are translated too (xlate_sack), less
 * those that name bytes the receiver never sent in its own space. */
#pragma once
#include "report.h"
#include "parse_pkt.h"

static __always_inline void rewrite32(struct __sk_buff *skb, __u32 l4_off, __u32 field, __be32 old, __be32 new)
{
    if (bpf_skb_store_bytes(skb, l4_off + field, &new, sizeof(new), 0) < 0 ||
        bpf_l4_csum_replace(skb, l4_off + TCP_CSUM_OFF, old, new, sizeof(new)) < 0)
        COUNT_ERR(ERR_XLATE);
}

/* Translate the SACK option's blocks (RFC 2018; a D-SACK block, RFC 2883, is one as well) into the
 * receiver's sequence space: every edge moves by delta. A block that ends at or before floor (in
 * the sender's space, as the blocks are) names bytes the receiver never sent in its own space
 * (kernel answers, or requests the kernel answered) or acknowledged long ago: it is dropped; one
 * that starts before floor starts there. The blocks kept move to the front, the option's length
 * shrinks with them and NOPs fill the rest; with no block left the whole option becomes NOPs.
 * Without this, the socket would lose SACK for its own later transfers (one loss repaired per
 * round trip), and take blocks in the client's space for its own. */
static __always_inline void xlate_sack(struct __sk_buff *skb, struct pkt *p, __u32 floor, __u32 delta)
{
    __u32 olen = tcp_optlen(p);
    if (olen < 2 + TCPOLEN_SACK_PERBLOCK || olen > TCP_MAX_OPTLEN)
        return;                                     /* no room for a block */
    __u8 opt[TCP_MAX_OPTLEN] = {};
    if (bpf_skb_load_bytes(skb, p->l4_off + TCP_HLEN, opt, olen) < 0)
        return;
    __u8 orig[TCP_MAX_OPTLEN];
    __builtin_memcpy(orig, opt, sizeof(orig));
    /* The SACK option (at most one per segment, RFC 2018). */
    __u32 at = 0, len = 0;
    if (!tcp_find_option(opt, olen, TCPOPT_SACK, &at, &len) || at + len > olen)
        return;
    __u32 n = (len - 2) % TCPOLEN_SACK_PERBLOCK ? 0 : (len - 2) / TCPOLEN_SACK_PERBLOCK;   /* (odd length: none) */
    __u32 kept = 0;
#pragma unroll
    for (int j = 0; j < TCP_MAX_SACK_BLOCKS; j++) {
        if (j >= n)
            break;
        __u64 from = at + 2 + TCPOLEN_SACK_PERBLOCK * j;
        CLAMP_MAX(from, TCP_MAX_OPTLEN - TCPOLEN_SACK_PERBLOCK);
        __u32 left, right;
        __builtin_memcpy(&left, opt + from, 4);
        __builtin_memcpy(&right, opt + from + 4, 4);
        left = bpf_ntohl(left);
        right = bpf_ntohl(right);
        if ((__s32)(right - left) <= 0 || (__s32)(right - floor) <= 0)
            continue;                               /* (an empty or reversed block names nothing) */
        if ((__s32)(left - floor) < 0)
            left = floor;
        left = bpf_htonl(left + delta);
        right = bpf_htonl(right + delta);
        __u64 to = at + 2 + TCPOLEN_SACK_PERBLOCK * kept;
        CLAMP_MAX(to, TCP_MAX_OPTLEN - TCPOLEN_SACK_PERBLOCK);
        __builtin_memcpy(opt + to, &left, 4);
        __builtin_memcpy(opt + to + 4, &right, 4);
        kept++;
    }
    __u32 nops = kept ? at + 2 + TCPOLEN_SACK_PERBLOCK * kept : at;   /* NOPs from here to the option's end */
    if (kept) {
        __u64 l = at + 1;
        CLAMP_MAX(l, TCP_MAX_OPTLEN - 1);
        opt[l] = 2 + TCPOLEN_SACK_PERBLOCK * kept;
    }
#pragma unroll
    for (int j = 0; j < TCP_MAX_OPTLEN; j++)
        if (j >= nops && j < at + len)
            opt[j] = TCPOPT_NOP;
    __s64 diff = bpf_csum_diff((__be32 *)orig, TCP_MAX_OPTLEN, (__be32 *)opt, TCP_MAX_OPTLEN, 0);
    bpf_skb_store_bytes(skb, p->l4_off + TCP_HLEN, opt, olen, 0);
    bpf_l4_csum_replace(skb, p->l4_off + TCP_CSUM_OFF, 0, diff, 0);
    if (kept)
        COUNT(sack_translated);
    else
        COUNT(sack_blanked);
}

/* A segment of a connection whose state was freed at its close (closed_conns, conn.h's
 * note_close): only its sequence numbers (the TIME_WAIT socket's ACKs carry no SACK). */
static __always_inline void xlate_closed(struct __sk_buff *skb, struct pkt *p, struct closed_conn *c, int in)
{
    __u32 dseq = in ? -c->delta_in : c->delta_out;
    __u32 dack = in ? -c->delta_out : c->delta_in;
    if (dseq)
        rewrite32(skb, p->l4_off, TCP_SEQ_OFF, p->tcp.seq, bpf_htonl(bpf_ntohl(p->tcp.seq) + dseq));
    if (dack && p->tcp.ack)
        rewrite32(skb, p->l4_off, TCP_ACK_OFF, p->tcp.ack_seq, bpf_htonl(bpf_ntohl(p->tcp.ack_seq) + dack));
}

/* A client segment's sequence number in the server socket's space. */
static __always_inline __u32 socket_seq_in(struct pkt *p, struct conn_state *cs)
{
    __u32 seq = bpf_ntohl(p->tcp.seq);
    /* A reset sent in reply to a segment takes its sequence number from that segment's ACK
     * (RFC 9293 section 3.10.7.1; Linux's tcp_v4_send_reset): a client whose socket is gone
     * resets on the kernel's segments of an answer in flight, which acknowledge only up to
     * the request (conn.h: in_flight). In the socket's space that is the request's own
     * length before rcv_nxt: out of its window, dropped, and the socket would stay
     * established with nobody at the other end. It is the reset the socket would have had
     * for its own segments, so it maps to rcv_nxt. (One exact value more to guess for a
     * blind reset, RFC 5961 section 3.2, and only while an answer is in flight.) */
    if (p->tcp.rst && (cs->flags & CONN_UNACKED) && seq == cs->last_req_seq)
        seq = cs->next_seq;
    return seq - cs->delta_in;
}

/* Client -> server. */
static __always_inline void xlate_in(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs)
{
    if (!cs->delta_in && !cs->delta_out)
        return;
    if (cs->delta_in) {
        __be32 n = bpf_htonl(socket_seq_in(p, cs));
        rewrite32(skb, p->l4_off, TCP_SEQ_OFF, p->tcp.seq, n);
    }
    if (cs->delta_out && p->tcp.ack) {
        /* An ACK from the start of the kernel's last answer up to its end names no byte of the
         * socket's beyond those before that answer, all of which the client had when the kernel
         * answered (in sync): in the socket's space it is exactly srv_next - delta_out. Plainly
         * translated it would fall below the socket's snd_una, and Linux answers an ACK that far
         * back (by more than the bytes it has had acknowledged: RFC 5961 section 5.2, tcp_ack)
         * with a challenge ACK. */
        __u32 ack = bpf_ntohl(p->tcp.ack_seq);
        if ((cs->flags & CONN_ANSWERED) && (__s32)(ack - (cs->srv_next - cs->last_resp_len)) >= 0 &&
            (__s32)(ack - cs->srv_next) < 0)
            ack = cs->srv_next;
        rewrite32(skb, p->l4_off, TCP_ACK_OFF, p->tcp.ack_seq, bpf_htonl(ack - cs->delta_out));
    }
    /* The client's blocks are of the server's bytes: below srv_next, only kernel answers or
     * bytes acknowledged before the last one (the socket sends after it). */
    xlate_sack(skb, p, cs->srv_next, -cs->delta_out);
    COUNT(xlate_in);
}

/* Server -> client. */
static __always_inline void xlate_out(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs)
{
    if (!cs->delta_in && !cs->delta_out)
        return;
    if (cs->delta_out) {
        __be32 n = bpf_htonl(bpf_ntohl(p->tcp.seq) + cs->delta_out);
        rewrite32(skb, p->l4_off, TCP_SEQ_OFF, p->tcp.seq, n);
    }
    if (cs->delta_in && p->tcp.ack) {
        __be32 n = bpf_htonl(bpf_ntohl(p->tcp.ack_seq) + cs->delta_in);
        rewrite32(skb, p->l4_off, TCP_ACK_OFF, p->tcp.ack_seq, n);
    }
    /* The socket's blocks are of the client's bytes, in its own space: below next_seq there, only
     * bytes before the last request the kernel answered (every later one it holds is after). */
    xlate_sack(skb, p, cs->next_seq - cs->delta_in, cs->delta_in);
    COUNT(xlate_out);
}
