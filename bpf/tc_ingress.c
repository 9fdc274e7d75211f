/* TC ingress: client -> server. Answer a cached GET from the kernel, or translate and pass. */
#include "parse.h"
#include "csum.h"
#include "tcp_xlate.h"
#include "sock.h"

#define ANSWERED (-3)     /* the skb now holds the response */
#define SEND_MULTI (-10)  /* a multi-segment answer is recorded: fs_seg<cls> sends its segments */
#define HOLD (-11)        /* drop the segment: the client sends it again later */
#define SEND_SEG (-12)    /* answer_ctx says which segments (or pure ACK) fs_seg<cls> sends */

/* The headers of a segment we build, written over the start of the request skb: Ethernet, the IP
 * header of the request's family (its first IPV4_HLEN or IPV6_HLEN bytes of l3), TCP. */
struct resp_hdrs {
    struct ethhdr eth;
    union {
        struct iphdr ip;
        struct ipv6hdr ip6;
    };
    struct tcphdr tcp;
    __u8 ts[TCP_TS_OPTLEN];
} __attribute__((packed));

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

/* The headers of a segment of the connection's last answer (or a pure ACK), towards the client
 * of ctx->p, with checksum 0. */
static __always_inline void segment_hdrs(struct resp_hdrs *h, struct answer_ctx *ctx, struct conn_state *cs,
                                         __u32 seq, __u32 len, __u32 thl, int psh)
{
    struct pkt *p = &ctx->p;
    __builtin_memcpy(h->eth.h_dest, p->eth.h_source, ETH_ALEN);
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
    h->tcp.window = bpf_htons(cs->server_win);
    if (p->has_ts) {
        h->ts[0] = 1;
        h->ts[1] = 1;
        h->ts[2] = 8;
        h->ts[3] = 10;
        __builtin_memcpy(&h->ts[4], &ctx->tsval, 4);
        __builtin_memcpy(&h->ts[8], &ctx->tsecr, 4);
    }
}

/* Write the first n stored bytes of an answer at poff as `variant` (VAR_*) asks: aiohttp's answer
 * to that form of request is the stored bytes with a header line inserted at hx, where the head's
 * final CRLF starts, and/or "HTTP/1.0"; and the current Date. So: everything shifted up by extra
 * first, then the head before hx again in place, then the line in the gap. */
static __always_inline long store_variant(struct __sk_buff *skb, __u32 poff, __u8 *data, __u32 n, __u32 hx,
                                          __u32 variant, __u32 extra, __u8 *date, const __u32 date_off,
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

/* The headers' part of a TCP checksum: the pseudo-header sum (into *psum: what a
 * CHECKSUM_PARTIAL skb's field holds) and, returned, that plus the TCP header with its options
 * (`len`: payload bytes). */
static __always_inline __u32 header_sum(struct resp_hdrs *h, int v6, int has_ts, __u32 len, __u32 *psum)
{
    __u32 thl = has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
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
 * full sum of pseudo-header, header and payload (`full`). Probe which case this is. */
static __always_inline void store_tcp_csum(struct __sk_buff *skb, __u32 l3, __u32 psum, __u64 full)
{
    __u16 check;
    if (csum_is_partial(skb, l3)) {
        check = csum_fold(psum);
        COUNT(csum_partial);
    } else {
        check = ~csum_fold(full) & 0xffff;
        COUNT(csum_full);
    }
    bpf_skb_store_bytes(skb, ETH_HLEN_ + l3 + TCP_CSUM_OFF, &check, sizeof(check), 0);
}

/* A connection back from userspace may be answered on a segment whose acknowledgement of
 * userspace's last bytes the server socket has not processed (it rode on this request, which the
 * socket never sees). The socket would then retransmit bytes the client has, and take the
 * connection back. So before the request becomes the answer, it is turned into the pure ACK the
 * socket should have had (its own sequence space) and a clone is delivered to it. */
static __always_inline void ack_the_socket(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs,
                                           struct resp_hdrs *hp)
{
    __u32 thl = p->has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
    __builtin_memset(hp, 0, sizeof(*hp));          /* the caller's space: the stack is full */
    hp->eth = p->eth;
    ip_hdr(hp, p, 0, thl);
    hp->tcp = p->tcp;
    hp->tcp.seq = bpf_htonl(bpf_ntohl(p->tcp.seq) - cs->delta_in);
    hp->tcp.ack_seq = bpf_htonl(bpf_ntohl(p->tcp.ack_seq) - cs->delta_out);
    hp->tcp.doff = thl / 4;
    hp->tcp.psh = 0;
    hp->tcp.check = 0;
    if (p->has_ts) {
        hp->ts[0] = 1;
        hp->ts[1] = 1;
        hp->ts[2] = 8;
        hp->ts[3] = 10;
        __builtin_memcpy(&hp->ts[4], &p->tsval, 4);
        __builtin_memcpy(&hp->ts[8], &p->tsecr, 4);
    }
    __u32 psum;
    __u32 hsum = header_sum(hp, p->v6, p->has_ts, 0, &psum);
    cs->flags &= ~CONN_SOCK_ACK;
    if (bpf_skb_change_tail(skb, ETH_HLEN_ + ip_hlen(p) + thl, 0) < 0)
        return;                                     /* the socket learns it from a later segment */
    long err = store_hdrs(skb, hp, p->v6, p->has_ts);
    if (err)
        return;
    store_tcp_csum(skb, ip_hlen(p), psum, hsum);
    skb->mark = KERNEL_MARK;                        /* fs_ingress lets it through untouched */
    bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
    skb->mark = 0;
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
    cs->flags |= CONN_TS_SEEN;
    return bpf_htonl(tsval);
}

/* Payload bytes one segment may carry: what the link's frame holds (with thl bytes of TCP header)
 * and the client's MSS (which excludes TCP options: RFC 9293 section 3.7.1). 0: none. */
static __always_inline __u32 seg_payload(struct __sk_buff *skb, struct conn_state *cs, __u32 l3, __u32 thl)
{
    __u32 ifindex = skb->ifindex;
    __u32 *max_frame = if_max_frame.lookup(&ifindex);
    if (!max_frame)
        return 0;
    __u32 link = *max_frame < MAX_FRAME ? *max_frame : MAX_FRAME;
    if (link <= ETH_HLEN_ + l3 + thl)
        return 0;
    __u32 seg = link - ETH_HLEN_ - l3 - thl;
    __u32 opts = thl - TCP_HLEN;
    __u32 mss = cs->client_mss > opts ? cs->client_mss - opts : 0;
    return mss < seg ? mss : seg;
}

/* The kernel answered the request at req_seq (req_len bytes) with total bytes: the socket will
 * never see either, so the deltas grow; last_* keep what a retransmitted request needs. */
static __always_inline void record_answer(struct conn_state *cs, __u32 req_seq, __u32 req_len, __u32 total,
                                          __u32 variant)
{
    cs->last_req_seq = req_seq;
    cs->last_req_len = req_len;
    cs->last_resp_len = total;
    cs->delta_in += req_len;
    cs->delta_out += total;
    cs->next_seq = req_seq + req_len;
    cs->srv_next += total;
    cs->flags |= CONN_ANSWERED;
    if (variant == VAR_CLOSE11 || variant == VAR_CLOSE10)
        cs->flags |= CONN_CLOSING;
}

/* Rewrite skb into the response for the request in p and update the connection's deltas.
 * Inlined once per size class so `size` is a constant the verifier can bound reads with.
 * `variant` (VAR_*) says how the stored bytes become aiohttp's answer to this form of request: a
 * header line inserted at hx, where the head's final CRLF starts, and/or "HTTP/1.0"; body_csum is
 * already that variant's sum. */
static __always_inline int send_body(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs,
                                     __u32 rlen, __u32 body_csum, __u8 *data, const __u32 size,
                                     const __u32 date_off, __u8 *date, __u32 hx, __u32 variant, const int kind)
{
    struct pkt *p = &ctx->p;
    if (rlen < date_off + DATE_SLOT_LEN || rlen > size)
        return PASS_CACHE_RACE;
    __u32 extra = variant == VAR_CLOSE11 ? CLOSE_HDR_LEN : variant == VAR_KEEP10 ? KEEP_HDR_LEN : 0;
    if (extra && (hx < date_off + DATE_SLOT_LEN || hx > rlen || hx >= CHUNK))
        return PASS_TOO_BIG;                        /* (a head this long is not worth a variant) */
    __u32 total = rlen + extra;
    __u32 thl = p->has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
    __u32 l3 = ip_hlen(p);
    __u32 seg = seg_payload(skb, cs, l3, thl);
    __u32 win = (__u32)bpf_ntohs(p->tcp.window) << (cs->client_wscale & 15);
    if (total > win)
        return PASS_WINDOW;
    __u32 req_seq = bpf_ntohl(p->tcp.seq);
    if (total > seg) {
        /* Several segments, sent by fs_seg<cls>. Only whole 200s get this long; the head and the
         * variant's header line must sit in the first segment. */
        if (kind != KIND_FULL || seg < MIN_SEG_PAYLOAD || hx + extra > seg || total > seg * MAX_SEGS)
            return PASS_TOO_BIG;
        record_answer(cs, req_seq, p->payload_len, total, variant);
        cs->resp_id = ctx->ref.id;
        cs->resp_cls = ctx->ref.cls;
        cs->resp_kind = kind;
        cs->resp_variant = variant;
        cs->seg_size = seg;
        cs->fast_ack = cs->srv_next - total - 1;    /* none yet */
        /* The request is not acknowledged until the client has every byte of the answer: any
         * loss then makes the client send the request again, which says (in its ACK) what it
         * has, so a lost segment is always recovered, without a timer here (DESIGN.md section 2,
         * option 1). The pure ACK follows the client's ACK of the whole answer. */
        cs->flags |= CONN_UNACKED;
        ctx->seg_off = 0;
        ctx->seg_end = total;
        ctx->seg_resend = 0;
        ctx->ack_seq = p->tcp.seq;                  /* what the server acknowledged before */
        ctx->tsval = p->has_ts ? our_tsval(cs, p->tsecr) : 0;
        ctx->tsecr = p->tsval;
        return SEND_MULTI;
    }
    __u32 frame = ETH_HLEN_ + l3 + thl + total;
    if (frame > MAX_FRAME)
        return PASS_TOO_BIG;

    struct resp_hdrs h = {};
    if (cs->flags & CONN_SOCK_ACK) {
        ack_the_socket(skb, p, cs, &h);
        __builtin_memset(&h, 0, sizeof(h));
    }
    ctx->ack_seq = bpf_htonl(req_seq + p->payload_len);
    ctx->tsval = p->has_ts ? our_tsval(cs, p->tsecr) : 0;
    ctx->tsecr = p->tsval;
    segment_hdrs(&h, ctx, cs, bpf_ntohl(p->tcp.ack_seq), total, thl, 1);   /* seq == srv_next, checked by the caller */
    __u32 psum;
    __u32 hsum = header_sum(&h, p->v6, p->has_ts, total, &psum);
    __u32 dsum = bpf_csum_diff(0, 0, (__be32 *)date, DATE_SLOT_LEN, 0);

    if (bpf_skb_change_tail(skb, frame, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return PASS_TOO_BIG;
    }
    /* From here on the request is gone: any failure drops the skb and the client retransmits. */
    long err = store_hdrs(skb, &h, p->v6, p->has_ts);
    __u32 poff = ETH_HLEN_ + l3 + thl;
    err |= store_variant(skb, poff, data, rlen, hx, variant, extra, date, date_off, size);
    if (err) {
        COUNT_ERR(ERR_STORE);
        return TC_ACT_SHOT;
    }

    store_tcp_csum(skb, l3, psum, (__u64)hsum + body_csum + dsum);

    record_answer(cs, req_seq, p->payload_len, total, variant);
    skb->mark = KERNEL_MARK;
    return ANSWERED;
}

/* The sum of one variant of one kind of answer (kind is a constant at every call). */
static __always_inline __u32 variant_csum(struct body_hdr *h, const int kind, __u32 variant, __u32 stored)
{
    const int row = kind * (NR_VARIANTS - 1);
    if (variant == VAR_CLOSE11)
        return h->vcsum[row];
    if (variant == VAR_CLOSE10)
        return h->vcsum[row + 1];
    if (variant == VAR_KEEP10)
        return h->vcsum[row + 2];
    return stored;
}

/* One function per size class: bcc must see each map.lookup call written out in the source. */
/* Does the If-None-Match value at rb->b[pos] name this ETag? 1 yes, 0 no, -1 when it is anything
 * but one entity-tag (a list, "*", odd bytes): userspace then applies RFC 9110 in full. Weak
 * comparison, as for GET and HEAD (section 13.1.2): a "W/" prefix is ignored. */
static __always_inline int etag_matches(struct req_buf *rb, __u64 pos, __u8 *tag, __u32 tag_len)
{
    CLAMP_MAX(pos, MAX_REQ - ETAG_MAX - 16);
    __u8 *v = rb->b + pos;
    __u32 k = 0;
#pragma unroll
    for (int s = 0; s < 4; s++)                     /* optional whitespace */
        if (k == s && (v[k] == ' ' || v[k] == '\t'))
            k++;
    if (v[k] == 'W' && v[k + 1] == '/')
        k += 2;
    if (v[k] != '"')
        return -1;                                  /* "*" or not an entity-tag */
    __u32 close = 0;
#pragma unroll
    for (int j = 1; j < ETAG_MAX; j++)              /* the closing quote */
        if (!close && v[k + j] == '"')
            close = j;
    if (!close)
        return -1;
    /* Launder close (and k) through the map: as constants they would multiply the verifier's
     * states by the 48 positions the quote can be at. */
    rb->scratch = (k << 8) | close;
    __u32 kc = *(volatile __u32 *)&rb->scratch;
    k = (kc >> 8) & 7;
    close = kc & 63;
    __u64 end = k + close + 1;
    CLAMP_MAX(end, 8 + ETAG_MAX);
    __u32 ows = 0;
#pragma unroll
    for (int s = 0; s < 4; s++)                     /* optional whitespace */
        if (ows == s && (v[end + s] == ' ' || v[end + s] == '\t'))
            ows++;
    if (v[end + ows] != '\r')
        return -1;                                  /* a list, or trailing bytes */
    if (close + 1 != tag_len || tag_len > ETAG_MAX)
        return 0;
    int equal = 1;
#pragma unroll                                      /* constant offsets: clang's own loop lost the bounds */
    for (int j = 0; j < ETAG_MAX; j++)
        if (j < tag_len && v[k + j] != tag[j])
            equal = 0;
    return equal;
}

/* Answer from one cached version: 304 if If-None-Match names it, headers only for HEAD, else 200;
 * each in the variant the request's version and Connection header call for. */
static __always_inline int answer_from(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk, struct body_hdr *h,
                                       __u8 *data, const __u32 size)
{
    __u32 v = ctx->variant;
    if (ctx->inm_pos) {
        __u32 off = h->etag_off;
        CLAMP_MAX(off, NM_REGION - ETAG_MAX);
        int m = etag_matches(rb, ctx->inm_pos, data + off, h->etag_len);
        if (m < 0)
            return PASS_CONDITIONAL;
        if (m)
            return send_body(skb, ctx, cs, h->nm_len, variant_csum(h, KIND_NM, v, h->nm_csum), data, NM_REGION,
                             NM_DATE_SLOT_OFFSET, clk->date, h->nm_len - 2, v, KIND_NM);
    }
    __u8 *full = data + NM_REGION;
    if (ctx->is_head)
        return send_body(skb, ctx, cs, h->head_len, variant_csum(h, KIND_HEAD, v, h->head_csum), full,
                         size - NM_REGION, DATE_SLOT_OFFSET, clk->date, h->head_len - 2, v, KIND_HEAD);
    return send_body(skb, ctx, cs, h->len, variant_csum(h, KIND_FULL, v, h->csum), full, size - NM_REGION,
                     DATE_SLOT_OFFSET, clk->date, h->head_len - 2, v, KIND_FULL);
}

/* One function per size class: bcc must see each map.lookup call written out in the source. */
static __always_inline int send_class0(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body0 *r = body_1k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS0_DATA) : PASS_CACHE_RACE;
}
static __always_inline int send_class1(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body1 *r = body_2k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS1_DATA) : PASS_CACHE_RACE;
}
static __always_inline int send_class2(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body2 *r = body_4k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS2_DATA) : PASS_CACHE_RACE;
}
static __always_inline int send_class3(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body3 *r = body_8k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS3_DATA) : PASS_CACHE_RACE;
}
static __always_inline int send_class4(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body4 *r = body_16k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS4_DATA) : PASS_CACHE_RACE;
}
static __always_inline int send_class5(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk)
{
    struct body5 *r = body_32k.lookup(&ctx->ref.id);
    return r ? answer_from(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS5_DATA) : PASS_CACHE_RACE;
}


/* Tell userspace about a connection the kernel ended (close_events: it wakes a reader thread). */
static __always_inline void tell_close(struct conn_key *k, __u32 kind)
{
    /* Written in place (reserve, submit): a copy on the stack would not fit beside the callers'. */
    struct close_event *ev = close_events.ringbuf_reserve(sizeof(struct close_event));
    if (!ev) {
        COUNT_ERR(ERR_CLOSE_LOST);
        return;
    }
    __builtin_memcpy(&ev->key, k, sizeof(*k));
    ev->kind = kind;
    close_events.ringbuf_submit(ev, 0);
}

/* ---- Multi-segment answers ------------------------------------------------------------------ */

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

/* The pure ACK of a request answered in several segments, once the client has all of them. */
static __always_inline int send_ack(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    __u32 thl = ctx->p.has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
    struct resp_hdrs h = {};
    segment_hdrs(&h, ctx, cs, cs->srv_next, 0, thl, 0);
    __u32 psum;
    __u32 l3 = ip_hlen(&ctx->p);
    __u32 hsum = header_sum(&h, ctx->p.v6, ctx->p.has_ts, 0, &psum);
    if (bpf_skb_change_tail(skb, ETH_HLEN_ + l3 + thl, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return TC_ACT_SHOT;
    }
    long err = store_hdrs(skb, &h, ctx->p.v6, ctx->p.has_ts);
    if (err) {
        COUNT_ERR(ERR_STORE);
        return TC_ACT_SHOT;
    }
    store_tcp_csum(skb, l3, psum, hsum);
    COUNT(acks);
    skb->mark = KERNEL_MARK;
    return bpf_redirect(skb->ifindex, 0);
}

/* The answer's version is gone (its file changed and the old body was deleted after its grace
 * period): its lost bytes cannot be sent again, and other bytes must not take their place.
 * Userspace resets the connection. */
static __always_inline int resend_gone(struct answer_ctx *ctx)
{
    COUNT_ERR(ERR_RESEND_GONE);
    tell_close(&ctx->key, CLOSE_ABORT);
    return TC_ACT_SHOT;
}

/* Send answer bytes [seg_off, seg_off + seg_size) of the connection's last answer (a 200 of the
 * entry whose body is h/data), then, if more is due, clone it out and tail-call for the next. The
 * bytes are those of the first sending: the stored version, the same variant; the Date is current,
 * but it sits in the first segment, which is only resent to a client that has none of the answer. */
static __always_inline int send_segment(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                        struct conn_state *cs, struct clock *clk, struct body_hdr *bh,
                                        __u8 *data, const __u32 size, const int cls)
{
    const __u32 region = size - NM_REGION;
    __u8 *full = data + NM_REGION;
    __u32 variant = cs->resp_variant;
    __u32 extra = variant == VAR_CLOSE11 ? CLOSE_HDR_LEN : variant == VAR_KEEP10 ? KEEP_HDR_LEN : 0;
    __u32 rlen = bh->len, hx = bh->head_len - 2;
    __u32 total = rlen + extra;
    if (rlen > region || total != cs->last_resp_len || hx >= CHUNK || hx < DATE_SLOT_OFFSET + DATE_SLOT_LEN)
        return resend_gone(ctx);                    /* (the id was reused: not the same answer) */
    __u32 off = ctx->seg_off, seg = cs->seg_size;
    if (off >= total || seg == 0)
        return TC_ACT_SHOT;
    __u32 len = total - off < seg ? total - off : seg;
    if (off == 0 && len < hx + extra)
        return TC_ACT_SHOT;
    if (off && off < extra)
        return TC_ACT_SHOT;
    __u32 thl = ctx->p.has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
    __u32 l3 = ip_hlen(&ctx->p);
    __u32 poff = ETH_HLEN_ + l3 + thl;
    if (len > MAX_SEG_PAYLOAD || bpf_skb_change_tail(skb, poff + len, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return TC_ACT_SHOT;
    }
    __u32 start = cs->srv_next - total;
    struct resp_hdrs h = {};
    segment_hdrs(&h, ctx, cs, start + off, len, thl, off + len == total);
    long err = store_hdrs(skb, &h, ctx->p.v6, ctx->p.has_ts);
    if (off == 0) {
        err |= store_variant(skb, poff, full, len - extra, hx, variant, extra, clk->date, DATE_SLOT_OFFSET, region);
    } else {
        err |= store_slice(skb, poff, full, off - extra, len, region);
    }
    if (err) {
        COUNT_ERR(ERR_STORE);
        return TC_ACT_SHOT;
    }
    __u32 psum;
    __u32 hsum = header_sum(&h, ctx->p.v6, ctx->p.has_ts, len, &psum);
    __u16 check;
    if (csum_is_partial(skb, l3)) {
        check = csum_fold(psum);
        COUNT(csum_partial);
    } else {
        check = ~csum_fold(payload_sum(skb, poff, len, rb->b, hsum)) & 0xffff;
        COUNT(csum_full);
    }
    bpf_skb_store_bytes(skb, ETH_HLEN_ + l3 + TCP_CSUM_OFF, &check, sizeof(check), 0);
    if (ctx->seg_resend)
        COUNT(resent);
    skb->mark = KERNEL_MARK;
    off += len;
    if (off < ctx->seg_end && off < total) {
        if (!ctx->seg_resend)
            COUNT(segments);
        ctx->seg_off = off;
        bpf_clone_redirect(skb, skb->ifindex, 0);
        progs.call(skb, PROG_SEG0 + cls);
        return TC_ACT_SHOT;                         /* no tail call: the rest counts as lost */
    }
    /* The last one goes out as a clone too, and the skb itself is dropped. On lo and veth the skb
     * is the client's own: the companion (fclone) of the request in its retransmission queue. If
     * it sat in the client's out-of-order queue (a segment before it lost), the client's stack
     * would take the request as still on its way out and never send it again (tcp's
     * skb_still_in_host_queue), and that retransmission is how the loss gets repaired. */
    bpf_clone_redirect(skb, skb->ifindex, 0);
    return TC_ACT_SHOT;
}

/* One function per size class: bcc must see each map.lookup call written out in the source. */
static __always_inline int seg_class0(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body0 *r = body_1k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS0_DATA, 0) : resend_gone(ctx);
}
static __always_inline int seg_class1(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body1 *r = body_2k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS1_DATA, 1) : resend_gone(ctx);
}
static __always_inline int seg_class2(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body2 *r = body_4k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS2_DATA, 2) : resend_gone(ctx);
}
static __always_inline int seg_class3(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body3 *r = body_8k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS3_DATA, 3) : resend_gone(ctx);
}
static __always_inline int seg_class4(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body4 *r = body_16k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS4_DATA, 4) : resend_gone(ctx);
}
static __always_inline int seg_class5(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                      struct conn_state *cs, struct clock *clk)
{
    struct body5 *r = body_32k.lookup(&cs->resp_id);
    return r ? send_segment(skb, ctx, rb, cs, clk, &r->h, r->data, CLASS5_DATA, 5) : resend_gone(ctx);
}

/* A segment of a connection whose multi-segment answer the client does not wholly have yet (or has
 * just completed with this ACK). Returns SEND_SEG with answer_ctx set up, HOLD, or GO_ON (the
 * segment is handled as usual). */
static __always_inline int in_flight(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    struct pkt *p = &ctx->p;
    if (p->tcp.syn || p->tcp.rst || p->tcp.fin || !p->tcp.ack)
        return GO_ON;                               /* the socket handles those (and acknowledges) */
    __u32 ack = bpf_ntohl(p->tcp.ack_seq), seq = bpf_ntohl(p->tcp.seq);
    __u32 total = cs->last_resp_len, start = cs->srv_next - total;
    if ((__s32)(ack - start) < 0)
        return GO_ON;                               /* from before the answer */
    int whole = (__s32)(ack - cs->srv_next) >= 0;
    int request_again = p->payload_len && seq == cs->last_req_seq;
    if (whole) {
        cs->flags &= ~CONN_UNACKED;
        if (p->payload_len && !request_again)
            return GO_ON;                           /* the next request acknowledges it all */
    } else if (p->payload_len && !request_again) {
        return HOLD;                                /* a request behind the answer: it must wait */
    }
    __u32 seg = cs->seg_size;
    if (!seg)
        return GO_ON;
    __u32 tsval = 0, tsecr = 0;
    p->has_ts = find_ts(skb, p, &tsval, &tsecr);   /* any option layout (SACK blocks, ...) */
    ctx->tsval = p->has_ts ? our_tsval(cs, tsecr) : 0;
    ctx->tsecr = tsval;
    ctx->seg_resend = 1;
    if (whole) {
        /* The client has the whole answer: acknowledge its request (again, if it sent it again
         * because that ACK was lost). */
        ctx->seg_off = total;
        ctx->seg_end = total;
        ctx->ack_seq = bpf_htonl(cs->next_seq);
        return SEND_SEG;
    }
    __u32 from = (ack - start) / seg * seg;         /* the first segment it lacks */
    ctx->ack_seq = bpf_htonl(cs->last_req_seq);     /* still not acknowledging the request */
    ctx->seg_off = from;
    if (request_again) {
        ctx->seg_end = total;                       /* everything from there */
        return SEND_SEG;
    }
    /* A duplicate ACK with SACK blocks: the client holds data beyond a hole at ack. Send that one
     * segment once per hole; a lost resend is recovered when the client sends the request again. */
    if (ack != cs->fast_ack && has_sack(skb, p)) {
        cs->fast_ack = ack;
        ctx->seg_end = from + seg < total ? from + seg : total;
        return SEND_SEG;
    }
    /* Progress. Kept from the socket: it has nothing outstanding, and it may answer an ACK from
     * before its own snd_una with an ACK of its own, which would acknowledge the request. */
    return HOLD;
}

/* A connection that went to userspace comes back once userspace has answered everything it read
 * and the client has acknowledged every byte of it: then nothing the server socket owes can come
 * after a kernel answer (browsers reuse connections: one cold request must not pin one for good).
 * Userspace records in user_idle how many bytes it had read and written when it last had nothing
 * left to do. The socket itself (bpf_tcp_sock) says how many it has received; this segment's
 * acknowledgement (it usually rides on the next request) must cover every byte userspace wrote,
 * which also proves none is still queued in the socket. The socket's rcv_nxt and snd_nxt then
 * re-anchor the kernel's view of both streams. */
static __always_inline int back_to_kernel(struct __sk_buff *skb, struct pkt *p, struct conn_key *k,
                                          struct conn_state *cs)
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
     * backlog while the socket is busy): this request must start exactly at its rcv_nxt. */
    __u32 seq = bpf_ntohl(p->tcp.seq) - cs->delta_in;
    if (tp && sk->state == BPF_TCP_ESTABLISHED && tp->bytes_received == idle->consumed && tp->snd_nxt == ack &&
        tp->rcv_nxt == seq) {
        cs->next_seq = tp->rcv_nxt + cs->delta_in;     /* client view of where the socket stands (= this seq) */
        cs->srv_next = tp->snd_nxt + cs->delta_out;
        cs->flags &= ~(CONN_USER | CONN_ANSWERED);     /* (the last kernel answer is no longer undoable) */
        if (tp->snd_una != ack)
            cs->flags |= CONN_SOCK_ACK;
        back = 1;
    }
    bpf_sk_release(sk);
    if (back) {
        user_idle.delete(k);
        COUNT(returns);
    }
    return back;
}

/* The first checks, on fs_ingress: can this segment's request be answered here at all? Returns
 * PARSE (the request is in the scratch buffer and answer_ctx is filled in), a pass reason, or
 * GO_ON for segments without a request (pure ACKs, FIN without data). */
static __always_inline int check_segment(struct __sk_buff *skb, struct pkt *p, struct conn_key *k, struct conn_state *cs,
                                         int *rolled_back)
{
    if (p->payload_len == 0)
        return GO_ON;
    if ((cs->flags & CONN_USER) && !back_to_kernel(skb, p, k, cs))
        return PASS_USER_OWNED;
    if (p->tcp.fin || p->tcp.rst || p->tcp.urg || !p->tcp.ack)
        return PASS_TCP_OPTIONS;
    if (!p->ip_plain)
        return PASS_IP_OPTIONS;
    parse_ts_option(skb, p);
    if (!p->only_ts)
        return PASS_TCP_OPTIONS;

    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk || bpf_ktime_get_ns() - clk->updated_ns > HEARTBEAT_TIMEOUT_NS)
        return PASS_STALE;

    __u32 seq = bpf_ntohl(p->tcp.seq), ack = bpf_ntohl(p->tcp.ack_seq);
    /* The client retransmits a request the kernel answered, and has acknowledged none of the
     * answer: the answer was lost. Undo it exactly (the server socket never saw either side), then
     * answer afresh, with current bytes, or pass it on. Deltas are never counted twice. */
    if ((cs->flags & CONN_ANSWERED) && seq == cs->last_req_seq && ack == cs->srv_next - cs->last_resp_len) {
        cs->delta_in -= cs->last_req_len;
        cs->delta_out -= cs->last_resp_len;
        cs->next_seq = seq;
        cs->srv_next -= cs->last_resp_len;
        cs->flags &= ~(CONN_ANSWERED | CONN_CLOSING);
        *rolled_back = 1;
    }
    /* New bytes while the client lacks part of the kernel's last answer (it pipelines, or that
     * answer was lost): passed on, the socket would acknowledge them, and with them the request
     * of the missing answer, which the client would then never send again; nobody would resend
     * the answer. Dropped instead: the client sends them again once it has the answer. */
    if ((cs->flags & CONN_ANSWERED) && (__s32)(ack - cs->srv_next) < 0 &&
        (__s32)(seq + p->payload_len - cs->next_seq) > 0)
        return HOLD;
    /* After an answer that ends the connection, nothing more is answered here (a client that
     * sends more anyway meets the server socket, which userspace is closing). */
    if (cs->flags & CONN_CLOSING)
        return PASS_CLOSING;
    /* In sync: the request starts where the previous one ended, and the client has every byte sent
     * so far (so responses can never be reordered or lost silently). */
    if (seq != cs->next_seq || ack != cs->srv_next)
        return PASS_OUT_OF_SYNC;

    struct req_buf *rb = scratch.lookup(&zero);
    struct answer_ctx *ctx = answer_scratch.lookup(&zero);
    if (!rb || !ctx)
        return PASS_TOO_LONG;
    if (!(cs->flags & CONN_SOCK_UP)) {              /* once per connection: it stays up until it closes */
        if (!server_socket_up(skb, p, &ctx->tuple))
            return PASS_HANDSHAKE;
        cs->flags |= CONN_SOCK_UP;
    }
    __u32 plen = p->payload_len;
    if (plen > MAX_REQ)
        return PASS_TOO_LONG;
    asm volatile("" : "+r"(plen));
    plen &= REQ_MASK | MAX_REQ;                     /* verifier: plen <= 2 * MAX_REQ - 1 ... */
    if (plen == 0 || plen > MAX_REQ)                /* ... and then <= MAX_REQ */
        return PASS_TOO_LONG;
    if (bpf_skb_load_bytes(skb, p->payload_off, rb->b, plen) < 0)
        return PASS_TOO_LONG;
    __u64 end = plen;
    CLAMP_MAX(end, MAX_REQ);
    rb->b[end] = 0;                                 /* the sentinel parse_window stops at */
    rb->len = plen;
    rb->state = ST_START;
    rb->inm_pos = 0;
    rb->host_seen = 0;
    rb->headers = 0;
    rb->line_start = 0;
    rb->http10 = 0;
    rb->conn_hdr = 0;
    __builtin_memset(&rb->key, 0, sizeof(rb->key));
    ctx->rolled_back = *rolled_back;
    return PARSE;
}

/* The segment goes on to the server socket: count why, keep response order, translate. */
static __always_inline int finish_pass(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs, int r, int rolled_back)
{
    cs->flags &= ~CONN_SOCK_ACK;                    /* the socket gets this segment's ACK itself */
    if (r != GO_ON) {
        if (rolled_back) {
            /* The earlier kernel answer was undone and this request goes to userspace instead. */
            int zero = 0;
            struct counters *c = counters.lookup(&zero);
            if (c)
                c->hits--;
        }
        COUNT_PASS(r);
        /* Segments wholly before next_seq are old data the server socket will just re-ACK; any
         * new byte goes to userspace, and then so must everything after it (response order). */
        if ((__s32)(bpf_ntohl(p->tcp.seq) + p->payload_len - cs->next_seq) > 0)
            cs->flags |= CONN_USER;
    }
    xlate_in(skb, p, cs);
    return TC_ACT_UNSPEC;
}

static __always_inline void new_connection(struct pkt *p, struct conn_key *k, struct __sk_buff *skb)
{
    struct conn_state cs = {};
    int ws = parse_wscale(skb, p);
    cs.client_wscale = ws < 0 ? 0 : ws;
    cs.flags = ws < 0 ? 0 : CONN_WS_OK;
    cs.next_seq = bpf_ntohl(p->tcp.seq) + 1;
    cs.client_mss = parse_mss(skb, p);
    cs.last_seen_ns = bpf_ktime_get_ns();
    if (conn_state.update(k, &cs) != 0)
        COUNT_ERR(ERR_CONN_FULL);
}

/* fs_ingress. Answering is split into tail-called programs (parse stages, then the sender of the
 * entry's size class), each verified on its own: one program scanning 1 KiB byte by byte does not
 * verify within the kernel's 1M-instruction budget. If a tail call fails, the request passes. */
static __always_inline int handle_ingress(struct __sk_buff *skb)
{
    if (skb->mark == KERNEL_MARK) {
        skb->mark = 0;                              /* ack_the_socket's ACK: already translated */
        return TC_ACT_UNSPEC;
    }
    /* The segment and its key live in answer_ctx, where the tail-called programs find them (and
     * off the stack, which is full). */
    int zero = 0;
    struct answer_ctx *ctx = answer_scratch.lookup(&zero);
    if (!ctx)
        return TC_ACT_UNSPEC;
    struct pkt *p = &ctx->p;
    struct conn_key *k = &ctx->key;
    __builtin_memset(p, 0, sizeof(*p));
    if (parse_headers(skb, p) < 0 || p->tcp.dest != bpf_htons(SERVER_PORT))
        return TC_ACT_UNSPEC;                       /* not ours: let other filters see it */
    count_if(skb, 0);
    conn_key_of(k, p, 1);
    if (p->tcp.syn) {
        if (!p->tcp.ack)
            new_connection(p, k, skb);
        return TC_ACT_UNSPEC;
    }
    struct conn_state *cs = conn_state.lookup(k);
    if (!cs) {
        if (p->payload_len)
            COUNT_PASS(PASS_NO_CONN);
        return TC_ACT_UNSPEC;
    }
    cs->last_seen_ns = bpf_ktime_get_ns();
    /* The client has every byte of an answer that ends the connection: userspace may now close
     * the socket, whose FIN then follows the answer. Not before: the kernel can resend a lost
     * answer only while the socket has sent nothing after it. */
    if ((cs->flags & (CONN_CLOSING | CONN_CLOSE_ACKED)) == CONN_CLOSING && p->tcp.ack &&
        (__s32)(bpf_ntohl(p->tcp.ack_seq) - cs->srv_next) >= 0) {
        cs->flags |= CONN_CLOSE_ACKED;
        tell_close(k, CLOSE_NOW);
    }

    if (cs->flags & CONN_UNACKED) {
        int f = in_flight(skb, ctx, cs);
        if (f == SEND_SEG) {
            progs.call(skb, PROG_SEG0 + (cs->resp_cls < NR_CLASSES ? cs->resp_cls : 0));
            return TC_ACT_SHOT;                     /* no tail call: as if lost, and recovered alike */
        }
        if (f == HOLD) {
            COUNT(held);
            return TC_ACT_SHOT;
        }
    }
    int rolled_back = 0;
    int r = check_segment(skb, p, k, cs, &rolled_back);
    if (r == HOLD) {
        COUNT(held);
        return TC_ACT_SHOT;
    }
    if (r == PARSE) {
        progs.call(skb, PROG_PARSE0);
        r = PASS_TOO_LONG;
    }
    int verdict = finish_pass(skb, p, cs, r, rolled_back);
    forget_if_done(k, cs, p);
    return verdict;
}

/* Tail-called programs find the request and its context in the per-CPU scratch maps. */
struct tail_ctx {
    struct req_buf *rb;
    struct answer_ctx *ctx;
    struct conn_state *cs;
};

static __always_inline int load_context(struct tail_ctx *t)
{
    int zero = 0;
    t->rb = scratch.lookup(&zero);
    t->ctx = answer_scratch.lookup(&zero);
    if (!t->rb || !t->ctx)
        return -1;
    t->cs = conn_state.lookup(&t->ctx->key);
    return t->cs ? 0 : -1;      /* cs cannot vanish: userspace deletes only closed connections */
}

/* fs_parse<stage>: scan one window of the request; then the next stage, or the sender. */
static __always_inline int handle_parse(struct __sk_buff *skb, const __u32 stage)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return TC_ACT_UNSPEC;
    struct req_buf *rb = t.rb;
    struct answer_ctx *ctx = t.ctx;
    struct conn_state *cs = t.cs;
    int r = parse_window(rb, stage * PARSE_WINDOW, (stage + 1) * PARSE_WINDOW);
    if (r == PARSE && stage + 1 < NR_PARSE_STAGES) {
        progs.call(skb, PROG_PARSE0 + stage + 1);
        r = PASS_TOO_LONG;
    }
    if (r == PARSE)
        r = PASS_TOO_LONG;
    if (r == GO_ON) {
        struct cache_ref *ref = file_cache.lookup(&rb->key);
        if (ref) {
            ctx->ref = *ref;
            ctx->is_head = rb->path_start == 5;
            ctx->inm_pos = rb->inm_pos;
            /* aiohttp's reading of the version and Connection header (see VAR_*) */
            if (rb->http10)
                ctx->variant = rb->conn_hdr == CONN_HDR_KEEP ? VAR_KEEP10 : VAR_CLOSE10;
            else
                ctx->variant = rb->conn_hdr == CONN_HDR_CLOSE ? VAR_CLOSE11 : VAR_KEEP11;
            progs.call(skb, PROG_SEND0 + (ref->cls < NR_CLASSES ? ref->cls : 0));
            r = PASS_CACHE_RACE;
        } else {
            r = PASS_MISS;
        }
    }
    struct pkt p = ctx->p;
    return finish_pass(skb, &p, cs, r, ctx->rolled_back);
}

/* fs_send<cls>: build the response from the body of size class cls. */
static __always_inline int handle_send(struct __sk_buff *skb, const int cls)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return TC_ACT_UNSPEC;
    struct answer_ctx *ctx = t.ctx;
    struct conn_state *cs = t.cs;
    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk)
        return TC_ACT_UNSPEC;
    int r;
    switch (cls) {
    case 0: r = send_class0(skb, ctx, t.rb, cs, clk); break;
    case 1: r = send_class1(skb, ctx, t.rb, cs, clk); break;
    case 2: r = send_class2(skb, ctx, t.rb, cs, clk); break;
    case 3: r = send_class3(skb, ctx, t.rb, cs, clk); break;
    case 4: r = send_class4(skb, ctx, t.rb, cs, clk); break;
    default: r = send_class5(skb, ctx, t.rb, cs, clk); break;
    }
    if (r == ANSWERED || r == SEND_MULTI) {
        if (cs->flags & CONN_CLOSING)
            tell_close(&ctx->key, CLOSE_WANTED);
        struct cache_ref *ref = file_cache.lookup(&t.rb->key);
        if (ref) {
            ref->last_hit_ns = bpf_ktime_get_ns();
            __sync_fetch_and_add(&ref->hits, 1);
        }
        struct counters *c = counters.lookup(&zero);
        if (c) {
            if (ctx->rolled_back) {
                c->retransmits++;
            } else {
                c->hits++;
                c->hit_bytes += cs->last_resp_len;
            }
        }
        if (r == SEND_MULTI) {
            progs.call(skb, PROG_SEG0 + cls);
            return TC_ACT_SHOT;                     /* no tail call: as if lost, and recovered alike */
        }
        return bpf_redirect(skb->ifindex, 0);
    }
    if (r == TC_ACT_SHOT)
        return TC_ACT_SHOT;
    struct pkt p = ctx->p;
    return finish_pass(skb, &p, cs, r, ctx->rolled_back);
}

/* fs_seg<cls>: send segments of the connection's last answer (answer_ctx says which), or its ACK. */
static __always_inline int handle_seg(struct __sk_buff *skb, const int cls)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return TC_ACT_SHOT;
    struct answer_ctx *ctx = t.ctx;
    struct conn_state *cs = t.cs;
    if (ctx->seg_off >= ctx->seg_end)
        return send_ack(skb, ctx, cs);
    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk)
        return TC_ACT_SHOT;
    switch (cls) {
    case 0: return seg_class0(skb, ctx, t.rb, cs, clk);
    case 1: return seg_class1(skb, ctx, t.rb, cs, clk);
    case 2: return seg_class2(skb, ctx, t.rb, cs, clk);
    case 3: return seg_class3(skb, ctx, t.rb, cs, clk);
    case 4: return seg_class4(skb, ctx, t.rb, cs, clk);
    default: return seg_class5(skb, ctx, t.rb, cs, clk);
    }
}
