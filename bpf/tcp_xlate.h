/* Sequence translation between the client's view of the connection and the server socket's, the
 * way netfilter's seqadj does for NAT helpers. Bytes answered in the kernel were never seen by the
 * server socket (delta_in); bytes sent by the kernel were never sent by it (delta_out).
 *   client -> server: seq -= delta_in,  ack -= delta_out
 *   server -> client: seq += delta_out, ack += delta_in
 * SACK blocks are in the other side's sequence space; rather than translate block edges that may
 * fall inside kernel-sent bytes, they are turned into NOPs (the sender then recovers without them). */
#pragma once
#include "report.h"
#include "parse_pkt.h"

static __always_inline void rewrite32(struct __sk_buff *skb, __u32 l4_off, __u32 field, __be32 old, __be32 new)
{
    if (bpf_skb_store_bytes(skb, l4_off + field, &new, sizeof(new), 0) < 0 ||
        bpf_l4_csum_replace(skb, l4_off + TCP_CSUM_OFF, old, new, sizeof(new)) < 0)
        COUNT_ERR(ERR_XLATE);
}

/* Overwrite every SACK option with NOPs, fixing the checksum. */
static __always_inline void blank_sack(struct __sk_buff *skb, struct pkt *p)
{
    __u32 olen = tcp_optlen(p);
    if (olen <= TCP_TS_OPTLEN || olen > TCP_MAX_OPTLEN)
        return;     /* no room for a SACK block beside the timestamps */
    __u8 opt[TCP_MAX_OPTLEN] = {};
    if (bpf_skb_load_bytes(skb, p->l4_off + TCP_HLEN, opt, olen) < 0)
        return;
    __u8 orig[TCP_MAX_OPTLEN];
    __builtin_memcpy(orig, opt, sizeof(orig));
    /* The SACK option (at most one per segment, RFC 2018). */
    __u32 sack_at = 0, sack_len = 0;
    if (!tcp_find_option(opt, olen, TCPOPT_SACK, &sack_at, &sack_len))
        return;
#pragma unroll
    for (int j = 0; j < TCP_MAX_OPTLEN; j++)
        if (j >= sack_at && j < sack_at + sack_len)
            opt[j] = TCPOPT_NOP;
    __s64 diff = bpf_csum_diff((__be32 *)orig, TCP_MAX_OPTLEN, (__be32 *)opt, TCP_MAX_OPTLEN, 0);
    bpf_skb_store_bytes(skb, p->l4_off + TCP_HLEN, opt, olen, 0);
    bpf_l4_csum_replace(skb, p->l4_off + TCP_CSUM_OFF, 0, diff, 0);
    COUNT(sack_blanked);
}

/* Client -> server. */
static __always_inline void xlate_in(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs)
{
    if (!cs->delta_in && !cs->delta_out)
        return;
    if (cs->delta_in) {
        __be32 n = bpf_htonl(bpf_ntohl(p->tcp.seq) - cs->delta_in);
        rewrite32(skb, p->l4_off, TCP_SEQ_OFF, p->tcp.seq, n);
    }
    if (cs->delta_out && p->tcp.ack) {
        __be32 n = bpf_htonl(bpf_ntohl(p->tcp.ack_seq) - cs->delta_out);
        rewrite32(skb, p->l4_off, TCP_ACK_OFF, p->tcp.ack_seq, n);
    }
    blank_sack(skb, p);
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
    blank_sack(skb, p);
    COUNT(xlate_out);
}
