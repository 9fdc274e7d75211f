/* Answering from the cache: the one place that looks up an answer's body by its size class, the
 * answer to a request (304, HEAD or 200, in the variant the request calls for), and the segments of
 * an answer longer than one segment, with their final pure ACK. */
#pragma once
#include "conn.h"
#include "parse_http.h"

/* The body *id of size class cls, or NULL if it is gone (id points into a map value: no stack). cls is a constant at every call, so the
 * switch folds to one lookup whose map the verifier knows the value size of (class_size(cls) bytes
 * of data after the header). These six lookups are the only place the body maps are named: bcc
 * rewrites a map call only where it is written out, not through a map pointer or a macro. */
static __always_inline struct body_hdr *class_body(const int cls, __u32 *id)
{
    switch (cls) {
    case 0: return (struct body_hdr *)body_1k.lookup(id);
    case 1: return (struct body_hdr *)body_2k.lookup(id);
    case 2: return (struct body_hdr *)body_4k.lookup(id);
    case 3: return (struct body_hdr *)body_8k.lookup(id);
    case 4: return (struct body_hdr *)body_16k.lookup(id);
    default: return (struct body_hdr *)body_32k.lookup(id);
    }
}
_Static_assert(NR_CLASSES == 6, "one body map lookup in class_body per size class");

/* Bytes of data after the header in a body of size class cls (a constant). */
static __always_inline __u32 class_size(const int cls)
{
    switch (cls) {
    case 0: return CLASS0_DATA;
    case 1: return CLASS1_DATA;
    case 2: return CLASS2_DATA;
    case 3: return CLASS3_DATA;
    case 4: return CLASS4_DATA;
    default: return CLASS5_DATA;
    }
}

/* A body's data: right after its header in every class (struct body<n>). */
static __always_inline __u8 *body_data(struct body_hdr *h)
{
    return (__u8 *)(h + 1);
}
#define DATA_FOLLOWS_HEADER(n) \
    _Static_assert(offsetof(struct body##n, data) == sizeof(struct body_hdr), "body" #n ": data follows the header")
DATA_FOLLOWS_HEADER(0);
DATA_FOLLOWS_HEADER(1);
DATA_FOLLOWS_HEADER(2);
DATA_FOLLOWS_HEADER(3);
DATA_FOLLOWS_HEADER(4);
DATA_FOLLOWS_HEADER(5);

/* Can the first rlen stored bytes of an answer (of a body with size bytes of room, its Date slot
 * at date_off) be sent? And a variant adding extra bytes at hx (the head's final CRLF)? */
static __always_inline int stored_answer_ok(__u32 rlen, __u32 size, __u32 date_off)
{
    return rlen >= date_off + DATE_SLOT_LEN && rlen <= size && date_off <= MAX_DATE_SLOT_OFFSET;
}

static __always_inline int variant_fits(__u32 extra, __u32 hx, __u32 rlen, __u32 date_off)
{
    return !extra || (hx >= date_off + DATE_SLOT_LEN && hx <= rlen && hx < CHUNK);
}

/* A connection without a socket so far (nosock.h) whose first answer does not end it gets its
 * socket now: the handshake's last ACK, kept back, is the ACK the socket is owed (CONN_SOCK_ACK),
 * which the answer hands to the socket first (ack_the_socket). It carries the cookie, so the
 * kernel creates the socket from it. Should that fail (a full accept queue drops it), the next
 * segment that passes, translated, carries the same cookie (its ACK less delta_out is the SYN-ACK's
 * sequence again), and the socket is created then, with exactly the bytes the kernel did not answer. */
static __always_inline void socket_from_cookie(struct conn_state *cs)
{
    CONN_SET(cs, CONN_SOCK_ACK);
    CONN_CLEAR(cs, CONN_NOSOCK);
}

/* An answer of `total` payload bytes in one segment begins (the caller checked it fits): the
 * connection is claimed (conn_sync.h), the socket gets the ACK it is owed first (ack_the_socket),
 * and the skb becomes the segment's headers, its payload still to be written; *hsum and *psum get
 * the headers' sums (header_sum). Returns FS_CONTINUE with the claim held, or FS_RACE, FS_DROP
 * (the request is gone: the client retransmits it) or PASS_TOO_BIG (the skb intact), released. */
static __always_inline int begin_one_segment(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs,
                                             __u32 total, __u32 thl, __u32 l3, __u32 *hsum, __u32 *psum)
{
    struct pkt *p = &ctx->p;
    if (!conn_claim(cs, ctx->version))
        return FS_RACE;
    struct resp_hdrs h = {};
    int acked = 0;
    if (cs->flags & CONN_SOCK_ACK) {
        acked = ack_the_socket(skb, p, cs, &h);
        __builtin_memset(&h, 0, sizeof(h));
    }
    ctx->ack_seq = bpf_htonl(bpf_ntohl(p->tcp.seq) + p->payload_len);
    ctx->tsval = p->has_ts ? our_tsval(cs, p->tsecr) : 0;
    ctx->tsecr = p->tsval;
    segment_hdrs(&h, ctx, cs, bpf_ntohl(p->tcp.ack_seq), total, thl, 1);   /* seq == srv_next, checked by the caller */
    *hsum = header_sum(&h, p->v6, p->has_ts, total, psum);
    if (bpf_skb_change_tail(skb, ETH_HLEN_ + l3 + thl + total, 0) < 0) {
        ctx->version = conn_release(cs);            /* (so the pass that follows can claim) */
        COUNT_ERR(ERR_CHANGE_TAIL);
        return acked ? FS_DROP : PASS_TOO_BIG;      /* (no request left to pass: it comes again) */
    }
    /* From here on the request is gone: any failure drops the skb and the client retransmits. */
    if (store_hdrs(skb, &h, p->v6, p->has_ts)) {
        conn_release(cs);
        COUNT_ERR(ERR_STORE);
        return FS_DROP;
    }
    return FS_CONTINUE;
}

/* An answer longer than one segment begins: the connection is claimed (conn_sync.h) and, back
 * from userspace on a request carrying the ACK the socket is owed, the socket gets it first, as
 * for a one-segment answer (the segment sender rebuilds the skb whole): it would otherwise
 * retransmit its last bytes into the middle of this answer. The caller then writes the answer's
 * parts (conn_state.part_*) under the claim and commits (commit_segments). Returns FS_CONTINUE,
 * FS_RACE or PASS_TOO_BIG (the skb is intact: the socket gets it all), released. */
static __always_inline int claim_for_segments(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    if (!conn_claim(cs, ctx->version))
        return FS_RACE;
    if (cs->flags & CONN_SOCK_ACK) {
        struct resp_hdrs h = {};
        if (!ack_the_socket(skb, &ctx->p, cs, &h)) {
            ctx->version = conn_release(cs);        /* (so the pass that follows can claim) */
            return PASS_TOO_BIG;
        }
    }
    return FS_CONTINUE;
}

/* Record the answer of total bytes in n parts (last_items), cut into segments of seg bytes, for
 * the segment sender (fs_seg<cls>), and release the claim. Returns FS_ANSWER_SEGMENTS. */
static __always_inline int commit_segments(struct answer_ctx *ctx, struct conn_state *cs, __u32 total,
                                           __u32 variant, __u32 seg, __u32 n)
{
    struct pkt *p = &ctx->p;
    record_answer(cs, bpf_ntohl(p->tcp.seq), p->payload_len, total, variant, ctx->rolled_back, n);
    cs->seg_size = seg;
    cs->fast_ack = cs->srv_next - total - 1;        /* none yet */
    /* The request is not acknowledged until the client has every byte of the answer: any loss
     * then makes the client send the request again, which says (in its ACK) what it has, so a
     * lost segment is always recovered, without a timer here (DESIGN.md section 4, option 1).
     * The pure ACK follows the client's ACK of the whole answer. */
    CONN_SET(cs, CONN_UNACKED);
    ctx->version = conn_release(cs);
    ctx->seg_off = 0;
    ctx->seg_end = total;
    ctx->seg_resend = 0;
    ctx->probe = 0;
    ctx->ack_seq = p->tcp.seq;                      /* what the server acknowledged before */
    ctx->tsval = p->has_ts ? our_tsval(cs, p->tsecr) : 0;
    ctx->tsecr = p->tsval;
    return FS_ANSWER_SEGMENTS;
}

/* Rewrite skb into the response for the request in p and update the connection's deltas; or, for
 * an answer longer than one segment, record it for the segment sender (FS_ANSWER_SEGMENTS).
 * Inlined once per size class so `size` is a constant the verifier can bound reads with.
 * `variant` (VAR_*) says how the stored bytes become aiohttp's answer to this form of request: a
 * header line inserted at hx, where the head's final CRLF starts, and/or "HTTP/1.0"; body_csum is
 * already that variant's sum. The answer is committed under a claim (conn_sync.h) made before the
 * skb changes. Returns FS_REDIRECT (the skb is the answer), FS_ANSWER_SEGMENTS, FS_DROP (the
 * request was overwritten: the client retransmits it), FS_RACE or a pass reason. */
static __always_inline int send_body(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs,
                                     __u32 rlen, __u32 body_csum, __u8 *data, const __u32 size,
                                     __u32 date_off, __u8 *date, __u32 hx, __u32 variant, const int kind)
{
    struct pkt *p = &ctx->p;
    if (!stored_answer_ok(rlen, size, date_off))
        return PASS_CACHE_RACE;
    __u32 extra = variant_extra(variant);
    if (!variant_fits(extra, hx, rlen, date_off))
        return PASS_TOO_BIG;                        /* (a head this long is not worth a variant) */
    __u32 total = rlen + extra;
    __u32 thl = tcp_hdr_len(p->has_ts);
    __u32 l3 = ip_hlen(p);
    __u32 seg = seg_payload(skb, cs, l3, thl);
    __u32 win = (__u32)bpf_ntohs(p->tcp.window) << (cs->client_wscale & 15);
    if (total > win)
        return PASS_WINDOW;
    __u32 req_seq = bpf_ntohl(p->tcp.seq);
    /* Without a socket so far (nosock.h): an answer that ends the connection in one segment
     * carries our FIN and needs none; any other gets one (socket_from_cookie). */
    if (cs->flags & CONN_NOSOCK) {
        if ((variant == VAR_CLOSE11 || variant == VAR_CLOSE10) && total <= seg)
            ctx->fin = 1;
        else
            socket_from_cookie(cs);
    }
    if (total > seg) {
        /* Several segments, sent by fs_seg<cls>. Only whole 200s get this long; the head and the
         * variant's header line must sit in the first segment. */
        if (kind != KIND_FULL || date_off != DATE_SLOT_OFFSET || seg < MIN_SEG_PAYLOAD || hx + extra > seg ||
            total > seg * MAX_SEGS)
            return PASS_TOO_BIG;
        int r = claim_for_segments(skb, ctx, cs);
        if (r != FS_CONTINUE)
            return r;
        cs->part_id[0] = ctx->ref.id;
        cs->part_len[0] = total;
        cs->part_cv[0] = PART_CV(ctx->ref.cls, variant);
        return commit_segments(ctx, cs, total, variant, seg, 1);
    }
    __u32 frame = ETH_HLEN_ + l3 + thl + total;
    if (frame > MAX_FRAME)
        return PASS_TOO_BIG;

    __u32 hsum, psum;
    int r = begin_one_segment(skb, ctx, cs, total, thl, l3, &hsum, &psum);
    if (r != FS_CONTINUE)
        return r;
    __u32 dsum = bpf_csum_diff(0, 0, (__be32 *)date, DATE_SLOT_LEN, 0);
    if (date_off & 1)
        dsum = csum_at_odd(dsum);                   /* (a 404's: "HTTP/1.1 404 Not Found\r\nDate:") */
    if (store_variant(skb, ETH_HLEN_ + l3 + thl, data, rlen, hx, variant, extra, date, date_off, size)) {
        conn_release(cs);
        COUNT_ERR(ERR_STORE);
        return FS_DROP;
    }

    store_tcp_csum(skb, l3, psum, (__u64)hsum + body_csum + dsum, 0, 0, NULL);

    record_answer(cs, req_seq, p->payload_len, total + ctx->fin, variant, ctx->rolled_back, 1);  /* (a FIN takes a sequence number) */
    conn_release(cs);
    skb->mark = KERNEL_MARK;
    return FS_REDIRECT;
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

/* Answer from one cached version: 304 if If-None-Match names it (or, without one, If-Modified-Since
 * is its Last-Modified), headers only for HEAD, else 200;
 * each in the variant the request's version and Connection header call for. A negative entry
 * (nm_len 0) holds userspace's 404 for a missing path instead, which no precondition changes
 * (RFC 9110 section 13.2.1: they apply to a selected representation, and there is none). */
static __always_inline int answer_from(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                       struct conn_state *cs, struct clock *clk, struct body_hdr *h,
                                       __u8 *data, const __u32 size)
{
    __u32 v = ctx->variant;
    int not_modified = 0;
    if (h->nm_len && ctx->inm_pos) {
        __u32 off = h->etag_off;
        CLAMP_MAX(off, NM_REGION - ETAG_MAX);
        not_modified = etag_matches(rb, ctx->inm_pos, data + off, h->etag_len);
        if (not_modified < 0)
            return PASS_CONDITIONAL;
    } else if (h->nm_len && ctx->ims_pos) {
        /* RFC 9110 section 13.2.2: If-Modified-Since counts only without If-None-Match (browsers
         * send both on a revalidation; the ETag decides then, above). */
        __u32 off = h->lm_off;
        CLAMP_MAX(off, NM_REGION - IMF_FIXDATE_LEN);
        if (!date_is(rb, ctx->ims_pos, data + off))
            return PASS_CONDITIONAL;
        not_modified = 1;
    }
    if (not_modified)
        return send_body(skb, ctx, cs, h->nm_len, variant_csum(h, KIND_NM, v, h->nm_csum), data, NM_REGION,
                         NM_DATE_SLOT_OFFSET, clk->date, h->nm_len - 2, v, KIND_NM);
    __u8 *full = data + NM_REGION;
    if (ctx->is_head)
        return send_body(skb, ctx, cs, h->head_len, variant_csum(h, KIND_HEAD, v, h->head_csum), full,
                         size - NM_REGION, h->date_off, clk->date, h->head_len - 2, v, KIND_HEAD);
    return send_body(skb, ctx, cs, h->len, variant_csum(h, KIND_FULL, v, h->csum), full, size - NM_REGION,
                     h->date_off, clk->date, h->head_len - 2, v, KIND_FULL);
}

/* fs_send<cls>: answer the request in answer_ctx from its entry's body of size class cls. */
static __always_inline int answer_request(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                          struct conn_state *cs, struct clock *clk, const int cls)
{
    struct body_hdr *h = class_body(cls, &ctx->ref.id);
    return h ? answer_from(skb, ctx, rb, cs, clk, h, body_data(h), class_size(cls)) : PASS_CACHE_RACE;
}

/* ---- Pipelined requests answered together ---------------------------------------------------- */

/* Can body h (with size bytes of room for its 200) answer batch item it? The lengths handle_parse
 * summed came from the entry: they must be this body's. */
static __always_inline int item_fits(struct body_hdr *h, struct batch_item *it, __u32 size)
{
    __u32 rlen = it->is_head ? h->head_len : h->len, extra = variant_extra(it->variant);
    return rlen + extra == it->len && stored_answer_ok(rlen, size, h->date_off) &&
           variant_fits(extra, h->head_len - 2, rlen, h->date_off);
}

/* Answers to pipelined requests that need more than one segment together: each answer starts a
 * segment of its own (a part, conn_state.part_*), so every segment is cut from one stored body as a
 * single answer's are, and the loss recovery of those (in_flight) holds unchanged. A few more
 * segments than packing the answers would take, when they are small; one body per segment keeps
 * each segment one tail call. The segments count against the tail calls left to this packet:
 * fs_parse's, this sender's, and the tail loss probe's (MAX_TAIL_CALLS). Returns
 * FS_ANSWER_SEGMENTS, or FS_RACE or a pass reason (nothing changed: the segment passes whole). */
static __always_inline int batch_in_segments(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs,
                                             __u32 seg)
{
    __u32 n = ctx->n_items, segs = 0;
    if (seg < MIN_SEG_PAYLOAD || n > MAX_BATCH)
        return PASS_PIPELINED;
    for (int k = 0; k < MAX_BATCH; k++) {
        if (k >= n)
            break;
        struct batch_item *it = &ctx->items[k];
        __u32 extra = variant_extra(it->variant);
        /* (the head and the variant's line in the answer's first segment, as for one answer) */
        if (it->len > seg && (it->is_head || it->head_len + extra > seg))
            return PASS_PIPELINED;
        segs += (it->len + seg - 1) / seg;
        /* Every body is checked now, not when its segments are cut: committed, a body found gone
         * then could only end the connection (resend_gone); now the segment passes whole. */
        struct body_hdr *h = class_body(it->cls, &it->id);
        if (!h || !item_fits(h, it, class_size(it->cls) - NM_REGION))
            return PASS_CACHE_RACE;
    }
    if (ctx->parse_calls + 1 + segs + 1 > MAX_TAIL_CALLS)
        return PASS_PIPELINED;
    int r = claim_for_segments(skb, ctx, cs);
    if (r != FS_CONTINUE)
        return r;
    for (int k = 0; k < MAX_BATCH; k++) {
        if (k >= n)
            break;
        struct batch_item *it = &ctx->items[k];
        cs->part_id[k] = it->id;
        cs->part_len[k] = it->len;
        cs->part_cv[k] = PART_CV(it->cls, it->variant);
    }
    return commit_segments(ctx, cs, ctx->batch_total, ctx->items[(n - 1) & (MAX_BATCH - 1)].variant, seg, n);
}

/* Write item ctx->item of a batch of pipelined requests (answer_ctx.items, all hits: handle_parse)
 * from its body, of size class cls, into the one segment that answers them all, at the item's
 * offset. The first item also checks the whole answer fits the client's window and one segment,
 * claims the connection (conn_sync.h), and turns the skb into the answer's headers; the last sums
 * the segment, records the answer as one, to the whole segment, and sends it. Recovery is then the
 * one of a one-segment answer: a client that lacks it sends the segment again, all its requests,
 * and they are answered again (or passed, undone, to userspace). Returns FS_ANSWER_BATCH (the next
 * item's sender follows), FS_REDIRECT (sent), FS_DROP (the skb was changed and something failed:
 * the claim is released and the client sends the segment again), or, for the first item only,
 * FS_RACE or a pass reason (nothing changed: the segment passes whole). */
static __always_inline int send_batch_item(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs,
                                           struct clock *clk, const int cls)
{
    struct pkt *p = &ctx->p;
    __u32 k = ctx->item;
    if (k >= ctx->n_items || k >= MAX_BATCH)
        return k ? FS_DROP : PASS_CACHE_RACE;
    struct batch_item *it = &ctx->items[k & (MAX_BATCH - 1)];
    struct body_hdr *h = class_body(cls, &it->id);
    const __u32 size = class_size(cls) - NM_REGION;
    __u32 rlen = 0, hx = 0, date_off = 0, extra = variant_extra(it->variant);
    int fits = 0;
    if (h) {
        rlen = it->is_head ? h->head_len : h->len;
        hx = h->head_len - 2;
        date_off = h->date_off;
        fits = item_fits(h, it, size);
    }
    __u32 thl = tcp_hdr_len(p->has_ts);
    __u32 l3 = ip_hlen(p);
    __u32 poff = ETH_HLEN_ + l3 + thl;
    if (k == 0) {
        if (!fits)
            return PASS_CACHE_RACE;
        if (cs->flags & CONN_NOSOCK)
            socket_from_cookie(cs);                 /* (nosock.h: only a single answer closes here) */
        __u32 total = ctx->batch_total;
        __u32 win = (__u32)bpf_ntohs(p->tcp.window) << (cs->client_wscale & 15);
        if (total > win)
            return PASS_WINDOW;
        __u32 seg = seg_payload(skb, cs, l3, thl);
        if (total > seg || poff + total > MAX_FRAME)
            return batch_in_segments(skb, ctx, cs, seg);
        __u32 hsum, psum;
        int r = begin_one_segment(skb, ctx, cs, total, thl, l3, &hsum, &psum);
        if (r != FS_CONTINUE)
            return r;
        ctx->batch_sum = hsum;
        ctx->batch_psum = psum;
    } else if (!fits) {
        conn_release(cs);
        COUNT(races);
        return FS_DROP;
    }
    __u32 off = it->off;
    CLAMP_MAX(off, MAX_FRAME);
    __u8 *full = body_data(h) + NM_REGION;
    if (store_variant(skb, poff + off, full, rlen, hx, it->variant, extra, clk->date, date_off, size)) {
        conn_release(cs);
        COUNT_ERR(ERR_STORE);
        return FS_DROP;
    }
    /* Each answer's stored sum is of its bytes from an even offset; one at an odd offset of the
     * payload lands byte-swapped (csum_at_odd), and so does its Date slot. */
    __u32 bsum = it->is_head ? variant_csum(h, KIND_HEAD, it->variant, h->head_csum)
                             : variant_csum(h, KIND_FULL, it->variant, h->csum);
    __u32 dsum = bpf_csum_diff(0, 0, (__be32 *)clk->date, DATE_SLOT_LEN, 0);
    if (off & 1)
        bsum = csum_at_odd(bsum);
    if ((off + date_off) & 1)
        dsum = csum_at_odd(dsum);
    ctx->batch_sum += (__u64)bsum + dsum;
    if (k + 1 < ctx->n_items) {
        ctx->item = k + 1;
        return FS_ANSWER_BATCH;
    }
    store_tcp_csum(skb, l3, ctx->batch_psum, ctx->batch_sum, 0, 0, NULL);
    record_answer(cs, bpf_ntohl(p->tcp.seq), p->payload_len, ctx->batch_total, it->variant, ctx->rolled_back,
                  ctx->n_items);
    conn_release(cs);
    skb->mark = KERNEL_MARK;
    return FS_REDIRECT;
}

/* ---- Answers of several segments ------------------------------------------------------------ */

/* The pure ACK of a request answered in several segments, once the client has all of them. */
static __always_inline int send_ack(struct __sk_buff *skb, struct answer_ctx *ctx, struct conn_state *cs)
{
    __u32 thl = tcp_hdr_len(ctx->p.has_ts);
    struct resp_hdrs h = {};
    segment_hdrs(&h, ctx, cs, cs->srv_next, 0, thl, 0);
    __u32 psum;
    __u32 l3 = ip_hlen(&ctx->p);
    __u32 hsum = header_sum(&h, ctx->p.v6, ctx->p.has_ts, 0, &psum);
    if (bpf_skb_change_tail(skb, ETH_HLEN_ + l3 + thl, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return FS_DROP;
    }
    long err = store_hdrs(skb, &h, ctx->p.v6, ctx->p.has_ts);
    if (err) {
        COUNT_ERR(ERR_STORE);
        return FS_DROP;
    }
    store_tcp_csum(skb, l3, psum, hsum, 0, 0, NULL);
    if (!conn_unchanged(cs, ctx->version)) {        /* (as in send_segment) */
        COUNT(races);
        return FS_DROP;
    }
    COUNT(acks);
    skb->mark = KERNEL_MARK;
    return FS_REDIRECT;
}

/* The answer's version is gone (its file changed and the old body was deleted after its grace
 * period): its lost bytes cannot be sent again, and other bytes must not take their place.
 * Userspace resets the connection. */
static __always_inline int resend_gone(struct answer_ctx *ctx)
{
    COUNT_ERR(ERR_RESEND_GONE);
    tell_close(&ctx->key, CLOSE_ABORT);
    return FS_DROP;
}

/* Send the segment at answer byte seg_off of the connection's last answer, then, if more is due,
 * clone it out and tail-call for the next. A segment is cut from one part (conn_state.part_*: one
 * request's answer), seg_size bytes from the part's start at a time, from its body, of size class
 * cls: the bytes of the first sending, the stored version, the same variant. The Date is current,
 * but it sits in the part's first segment, which is resent whole: a client keeps one copy.
 * Segments start at those cuts, or at the last byte (the tail probe); the inserted line, the
 * HTTP/1.0 digit and the Date are only ever in a part's first segment (DESIGN.md section 4). */
static __always_inline int send_segment(struct __sk_buff *skb, struct answer_ctx *ctx, struct req_buf *rb,
                                        struct conn_state *cs, struct clock *clk, const int cls)
{
    const __u32 region = class_size(cls) - NM_REGION;
    __u32 off = ctx->seg_off, seg = cs->seg_size, total = cs->last_resp_len;
    __u32 ps = 0, pe = 0;
    int k = find_part(cs, off, &ps, &pe);
    if (k < 0 || seg == 0 || off >= total)
        return FS_DROP;
    __u32 cv = cs->part_cv[k & (MAX_BATCH - 1)];
    if (PART_CLS(cv) != cls)
        return FS_DROP;                             /* (the caller picks the sender by part_cls) */
    struct body_hdr *bh = class_body(cls, &cs->part_id[k & (MAX_BATCH - 1)]);
    if (!bh)
        return resend_gone(ctx);
    __u8 *full = body_data(bh) + NM_REGION;
    __u32 variant = PART_VARIANT(cv);
    __u32 extra = variant_extra(variant);
    __u32 plen = pe - ps, rlen = plen - extra;
    __u32 hx = bh->head_len - 2, date_off = bh->date_off;
    if ((rlen != bh->len && rlen != bh->head_len) || !stored_answer_ok(rlen, region, date_off) ||
        !variant_fits(extra, hx, rlen, date_off) || hx >= CHUNK)
        return resend_gone(ctx);                    /* (the id was reused: not the same answer) */
    __u32 rel = off - ps;
    __u32 len = plen - rel < seg ? plen - rel : seg;
    /* A cut inside the head: only after the path's MTU fell below a head's length (learn_path_mtu).
     * Its bytes cannot be sent in pieces: userspace resets the connection. */
    if ((rel == 0 && len < plen && len < hx + extra) || (rel && rel < hx + extra))
        return resend_gone(ctx);
    __u32 thl = tcp_hdr_len(ctx->p.has_ts);
    __u32 l3 = ip_hlen(&ctx->p);
    __u32 poff = ETH_HLEN_ + l3 + thl;
    if (len > MAX_SEG_PAYLOAD || bpf_skb_change_tail(skb, poff + len, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return FS_DROP;
    }
    __u32 start = cs->srv_next - total;
    struct resp_hdrs h = {};
    segment_hdrs(&h, ctx, cs, start + off, len, thl, off + len == total);
    long err = store_hdrs(skb, &h, ctx->p.v6, ctx->p.has_ts);
    if (rel == 0) {
        err |= store_variant(skb, poff, full, len - extra, hx, variant, extra, clk->date, date_off, region);
    } else {
        /* (past the inserted line, answer byte rel is stored byte rel - extra) */
        err |= store_slice(skb, poff, full, rel - extra, len, region);
    }
    if (err) {
        COUNT_ERR(ERR_STORE);
        return FS_DROP;
    }
    __u32 psum;
    __u32 hsum = header_sum(&h, ctx->p.v6, ctx->p.has_ts, len, &psum);
    store_tcp_csum(skb, l3, psum, hsum, poff, len, rb->b);  /* (the request buffer is free now) */
    /* Another CPU may have committed a new answer while this one was cut (a resend chain here, the
     * client's next request there): its offsets and parts would not be this segment's. */
    if (!conn_unchanged(cs, ctx->version)) {
        COUNT(races);
        return FS_DROP;
    }
    if (ctx->probe)
        COUNT(probes);
    else if (ctx->seg_resend)
        COUNT(resent);
    skb->mark = KERNEL_MARK;
    off += len;
    /* The answer's last byte just went out: send it once more, alone. A lost last segment draws
     * no duplicate ACK (nothing follows it), and without a timer here the client's RTO, 200 ms at
     * least, would be the only repair. This is the tail loss probe Linux's sender schedules
     * (RFC 8985 section 7), sent at once instead of after two round trips: if the tail arrived,
     * the probe is a duplicate, which the client acknowledges at once with a D-SACK (RFC 2883),
     * and that ACK of the whole answer is the cue for the request's ACK (in_flight); if it was
     * lost, the probe arrives beyond the hole and the client's duplicate ACK with its SACK block
     * names the segment to send again, a round trip later. */
    if (off == total && !ctx->probe && len > 1) {
        ctx->probe = 1;
        ctx->seg_off = total - 1;
        ctx->seg_end = total;
        bpf_clone_redirect(skb, skb->ifindex, 0);
        progs.call(skb, PROG_SEG0 + cls);          /* (the last byte is this part's) */
        return FS_DROP;                             /* (no tail call: no probe, as if lost) */
    }
    if (off < ctx->seg_end && off < total) {
        if (!ctx->seg_resend)
            COUNT(segments);
        ctx->seg_off = off;
        /* The next part's body may be of another class (pipelined answers). */
        __u32 next = cls;
        if (off >= pe && k + 1 < MAX_BATCH)
            next = PART_CLS(cs->part_cv[(k + 1) & (MAX_BATCH - 1)]);
        bpf_clone_redirect(skb, skb->ifindex, 0);
        progs.call(skb, PROG_SEG0 + (next < NR_CLASSES ? next : 0));
        return FS_DROP;                             /* no tail call: the rest counts as lost */
    }
    /* The last one goes out as a clone too, and the skb itself is dropped. On lo and veth the skb
     * is the client's own: the companion (fclone) of the request in its retransmission queue. If
     * it sat in the client's out-of-order queue (a segment before it lost), the client's stack
     * would take the request as still on its way out and never send it again (tcp's
     * skb_still_in_host_queue), and that retransmission is how the loss gets repaired. */
    bpf_clone_redirect(skb, skb->ifindex, 0);
    return FS_DROP;
}
