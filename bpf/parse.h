/* Packet and HTTP request parsing. Functions return a pass reason, or GO_ON to continue
 * (Katran's FURTHER_PROCESSING convention). */
#pragma once
#include "structs.h"

#define GO_ON (-1)


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

/* Length of the IP header of segments we build towards p's sender (no options, no extension
 * headers). */
static __always_inline __u32 ip_hlen(const struct pkt *p)
{
    return p->v6 ? IPV6_HLEN : IPV4_HLEN;
}

/* The connection's key from a client->server segment (in) or a server->client one (!in). */
static __always_inline void conn_key_of(struct conn_key *k, const struct pkt *p, int in)
{
    __builtin_memcpy(k->client_ip, in ? p->saddr : p->daddr, 16);
    __builtin_memcpy(k->server_ip, in ? p->daddr : p->saddr, 16);
    k->client_port = in ? p->tcp.source : p->tcp.dest;
    k->server_port = in ? p->tcp.dest : p->tcp.source;
}

/* The common option layout NOP NOP TS(10): record the timestamps. Anything else leaves only_ts 0. */
static __always_inline void parse_ts_option(struct __sk_buff *skb, struct pkt *p)
{
    if (p->tcp.doff * 4 != TCP_HLEN + TCP_TS_OPTLEN)
        return;
    __u8 o[TCP_TS_OPTLEN];
    if (bpf_skb_load_bytes(skb, p->l4_off + TCP_HLEN, o, sizeof(o)) < 0)
        return;
    if (o[0] != 1 || o[1] != 1 || o[2] != 8 || o[3] != 10)
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
        if (kind == 0)
            return 0;
        if (kind == 1) {
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
    if (!find_option(skb, p, 3, opt, &at, &len) || len != 3 || at > TCP_MAX_OPTLEN - 3)
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
    if (!find_option(skb, p, 8, opt, &at, &len) || len != 10 || at > TCP_MAX_OPTLEN - 10)
        return 0;
    __builtin_memcpy(tsval, &opt[at + 2], 4);
    __builtin_memcpy(tsecr, &opt[at + 6], 4);
    return 1;
}

/* Does the segment carry a SACK option (the client holds data beyond a hole)? */
static __always_inline int has_sack(struct __sk_buff *skb, struct pkt *p)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    return find_option(skb, p, 5, opt, &at, &len);
}

/* The MSS option of a SYN (RFC 9293 section 3.7.1: 536 when absent). */
static __always_inline __u32 parse_mss(struct __sk_buff *skb, struct pkt *p)
{
    __u8 opt[TCP_MAX_OPTLEN] = {};
    __u32 at = 0, len = 0;
    if (!find_option(skb, p, 2, opt, &at, &len) || len != 4 || at > TCP_MAX_OPTLEN - 4)
        return DEFAULT_MSS;
    return ((__u32)opt[at + 2] << 8) | opt[at + 3];
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

static __always_inline __u8 lc(__u8 c) { return c | 0x20; }   /* letters only; others may alias */

/* Header names that make a request ineligible. Aliasing in lc() can only add false matches, which
 * pass more requests to userspace: the safe direction. Returns a pass reason, GO_ON, or one of the
 * HDR_* codes for headers the caller tracks. */
#define HDR_INM (-6)     /* If-None-Match: the sender compares it with the entry's ETag */
#define HDR_HOST (-7)    /* Host: llhttp requires exactly one in HTTP/1.1 */
#define HDR_CONN_KEEP (-8)   /* Connection: keep-alive */
#define HDR_CONN_CLOSE (-9)  /* Connection: close */
#define INM_NAME_LEN 14  /* "If-None-Match:" */

static __always_inline int classify_header(const __u8 *h)
{
    if (lc(h[0]) == 'i' && lc(h[1]) == 'f' && h[2] == '-') {
        if (lc(h[3]) == 'n' && lc(h[4]) == 'o' && lc(h[5]) == 'n' && lc(h[6]) == 'e' && h[7] == '-' &&
            lc(h[8]) == 'm' && lc(h[9]) == 'a' && lc(h[10]) == 't' && lc(h[11]) == 'c' && lc(h[12]) == 'h' &&
            h[13] == ':')
            return HDR_INM;
        return PASS_CONDITIONAL;                            /* If-Match, If-Modified-Since, If-Range, ... */
    }
    if (lc(h[0]) == 'r' && lc(h[1]) == 'a' && lc(h[2]) == 'n' && lc(h[3]) == 'g' && lc(h[4]) == 'e' && h[5] == ':')
        return PASS_RANGE;
    if (lc(h[0]) == 'c' && lc(h[1]) == 'o' && lc(h[2]) == 'n') {
        if (lc(h[3]) == 't' && lc(h[4]) == 'e' && lc(h[5]) == 'n' && lc(h[6]) == 't' && h[7] == '-')
            return PASS_BODY;                               /* Content-Length, Content-Type, ... */
        if (lc(h[3]) == 'n' && lc(h[4]) == 'e' && lc(h[5]) == 'c' && lc(h[6]) == 't' && lc(h[7]) == 'i' &&
            lc(h[8]) == 'o' && lc(h[9]) == 'n' && h[10] == ':') {
            /* "keep-alive" and "close" decide the answer's variant (llhttp reads them case-blind, as
             * lc() does); any other value (upgrade, several tokens, odd spacing) goes to userspace. */
            if (h[11] == ' ' && lc(h[12]) == 'k' && lc(h[13]) == 'e' && lc(h[14]) == 'e' && lc(h[15]) == 'p' &&
                h[16] == '-' && lc(h[17]) == 'a' && lc(h[18]) == 'l' && lc(h[19]) == 'i' && lc(h[20]) == 'v' &&
                lc(h[21]) == 'e' && h[22] == '\r')
                return HDR_CONN_KEEP;
            if (h[11] == ' ' && lc(h[12]) == 'c' && lc(h[13]) == 'l' && lc(h[14]) == 'o' && lc(h[15]) == 's' &&
                lc(h[16]) == 'e' && h[17] == '\r')
                return HDR_CONN_CLOSE;
            return PASS_CLOSE;
        }
    }
    if (lc(h[0]) == 't' && lc(h[1]) == 'r' && lc(h[2]) == 'a' && lc(h[3]) == 'n' && lc(h[4]) == 's' &&
        lc(h[5]) == 'f' && lc(h[6]) == 'e' && lc(h[7]) == 'r' && h[8] == '-')
        return PASS_BODY;                                   /* Transfer-Encoding */
    if (lc(h[0]) == 'u' && lc(h[1]) == 'p' && lc(h[2]) == 'g' && lc(h[3]) == 'r')
        return PASS_CLOSE;                                  /* Upgrade */
    if (lc(h[0]) == 'e' && lc(h[1]) == 'x' && lc(h[2]) == 'p' && lc(h[3]) == 'e' && lc(h[4]) == 'c' &&
        lc(h[5]) == 't' && h[6] == ':')
        return PASS_MALFORMED;                              /* Expect: 100-continue wants a body */
    if (lc(h[0]) == 'h' && lc(h[1]) == 'o' && lc(h[2]) == 's' && lc(h[3]) == 't' && h[4] == ':')
        return HDR_HOST;
    return GO_ON;
}

static __always_inline int is_vchar(__u8 c) { return c > 0x20 && c < 0x7f; }

/* RFC 9110 tchar (header names): ALPHA, DIGIT and !#$%&'*+-.^_`|~, as a 128-bit set. */
#define TCHAR_LO 0x03ff6cfa00000000ULL
#define TCHAR_HI 0x57ffffffc7fffffeULL
static __always_inline int is_tchar(__u8 c)
{
    if (c >= 128)
        return 0;
    return c < 64 ? (TCHAR_LO >> c) & 1 : (TCHAR_HI >> (c - 64)) & 1;
}

/* Scanner states of parse_window, kept in req_buf.state between stages. */
enum {
    ST_START,       /* nothing scanned yet */
    ST_SPACE,       /* the space after HEAD */
    ST_PATH,        /* request target, before '?' */
    ST_QUERY,       /* request target, after '?' */
    ST_LF,          /* the LF of a CRLF already checked by a look-ahead */
    ST_LINE_START,  /* first byte of a header line (or of the final CRLF) */
    ST_NAME,        /* header name, up to ':' */
    ST_VALUE,       /* header value (or the version), up to CR */
};

#define PARSE (-4)  /* not decided yet: scan the next window */

/* Scan b[lo, hi) of the request as exactly one `GET|HEAD <path>[?query] HTTP/1.x` request with no body
 * and nothing after it; the path goes to rb->key (zeroed by the caller). Returns GO_ON for such a
 * request, PARSE if it continues past hi, or a pass reason.
 * The caller writes a 0 at b[len]: the scan stops at that sentinel, so the loop never compares
 * positions against len (a NUL inside a request is malformed anyway).
 * HEAD is parsed like GET (the answer is then the headers alone).
 * Verifier cost: the loop index is the byte position and is never modified in the body,
 * look-aheads use constant offsets from it, and the only other state is one small enum. */
static __always_inline int parse_window(struct req_buf *rb, const __u32 lo, const __u32 hi)
{
    const __u8 *b = rb->b;
    __u32 len = rb->len;
    int state = rb->state;
    if (state == ST_START) {
        if (len < 18)   /* "GET / HTTP/1.1\r\n\r\n" */
            return PASS_SPLIT;
        if (b[0] == 'G' && b[1] == 'E' && b[2] == 'T' && b[3] == ' ') {
            rb->path_start = 4;
            state = ST_PATH;
        } else if (b[0] == 'H' && b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && b[4] == ' ') {
            rb->path_start = 5;
            state = ST_SPACE;
        } else {
            return PASS_METHOD;
        }
        if (b[rb->path_start & 7] != '/')
            return PASS_ESCAPED;                            /* absolute-form or asterisk-form target */
    }
    for (__u32 i = lo < 4 ? 4 : lo; i < hi; i++) {
        /* Launder the state through map memory: the verifier then sees an unknown value in [0, 7]
         * at every position instead of a constant per path, so all paths reaching position i
         * share one state and verification stays linear in the window size. */
        rb->state = state;
        state = *(volatile __u32 *)&rb->state & 7;
        __u8 c = b[i];
        if (c == 0)
            return i == len ? PASS_SPLIT : PASS_MALFORMED;
        if (state == ST_LF) {
            state = ST_LINE_START;
            continue;
        }
        if (state == ST_SPACE) {
            state = ST_PATH;
            continue;
        }
        if (state == ST_PATH || state == ST_QUERY) {
            if (c == ' ') {
                /* " HTTP/1.1\r\n" */
                if (b[i + 1] != 'H' || b[i + 2] != 'T' || b[i + 3] != 'T' || b[i + 4] != 'P' || b[i + 5] != '/' ||
                    b[i + 6] != '1' || b[i + 7] != '.')
                    return len < i + 11 ? PASS_SPLIT : PASS_VERSION;
                if (b[i + 8] == '0')
                    rb->http10 = 1;                 /* answered as aiohttp would: see VAR_* */
                else if (b[i + 8] != '1')
                    return len < i + 11 ? PASS_SPLIT : PASS_VERSION;
                if (b[i + 9] != '\r' || b[i + 10] != '\n')
                    return len < i + 11 ? PASS_SPLIT : PASS_MALFORMED;
                state = ST_VALUE;   /* the version is then scanned like a header value */
                continue;
            }
            if (!is_vchar(c))
                return PASS_MALFORMED;
            if (i >= 4 + MAX_TARGET)
                return PASS_TOO_LONG;
            if (c == '?')
                state = ST_QUERY;
            if (state == ST_QUERY)
                continue;
            if (c == '%')
                return PASS_ESCAPED;
            /* Read back from the map like the state: one verifier state whatever the method. */
            __u32 at = i - (*(volatile __u32 *)&rb->path_start & 7);
            if (at >= MAX_PATH - 1)
                return PASS_TOO_LONG;
            rb->key.path[at] = c;
            continue;
        }
        if (state == ST_LINE_START) {
            if (c == '\r') {
                if (b[i + 1] != '\n')
                    return i + 1 == len ? PASS_SPLIT : PASS_MALFORMED;
                if (i + 2 != len)
                    return PASS_PIPELINED;
                /* llhttp (aiohttp) rejects an HTTP/1.1 request without Host (HTTP/1.0 needs none). */
                return *(volatile __u32 *)&rb->host_seen || *(volatile __u32 *)&rb->http10 ? GO_ON : PASS_MALFORMED;
            }
            if (!is_tchar(c))
                return PASS_MALFORMED;                      /* obs-fold, an empty name, ... */
            if (++rb->headers > LIMIT_HEADERS)
                return PASS_TOO_LONG;
            int r = classify_header(b + i);
            if (r == HDR_INM) {
                if (*(volatile __u32 *)&rb->inm_pos)
                    return PASS_CONDITIONAL;                /* two of them: let userspace combine */
                rb->inm_pos = i + INM_NAME_LEN;
            } else if (r == HDR_HOST) {
                if (*(volatile __u32 *)&rb->host_seen)
                    return PASS_MALFORMED;                  /* llhttp rejects a duplicate Host */
                rb->host_seen = 1;
            } else if (r == HDR_CONN_KEEP || r == HDR_CONN_CLOSE) {
                if (*(volatile __u32 *)&rb->conn_hdr)
                    return PASS_CLOSE;                      /* two of them: llhttp's rules, not ours */
                rb->conn_hdr = r == HDR_CONN_KEEP ? CONN_HDR_KEEP : CONN_HDR_CLOSE;
            } else if (r != GO_ON) {
                return r;
            }
            state = ST_NAME;
        }
        if (state == ST_NAME) {
            if (c == ':')
                state = ST_VALUE;
            else if (!is_tchar(c))
                return PASS_MALFORMED;                      /* llhttp accepts only token bytes here */
            continue;
        }
        if (c == '\r') {
            if (b[i + 1] != '\n')
                return i + 1 == len ? PASS_SPLIT : PASS_MALFORMED;
            /* userspace's configured limits apply here too, or the parsers would disagree */
            __u32 line = i - *(volatile __u32 *)&rb->line_start;
            if (line > (*(volatile __u32 *)&rb->headers ? LIMIT_HEADER_SIZE : LIMIT_URL_LENGTH))
                return PASS_TOO_LONG;
            rb->line_start = i + 2;
            state = ST_LF;
            continue;
        }
        if (c != '\t' && (c < 0x20 || c > 0x7e))
            return PASS_MALFORMED;                          /* bare LF, DEL, obs-text */
    }
    rb->state = state;
    return PARSE;
}
