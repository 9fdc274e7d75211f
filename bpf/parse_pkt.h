/* Packet parsing: Ethernet, IPv4/IPv6 and TCP headers, TCP options, and the connection's key. */
#pragma once
#include "structs.h"

/* IPv4-mapped IPv6 address of an IPv4 one (both network order): see struct conn_key. */
static __always_inline void map_ipv4(__u32 *a, __be32 v4)
{
    a[0] = 0;
    a[1] = 0;
    a[2] = bpf_htonl(0xffff);
    a[3] = v4;
}

/* Ethernet, then IPv4 or IPv6, then TCP. Returns 0 if this is a TCP segment we may look at, -1
 * otherwise. IPv6 extension headers are not walked: Linux's TCP sends none, and a segment with
 * one is not ours to look at (it passes untouched). */
static __always_inline int parse_headers(struct __sk_buff *skb, struct pkt *p)
{
    if (bpf_skb_load_bytes(skb, 0, &p->eth, sizeof(p->eth)) < 0)
        return -1;
    __u32 ip_len, ip_hlen;
    if (p->eth.h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)) < 0)
            return -1;
        if (ip.protocol != IPPROTO_TCP || ip.ihl < 5)
            return -1;
        map_ipv4(p->saddr, ip.saddr);
        map_ipv4(p->daddr, ip.daddr);
        p->ip_plain = ip.ihl == 5 && !(ip.frag_off & bpf_htons(0x3fff));
        p->ce = (ip.tos & INET_ECN_MASK) == INET_ECN_CE;
        ip_hlen = ip.ihl * 4;
        ip_len = bpf_ntohs(ip.tot_len);
    } else if (p->eth.h_proto == bpf_htons(ETH_P_IPV6)) {
        /* version/class/flow (4), payload length (2), next header, hop limit; then the addresses,
         * loaded straight into p (the stack is tight) */
        __u8 fixed[8];
        if (bpf_skb_load_bytes(skb, ETH_HLEN_, fixed, sizeof(fixed)) < 0 ||
            bpf_skb_load_bytes(skb, ETH_HLEN_ + 8, p->saddr, 32) < 0)
            return -1;
        if (fixed[6] != IPPROTO_TCP)
            return -1;
        p->v6 = 1;
        p->ip_plain = 1;
        p->ce = ((fixed[1] >> 4) & INET_ECN_MASK) == INET_ECN_CE;   /* traffic class' low bits */
        ip_hlen = IPV6_HLEN;
        ip_len = ((__u32)fixed[4] << 8) | fixed[5];
        ip_len = ip_len ? ip_len + IPV6_HLEN : 0;
    } else {
        return -1;
    }
    p->l4_off = ETH_HLEN_ + ip_hlen;
    if (bpf_skb_load_bytes(skb, p->l4_off, &p->tcp, sizeof(p->tcp)) < 0)
        return -1;
    if (ip_len == 0)
        ip_len = skb->len - ETH_HLEN_;              /* BIG TCP: GSO packets over 64 KiB carry length 0 */
    __u32 hdrs = ip_hlen + p->tcp.doff * 4;
    if (p->tcp.doff < 5 || ip_len < hdrs)
        return -1;
    p->payload_off = p->l4_off + p->tcp.doff * 4;
    p->payload_len = ip_len - hdrs;
    p->has_ts = 0;
    p->only_ts = p->tcp.doff == 5;
    return 0;
}

/* An ICMP error saying one of our segments was too big for the path: ICMPv4 fragmentation needed
 * (RFC 1191) or ICMPv6 packet too big (RFC 8201), quoting a TCP segment. Fills p with the quoted
 * segment's addresses and the first 8 bytes of its TCP header (ports and sequence number: all
 * RFC 792 promises), as the server -> client segment it was, and returns the MTU reported, with
 * the offsets of the quoted sequence number and the ICMP checksum; 0 for any other packet. */
static __always_inline __u32 parse_too_big(struct __sk_buff *skb, struct pkt *p, __u32 *seq_off, __u32 *csum_off)
{
    if (bpf_skb_load_bytes(skb, 0, &p->eth, sizeof(p->eth)) < 0)
        return 0;
    __u8 icmp[ICMP_HLEN];
    __u32 mtu, quoted;
    if (p->eth.h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_ICMP || ip.ihl < 5 ||
            (ip.frag_off & bpf_htons(0x1fff)))
            return 0;                               /* (a later fragment holds no ICMP header) */
        __u32 at = ETH_HLEN_ + ip.ihl * 4;
        if (bpf_skb_load_bytes(skb, at, icmp, sizeof(icmp)) < 0 || icmp[0] != ICMP_DEST_UNREACH ||
            icmp[1] != ICMP_FRAG_NEEDED)
            return 0;
        mtu = ((__u32)icmp[6] << 8) | icmp[7];      /* the next-hop MTU (RFC 1191 section 4) */
        *csum_off = at + ICMP_CSUM_OFF;
        quoted = at + ICMP_HLEN;
        struct iphdr q;
        if (bpf_skb_load_bytes(skb, quoted, &q, sizeof(q)) < 0 || q.protocol != IPPROTO_TCP || q.ihl < 5)
            return 0;
        map_ipv4(p->saddr, q.saddr);
        map_ipv4(p->daddr, q.daddr);
        p->l4_off = quoted + q.ihl * 4;
    } else if (p->eth.h_proto == bpf_htons(ETH_P_IPV6)) {
        __u8 fixed[8];
        if (bpf_skb_load_bytes(skb, ETH_HLEN_, fixed, sizeof(fixed)) < 0 || fixed[6] != IPPROTO_ICMPV6)
            return 0;
        __u32 at = ETH_HLEN_ + IPV6_HLEN;
        if (bpf_skb_load_bytes(skb, at, icmp, sizeof(icmp)) < 0 || icmp[0] != ICMPV6_PKT_TOOBIG || icmp[1] != 0)
            return 0;
        mtu = ((__u32)icmp[4] << 24) | ((__u32)icmp[5] << 16) | ((__u32)icmp[6] << 8) | icmp[7];
        *csum_off = at + ICMP_CSUM_OFF;
        quoted = at + ICMP_HLEN;
        if (bpf_skb_load_bytes(skb, quoted, fixed, sizeof(fixed)) < 0 || fixed[6] != IPPROTO_TCP ||
            bpf_skb_load_bytes(skb, quoted + 8, p->saddr, 32) < 0)
            return 0;
        p->v6 = 1;
        p->l4_off = quoted + IPV6_HLEN;
    } else {
        return 0;
    }
    if (bpf_skb_load_bytes(skb, p->l4_off, &p->tcp, 8) < 0)
        return 0;
    *seq_off = p->l4_off + TCP_SEQ_OFF;
    return mtu;
}

/* Length of the IP header of segments we build towards p's sender (no options, no extension
 * headers). */
static __always_inline __u32 ip_hlen(const struct pkt *p)
{
    return p->v6 ? IPV6_HLEN : IPV4_HLEN;
}

/* Length of the TCP header of segments we build: the timestamp option, or no option at all. */
static __always_inline __u32 tcp_hdr_len(int has_ts)
{
    return has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
}

/* The connection's key from a client->server segment (in) or a server->client one (!in). */
static __always_inline void conn_key_of(struct conn_key *k, const struct pkt *p, int in)
{
    __builtin_memcpy(k->client_ip, in ? p->saddr : p->daddr, 16);
    __builtin_memcpy(k->server_ip, in ? p->daddr : p->saddr, 16);
    k->client_port = in ? p->tcp.source : p->tcp.dest;
    k->server_port = in ? p->tcp.dest : p->tcp.source;
}

/* The common option layout NOP NOP TIMESTAMP: record the timestamps. Anything else leaves only_ts 0. */
static __always_inline void parse_ts_option(struct __sk_buff *skb, struct pkt *p)
{
    if (p->tcp.doff * 4 != TCP_HLEN + TCP_TS_OPTLEN)
        return;
    __u8 o[TCP_TS_OPTLEN];
    if (bpf_skb_load_bytes(skb, p->l4_off + TCP_HLEN, o, sizeof(o)) < 0)
        return;
    if (o[0] != TCPOPT_NOP || o[1] != TCPOPT_NOP || o[2] != TCPOPT_TIMESTAMP || o[3] != TCPOLEN_TIMESTAMP)
        return;
    __builtin_memcpy(&p->tsval, &o[4], 4);
    __builtin_memcpy(&p->tsecr, &o[8], 4);
    p->has_ts = 1;
    p->only_ts = 1;
}

/* Length of the TCP options, in [0, TCP_MAX_OPTLEN], in a form the verifier can bound. */
static __always_inline __u32 tcp_optlen(const struct pkt *p)
{
    __u32 olen = (p->tcp.doff & 15) * 4;
    olen = olen > TCP_HLEN ? olen - TCP_HLEN : 0;
    asm volatile("" : "+r"(olen));                  /* clang would fold the bound into a signed form */
    olen &= 63;
    return olen > TCP_MAX_OPTLEN ? 0 : olen;
}

/* Find option `kind` in opt[0, olen): its offset and length in *at and *len, 1 if found. Walks the
 * kind/length list (RFC 9293 section 3.1); NOP is one byte, EOL ends the list. Unrolled: 40 bytes
 * at most. */
static __always_inline int tcp_find_option(const __u8 *opt, __u32 olen, __u8 want, __u32 *at, __u32 *len)
{
    __u32 next = 0;
#pragma unroll
    for (int i = 0; i < TCP_MAX_OPTLEN - 1; i++) {
        if (i != next || i >= olen)
            continue;
        __u8 kind = opt[i];
        if (kind == TCPOPT_EOL)
            return 0;
        if (kind == TCPOPT_NOP) {
            next = i + 1;
            continue;
        }
        __u8 l = opt[i + 1];
        if (l < 2)
            return 0;
        if (kind == want) {
            *at = i;
            *len = l;
            return 1;
        }
        next = i + l;
    }
    return 0;
}

/* Load the segment's TCP options into opt (TCP_MAX_OPTLEN bytes) and find option `kind` there: 1
 * and its offset and length in *at and *len. */
static __always_inline int find_option(struct __sk_buff *skb, struct pkt *p, __u8 kind, __u8 *opt, __u32 *at,
                                       __u32 *len)
{
    __u32 olen = tcp_optlen(p);
    if (olen == 0 || olen > TCP_MAX_OPTLEN)
        return 0;
    if (bpf_skb_load_bytes(skb, p->l4_off + TCP_HLEN, opt, olen) < 0)
        return 0;
    return tcp_find_option(opt, olen, kind, at, len);
}

/* Window scale option of a SYN or SYN-ACK; -1 if absent. */
static __always_inline int parse_wscale(struct __sk_buff *skb, struct pkt *p)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    if (!find_option(skb, p, TCPOPT_WINDOW, opt, &at, &len) || len != TCPOLEN_WINDOW ||
        at > TCP_MAX_OPTLEN - TCPOLEN_WINDOW)
        return -1;
    return opt[at + 2] > 14 ? 14 : opt[at + 2];   /* RFC 7323 section 2.3: at most 14 */
}

/* The timestamp option of a segment with any option layout (the server socket adds SACK blocks
 * when it has some, a client its own on duplicate ACKs): 1 and both values as sent (network order)
 * if there is one. */
static __always_inline int find_ts(struct __sk_buff *skb, struct pkt *p, __u32 *tsval, __u32 *tsecr)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    if (!find_option(skb, p, TCPOPT_TIMESTAMP, opt, &at, &len) || len != TCPOLEN_TIMESTAMP ||
        at > TCP_MAX_OPTLEN - TCPOLEN_TIMESTAMP)
        return 0;
    __builtin_memcpy(tsval, &opt[at + 2], 4);
    __builtin_memcpy(tsecr, &opt[at + 6], 4);
    return 1;
}

/* Does the segment's SACK option say the client holds data beyond a hole at ack: a block that
 * starts after it? A D-SACK block (RFC 2883 section 4: the first block, below the cumulative ACK
 * or inside the next block) reports bytes received twice, such as a resend that began below ack,
 * and no hole of its own. */
static __always_inline int sack_beyond(struct __sk_buff *skb, struct pkt *p, __u32 ack)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    if (!find_option(skb, p, TCPOPT_SACK, opt, &at, &len))
        return 0;
    for (__u32 i = 0; i < 4; i++) {                 /* (at most 4 blocks fit the options) */
        __u32 b = at + 2 + i * 8;
        if (b + 8 > at + len || b > TCP_MAX_OPTLEN - 8)
            break;
        __u32 left;
        __builtin_memcpy(&left, &opt[b], 4);
        if ((__s32)(bpf_ntohl(left) - ack) > 0)
            return 1;
    }
    return 0;
}

/* The MSS option of a SYN (RFC 9293 section 3.7.1: 536 when absent). */
static __always_inline __u32 parse_mss(struct __sk_buff *skb, struct pkt *p)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    if (!find_option(skb, p, TCPOPT_MSS, opt, &at, &len) || len != TCPOLEN_MSS || at > TCP_MAX_OPTLEN - TCPOLEN_MSS)
        return DEFAULT_MSS;
    return ((__u32)opt[at + 2] << 8) | opt[at + 3];
}
