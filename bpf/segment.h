/* Building the segments the kernel sends: Ethernet/IP/TCP headers, the timestamp option, and the
 * payload copied from a cached answer (a slice of it, or its start in a response variant). */
#pragma once
#include "csum.h"

/* The IP header of a segment of l4 bytes (TCP header and payload) built from request p: towards
 * its sender (reply), or as p itself came (ack_the_socket). */
static __always_inline void ip_hdr(struct resp_hdrs *h, struct pkt *p, int reply, __u32 l4)
{
    __u32 *src = reply ? p->daddr : p->saddr, *dst = reply ? p->saddr : p->daddr;
    if (p->v6) {
        h->ip6.version = 6;
        h->ip6.payload_len = bpf_htons(l4);
        h->ip6.nexthdr = IPPROTO_TCP;
        h->ip6.hop_limit = 64;
        __builtin_memcpy(&h->ip6.saddr, src, 16);
        __builtin_memcpy(&h->ip6.daddr, dst, 16);
        return;
    }
    h->ip.version = 4;
    h->ip.ihl = 5;
    h->ip.tot_len = bpf_htons(IPV4_HLEN + l4);
    h->ip.frag_off = bpf_htons(0x4000);             /* DF, as Linux sends TCP */
    h->ip.ttl = 64;
    h->ip.protocol = IPPROTO_TCP;
    h->ip.saddr = src[3];
    h->ip.daddr = dst[3];
    h->ip.check = ~csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h->ip, IPV4_HLEN, 0)) & 0xffff;
}

/* The timestamp option as Linux lays it out (RFC 7323 appendix A): NOP, NOP, TIMESTAMP; values
 * in network order. */
static __always_inline void write_ts_option(__u8 *ts, __u32 tsval, __u32 tsecr)
{
    ts[0] = TCPOPT_NOP;
    ts[1] = TCPOPT_NOP;
    ts[2] = TCPOPT_TIMESTAMP;
    ts[3] = TCPOLEN_TIMESTAMP;
    __builtin_memcpy(&ts[4], &tsval, 4);
    __builtin_memcpy(&ts[8], &tsecr, 4);
}

/* The headers of a segment of the connection's last answer (or a pure ACK), towards the client
 * of ctx->p, with checksum 0. */
static __always_inline void segment_hdrs(struct resp_hdrs *h, struct answer_ctx *ctx, struct conn_state *cs,
                                         __u32 seq, __u32 len, __u32 thl, int psh)
{
    struct pkt *p = &ctx->p;
    /* (the socket's next hop, sock.h: note_route; before its SYN-ACK there is no answer) */
    __builtin_memcpy(h->eth.h_dest, cs->out_ifindex ? cs->next_hop : p->eth.h_source, ETH_ALEN);
    __builtin_memcpy(h->eth.h_source, p->eth.h_dest, ETH_ALEN);
    h->eth.h_proto = p->eth.h_proto;
    ip_hdr(h, p, 1, thl + len);
    h->tcp.source = p->tcp.dest;
    h->tcp.dest = p->tcp.source;
    h->tcp.seq = bpf_htonl(seq);
    h->tcp.ack_seq = ctx->ack_seq;
    h->tcp.doff = thl / 4;
    h->tcp.ack = 1;
    h->tcp.psh = psh;
    h->tcp.fin = ctx->fin;
    h->tcp.window = bpf_htons(cs->server_win);
    if (p->has_ts)
        write_ts_option(h->ts, ctx->tsval, ctx->tsecr);
}

/* Write built headers over the start of the skb: Ethernet and the IP header of the family, then
 * TCP (the timestamp option only if there is one). Constant lengths on each branch. */
static __always_inline long store_hdrs(struct __sk_buff *skb, struct resp_hdrs *h, int v6, int has_ts)
{
    const __u32 tcp_ts = TCP_HLEN + TCP_TS_OPTLEN;
    long err;
    if (v6) {
        err = bpf_skb_store_bytes(skb, 0, h, ETH_HLEN_ + IPV6_HLEN, 0);
        err |= has_ts ? bpf_skb_store_bytes(skb, ETH_HLEN_ + IPV6_HLEN, &h->tcp, tcp_ts, 0)
                      : bpf_skb_store_bytes(skb, ETH_HLEN_ + IPV6_HLEN, &h->tcp, TCP_HLEN, 0);
    } else {
        err = bpf_skb_store_bytes(skb, 0, h, ETH_HLEN_ + IPV4_HLEN, 0);
        err |= has_ts ? bpf_skb_store_bytes(skb, ETH_HLEN_ + IPV4_HLEN, &h->tcp, tcp_ts, 0)
                      : bpf_skb_store_bytes(skb, ETH_HLEN_ + IPV4_HLEN, &h->tcp, TCP_HLEN, 0);
    }
    return err;
}

/* Copy data[src, src + len) into the skb at dst: whole CHUNKs, then the rest (len % CHUNK) in
 * power-of-two pieces, each read clamped inside data[size] (a no-op for valid offsets; the
 * verifier needs it). Every offset is computed from len alone and each step either stores or not,
 * so the verifier's states after each step agree and are pruned. Returns < 0 on failure. */
#define STORE_PIECE(n)                                                                              \
    if (rest & (n)) {                                                                               \
        __u32 o = base + (rest & ~(2 * (n) - 1));                                                   \
        __u64 s = src + o;                                                                          \
        CLAMP_MAX(s, size - (n));                                                                   \
        if (bpf_skb_store_bytes(skb, dst + o, data + s, (n), 0) < 0)                                \
            return -1;                                                                              \
    }
static __always_inline long store_slice(struct __sk_buff *skb, __u32 dst, __u8 *data, __u32 src, __u32 len,
                                        const __u32 size)
{
    for (__u32 i = 0; i < size / CHUNK; i++) {
        __u32 o = i * CHUNK;
        if (o + CHUNK > len)
            break;
        __u64 s = src + o;
        CLAMP_MAX(s, size - CHUNK);
        if (bpf_skb_store_bytes(skb, dst + o, data + s, CHUNK, 0) < 0)
            return -1;
    }
    __u32 rest = len & (CHUNK - 1), base = len - rest;
    if (base > size)
        return -1;                                  /* (longer than size allows) */
    STORE_PIECE(256) STORE_PIECE(128) STORE_PIECE(64) STORE_PIECE(32) STORE_PIECE(16) STORE_PIECE(8)
    STORE_PIECE(4) STORE_PIECE(2) STORE_PIECE(1)
    return 0;
}

/* Bytes a response variant (VAR_*) adds to the stored answer: its Connection header line. */
static __always_inline __u32 variant_extra(__u32 variant)
{
    return variant == VAR_CLOSE11 ? CLOSE_HDR_LEN : variant == VAR_KEEP10 ? KEEP_HDR_LEN : 0;
}

/* Write the first n stored bytes of an answer at poff as `variant` (VAR_*) asks: aiohttp's answer
 * to that form of request is the stored bytes with a header line inserted at hx, where the head's
 * final CRLF starts, and/or "HTTP/1.0"; and the current Date. So: everything shifted up by extra
 * first, then the head before hx again in place, then the line in the gap. */
static __always_inline long store_variant(struct __sk_buff *skb, __u32 poff, __u8 *data, __u32 n, __u32 hx,
                                          __u32 variant, __u32 extra, __u8 *date, __u32 date_off,
                                          const __u32 size)
{
    long err = store_slice(skb, poff + extra, data, 0, n, size);
    if (extra) {
        err |= store_slice(skb, poff, data, 0, hx, size);
        if (variant == VAR_CLOSE11) {
            char line[] = "Connection: close\r\n";
            err |= bpf_skb_store_bytes(skb, poff + hx, line, CLOSE_HDR_LEN, 0);
        } else {
            char line[] = "Connection: keep-alive\r\n";
            err |= bpf_skb_store_bytes(skb, poff + hx, line, KEEP_HDR_LEN, 0);
        }
    }
    if (variant == VAR_CLOSE10 || variant == VAR_KEEP10) {
        __u8 zero = '0';
        err |= bpf_skb_store_bytes(skb, poff + VERSION_DIGIT_OFFSET, &zero, 1, 0);
    }
    err |= bpf_skb_store_bytes(skb, poff + date_off, date, DATE_SLOT_LEN, 0);
    return err;
}

/* Payload bytes one segment may carry: what the link's frame and the path's MTU hold (with thl
 * bytes of TCP header), the server socket's own MSS (the route's path MTU), and the client's MSS
 * (which excludes TCP options: RFC 9293 section 3.7.1). 0: none. */
static __always_inline __u32 seg_payload(struct __sk_buff *skb, struct conn_state *cs, __u32 l3, __u32 thl)
{
    __u32 ifindex = skb->ifindex;
    __u32 *max_frame = if_max_frame.lookup(&ifindex);
    if (!max_frame)
        return 0;
    __u32 link = *max_frame < MAX_FRAME ? *max_frame : MAX_FRAME;
    if (cs->path_mtu && ETH_HLEN_ + cs->path_mtu < link)
        link = ETH_HLEN_ + cs->path_mtu;            /* a smaller hop on the way (conn.h) */
    if (link <= ETH_HLEN_ + l3 + thl)
        return 0;
    __u32 seg = link - ETH_HLEN_ - l3 - thl;
    if (cs->sock_mss && cs->sock_mss < seg)
        seg = cs->sock_mss;                         /* what the socket itself would send (sock.h) */
    __u32 opts = thl - TCP_HLEN;
    __u32 mss = cs->client_mss > opts ? cs->client_mss - opts : 0;
    return mss < seg ? mss : seg;
}
