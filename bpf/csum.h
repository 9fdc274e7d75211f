/* Internet checksums (RFC 1071) of the segments the programs build, in both of the skb's modes
 * (header lengths from parse_pkt.h). */
#pragma once
#include "report.h"
#include "parse_pkt.h"

static __always_inline __u16 csum_fold(__u64 sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

/* The sum of bytes that sit at an odd offset of the segment: RFC 1071 sums 16-bit words, so each
 * byte lands in the other half of its word, and the sum of the bytes read from an even address is
 * byte-swapped (one's complement addition commutes with the swap, RFC 1071 section 2(B)). */
static __always_inline __u32 csum_at_odd(__u64 sum)
{
    __u16 s = csum_fold(sum);
    return (__u32)(((s & 0xff) << 8) | (s >> 8));
}

struct pseudo_hdr4 {
    __be32 saddr;
    __be32 daddr;
    __u8 zero;
    __u8 proto;
    __be16 len;
};

/* RFC 8200 section 8.1 */
struct pseudo_hdr6 {
    __be32 saddr[4];
    __be32 daddr[4];
    __be32 len;
    __u8 zero[3];
    __u8 proto;
};

/* The headers' part of a TCP checksum: the pseudo-header sum (into *psum: what a
 * CHECKSUM_PARTIAL skb's field holds) and, returned, that plus the TCP header with its options
 * (`len`: payload bytes). */
static __always_inline __u32 header_sum(struct resp_hdrs *h, int v6, int has_ts, __u32 len, __u32 *psum)
{
    __u32 thl = tcp_hdr_len(has_ts);
    if (v6) {
        struct pseudo_hdr6 ph = {};
        __builtin_memcpy(ph.saddr, &h->ip6.saddr, 16);
        __builtin_memcpy(ph.daddr, &h->ip6.daddr, 16);
        ph.len = bpf_htonl(thl + len);
        ph.proto = IPPROTO_TCP;
        *psum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
    } else {
        struct pseudo_hdr4 ph = {h->ip.saddr, h->ip.daddr, 0, IPPROTO_TCP, bpf_htons(thl + len)};
        *psum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
    }
    return has_ts ? bpf_csum_diff(0, 0, (__be32 *)&h->tcp, TCP_HLEN + TCP_TS_OPTLEN, *psum)
                  : bpf_csum_diff(0, 0, (__be32 *)&h->tcp, TCP_HLEN, *psum);
}

/* One's complement sum of skb bytes [off, off + len) added to seed, read back through buf (at
 * least CHUNK + 4 bytes): bpf_csum_diff reads memory, not the skb. An odd tail is zero padded,
 * as the TCP checksum pads it. */
static __always_inline __u32 payload_sum(struct __sk_buff *skb, __u32 off, __u32 len, __u8 *buf, __u32 seed)
{
    __u32 sum = seed;
    for (__u32 i = 0; i < MAX_SEG_PAYLOAD / CHUNK; i++) {
        __u32 o = i * CHUNK;
        if (o + CHUNK > len)
            break;
        bpf_skb_load_bytes(skb, off + o, buf, CHUNK);
        sum = bpf_csum_diff(0, 0, (__be32 *)buf, CHUNK, sum);
    }
    __u32 r = len;
    asm volatile("" : "+r"(r));
    r &= CHUNK - 1;
    if (r == 0)
        return sum;
    bpf_skb_load_bytes(skb, off + (len - r), buf, r);
    __u64 z = r;
    CLAMP_MAX(z, CHUNK - 1);
    buf[z] = 0;
    buf[z + 1] = 0;
    buf[z + 2] = 0;
    __u32 r4 = (r + 3) & ~3u;
    CLAMP_MAX(r4, CHUNK);
    return bpf_csum_diff(0, 0, (__be32 *)buf, r4, sum);
}

/* Is the skb CHECKSUM_PARTIAL (the stack completes the sum; see store_tcp_csum)? l3: its IP
 * header's length. */
static __always_inline int csum_is_partial(struct __sk_buff *skb, __u32 l3)
{
    __u32 csum_off = ETH_HLEN_ + l3 + TCP_CSUM_OFF;
    __u16 probe = 0;
    bpf_l4_csum_replace(skb, csum_off, 0, bpf_htons(1), 2);
    bpf_skb_load_bytes(skb, csum_off, &probe, sizeof(probe));
    return probe == 0;
}

/* Write the TCP checksum of a segment we built (its field must be 0). On CHECKSUM_PARTIAL skbs
 * (lo, veth with offload) bpf_l4_csum_replace leaves the field alone and the stack completes the
 * sum later: the field must then hold the folded pseudo-header sum `psum`; otherwise it gets the
 * full sum of pseudo-header, header and payload. Probe which case this is.
 * `sum` holds that full sum, but for the payload bytes [poff, poff + plen) that are still to be
 * read back from the skb (a segment's slice of an answer; plen 0: none), which is done only when
 * the sum is needed; with plen, sum is a 32-bit seed (header_sum's). */
static __always_inline void store_tcp_csum(struct __sk_buff *skb, __u32 l3, __u32 psum, __u64 sum, __u32 poff,
                                           __u32 plen, __u8 *buf)
{
    __u16 check;
    if (csum_is_partial(skb, l3)) {
        check = csum_fold(psum);
        COUNT(csum_partial);
    } else {
        if (plen)
            sum = payload_sum(skb, poff, plen, buf, (__u32)sum);
        check = ~csum_fold(sum) & 0xffff;
        COUNT(csum_full);
    }
    bpf_skb_store_bytes(skb, ETH_HLEN_ + l3 + TCP_CSUM_OFF, &check, sizeof(check), 0);
}
