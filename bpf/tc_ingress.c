/* TC ingress: client -> server. Answer a cached GET from the kernel, or translate and pass. */
#include "parse.h"
#include "csum.h"
#include "tcp_xlate.h"

#define ANSWERED (-3)  /* the skb now holds the response */

/* The headers of a response segment, written over the start of the request skb. */
struct resp_hdrs {
    struct ethhdr eth;
    struct iphdr ip;
    struct tcphdr tcp;
    __u8 ts[TCP_TS_OPTLEN];
} __attribute__((packed));

#define HDRS_NO_TS (sizeof(struct resp_hdrs) - TCP_TS_OPTLEN)

/* Copy data[0, len) into the skb at off, in CHUNK pieces (bpf_skb_store_bytes needs a length the
 * verifier can bound). `size` bounds every read inside data. */
static __always_inline long store_data(struct __sk_buff *skb, __u32 off, __u8 *data, __u32 len, const __u32 size)
{
    long err = 0;
    for (__u32 i = 0; i < size / CHUNK; i++) {
        __u32 o = i * CHUNK;
        if (o + CHUNK > len)
            break;
        err |= bpf_skb_store_bytes(skb, off + o, data + o, CHUNK, 0);
    }
    if (len < CHUNK) {
        __u32 n = len;
        asm volatile("" : "+r"(n));                 /* keep clang from folding the clamp away */
        n = ((n - 1) & (CHUNK - 1)) + 1;            /* verifier-visible range [1, CHUNK] */
        CLAMP_MAX(n, size < CHUNK ? size : CHUNK);
        err |= bpf_skb_store_bytes(skb, off, data, n, 0);
    } else if (len % CHUNK) {
        /* The tail as one whole chunk ending at len, overlapping bytes already written: keeps every
         * read inside data[size] without padding the map value. */
        __u64 o = len - CHUNK;
        CLAMP_MAX(o, size - CHUNK);
        err |= bpf_skb_store_bytes(skb, off + o, data + o, CHUNK, 0);
    }
    return err;
}

/* Rewrite skb into the response for the request in p and update the connection's deltas.
 * Inlined once per size class so `size` is a constant the verifier can bound reads with.
 * `variant` (VAR_*) says how the stored bytes become aiohttp's answer to this form of request: a
 * header line inserted at hx, where the head's final CRLF starts, and/or "HTTP/1.0"; body_csum is
 * already that variant's sum. */
static __always_inline int send_body(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs,
                                     __u32 rlen, __u32 body_csum, __u8 *data, const __u32 size,
                                     const __u32 date_off, __u8 *date, __u32 hx, __u32 variant)
{
    if (rlen < date_off + DATE_SLOT_LEN || rlen > size)
        return PASS_CACHE_RACE;
    __u32 extra = variant == VAR_CLOSE11 ? CLOSE_HDR_LEN : variant == VAR_KEEP10 ? KEEP_HDR_LEN : 0;
    if (extra && (hx < date_off + DATE_SLOT_LEN || hx > rlen || hx >= CHUNK))
        return PASS_TOO_BIG;                        /* (a head this long is not worth a variant) */
    __u32 total = rlen + extra;
    __u32 thl = p->has_ts ? TCP_HLEN + TCP_TS_OPTLEN : TCP_HLEN;
    __u32 frame = ETH_HLEN_ + IPV4_HLEN + thl + total;
    __u32 ifindex = skb->ifindex;
    __u32 *max_frame = if_max_frame.lookup(&ifindex);
    if (!max_frame || frame > *max_frame || frame > MAX_FRAME)
        return PASS_TOO_BIG;
    __u32 win = (__u32)bpf_ntohs(p->tcp.window) << (cs->client_wscale & 15);
    if (total > win)
        return PASS_WINDOW;

    __u32 req_seq = bpf_ntohl(p->tcp.seq);
    struct resp_hdrs h = {};
    __builtin_memcpy(h.eth.h_dest, p->eth.h_source, ETH_ALEN);
    __builtin_memcpy(h.eth.h_source, p->eth.h_dest, ETH_ALEN);
    h.eth.h_proto = p->eth.h_proto;
    h.ip.version = 4;
    h.ip.ihl = 5;
    h.ip.tot_len = bpf_htons(IPV4_HLEN + thl + total);
    h.ip.frag_off = bpf_htons(0x4000);              /* DF */
    h.ip.ttl = 64;
    h.ip.protocol = IPPROTO_TCP;
    h.ip.saddr = p->ip.daddr;
    h.ip.daddr = p->ip.saddr;
    h.ip.check = ~csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, IPV4_HLEN, 0)) & 0xffff;
    h.tcp.source = p->tcp.dest;
    h.tcp.dest = p->tcp.source;
    h.tcp.seq = p->tcp.ack_seq;                     /* == srv_next, checked by the caller */
    h.tcp.ack_seq = bpf_htonl(req_seq + p->payload_len);
    h.tcp.doff = thl / 4;
    h.tcp.ack = 1;
    h.tcp.psh = 1;
    h.tcp.window = bpf_htons(cs->server_win);
    if (p->has_ts) {
        /* RFC 7323: our TSval must not go backwards on the server's clock: echo the client's TSecr
         * (the server's latest TSval it saw); our TSecr is the client's TSval. */
        h.ts[0] = 1;
        h.ts[1] = 1;
        h.ts[2] = 8;
        h.ts[3] = 10;
        __builtin_memcpy(&h.ts[4], &p->tsecr, 4);
        __builtin_memcpy(&h.ts[8], &p->tsval, 4);
    }
    struct pseudo_hdr4 ph = {h.ip.saddr, h.ip.daddr, 0, IPPROTO_TCP, bpf_htons(thl + total)};
    __u32 psum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
    __u32 hsum = p->has_ts ? bpf_csum_diff(0, 0, (__be32 *)&h.tcp, TCP_HLEN + TCP_TS_OPTLEN, psum)
                           : bpf_csum_diff(0, 0, (__be32 *)&h.tcp, TCP_HLEN, psum);
    __u32 dsum = bpf_csum_diff(0, 0, (__be32 *)date, DATE_SLOT_LEN, 0);

    if (bpf_skb_change_tail(skb, frame, 0) < 0) {
        COUNT_ERR(ERR_CHANGE_TAIL);
        return PASS_TOO_BIG;
    }
    /* From here on the request is gone: any failure drops the skb and the client retransmits. */
    long err = p->has_ts ? bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0)
                         : bpf_skb_store_bytes(skb, 0, &h, HDRS_NO_TS, 0);
    __u32 poff = ETH_HLEN_ + IPV4_HLEN + thl;
    /* With a header line to insert: everything shifted up by extra first, then the head before hx
     * again in place, then the line in the gap. */
    err |= store_data(skb, poff + extra, data, rlen, size);
    if (extra) {
        err |= store_data(skb, poff, data, hx, size < CHUNK ? size : CHUNK);
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
    if (err) {
        COUNT_ERR(ERR_STORE);
        return TC_ACT_SHOT;
    }

    /* Checksum. On CHECKSUM_PARTIAL skbs (lo, veth with offload) bpf_l4_csum_replace leaves the
     * field alone and the stack completes the sum later: the field must then hold the folded
     * pseudo-header sum. Probe which case this is. */
    __u32 csum_off = ETH_HLEN_ + IPV4_HLEN + TCP_CSUM_OFF;
    __u16 probe = 0;
    bpf_l4_csum_replace(skb, csum_off, 0, bpf_htons(1), 2);
    bpf_skb_load_bytes(skb, csum_off, &probe, sizeof(probe));
    __u16 check;
    if (probe == 0) {
        check = csum_fold(psum);
        COUNT(csum_partial);
    } else {
        check = ~csum_fold((__u64)hsum + body_csum + dsum) & 0xffff;
        COUNT(csum_full);
    }
    bpf_skb_store_bytes(skb, csum_off, &check, sizeof(check), 0);

    cs->last_req_seq = req_seq;
    cs->last_req_len = p->payload_len;
    cs->last_resp_len = total;
    cs->delta_in += p->payload_len;
    cs->delta_out += total;
    cs->next_seq = req_seq + p->payload_len;
    cs->srv_next += total;
    cs->flags |= CONN_ANSWERED;
    if (variant == VAR_CLOSE11 || variant == VAR_CLOSE10)
        cs->flags |= CONN_CLOSING;
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
            return send_body(skb, &ctx->p, cs, h->nm_len, variant_csum(h, KIND_NM, v, h->nm_csum), data, NM_REGION,
                             NM_DATE_SLOT_OFFSET, clk->date, h->nm_len - 2, v);
    }
    __u8 *full = data + NM_REGION;
    if (ctx->is_head)
        return send_body(skb, &ctx->p, cs, h->head_len, variant_csum(h, KIND_HEAD, v, h->head_csum), full,
                         size - NM_REGION, DATE_SLOT_OFFSET, clk->date, h->head_len - 2, v);
    return send_body(skb, &ctx->p, cs, h->len, variant_csum(h, KIND_FULL, v, h->csum), full, size - NM_REGION,
                     DATE_SLOT_OFFSET, clk->date, h->head_len - 2, v);
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
    t.ipv4.saddr = p->ip.saddr;
    t.ipv4.daddr = p->ip.daddr;
    t.ipv4.sport = p->tcp.source;
    t.ipv4.dport = p->tcp.dest;
    struct bpf_sock *sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
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
    if (p->ip.ihl != 5 || (p->ip.frag_off & bpf_htons(0x3fff)))
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
    ctx->p = *p;
    ctx->key = *k;
    ctx->rolled_back = *rolled_back;
    return PARSE;
}

/* The segment goes on to the server socket: count why, keep response order, translate. */
static __always_inline int finish_pass(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs, int r, int rolled_back)
{
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

/* Tell userspace about a connection the kernel ended (close_events: it wakes a reader thread). */
static __always_inline void tell_close(struct conn_key *k, __u32 kind)
{
    struct close_event ev = {*k, kind};
    if (close_events.ringbuf_output(&ev, sizeof(ev), 0) < 0)
        COUNT_ERR(ERR_CLOSE_LOST);
}

static __always_inline void new_connection(struct pkt *p, struct conn_key *k, struct __sk_buff *skb)
{
    struct conn_state cs = {};
    int ws = parse_wscale(skb, p);
    cs.client_wscale = ws < 0 ? 0 : ws;
    cs.flags = ws < 0 ? 0 : CONN_WS_OK;
    cs.next_seq = bpf_ntohl(p->tcp.seq) + 1;
    cs.last_seen_ns = bpf_ktime_get_ns();
    if (conn_state.update(k, &cs) != 0)
        COUNT_ERR(ERR_CONN_FULL);
}

/* fs_ingress. Answering is split into tail-called programs (parse stages, then the sender of the
 * entry's size class), each verified on its own: one program scanning 1 KiB byte by byte does not
 * verify within the kernel's 1M-instruction budget. If a tail call fails, the request passes. */
static __always_inline int handle_ingress(struct __sk_buff *skb)
{
    struct pkt p = {};
    if (parse_headers(skb, &p) < 0 || p.tcp.dest != bpf_htons(SERVER_PORT))
        return TC_ACT_UNSPEC;                       /* not ours: let other filters see it */
    count_if(skb, 0);
    struct conn_key k = {p.ip.saddr, p.ip.daddr, p.tcp.source, p.tcp.dest};
    if (p.tcp.syn) {
        if (!p.tcp.ack)
            new_connection(&p, &k, skb);
        return TC_ACT_UNSPEC;
    }
    struct conn_state *cs = conn_state.lookup(&k);
    if (!cs) {
        if (p.payload_len)
            COUNT_PASS(PASS_NO_CONN);
        return TC_ACT_UNSPEC;
    }
    cs->last_seen_ns = bpf_ktime_get_ns();
    /* The client has every byte of an answer that ends the connection: userspace may now close
     * the socket, whose FIN then follows the answer. Not before: the kernel can resend a lost
     * answer only while the socket has sent nothing after it. */
    if ((cs->flags & (CONN_CLOSING | CONN_CLOSE_ACKED)) == CONN_CLOSING && p.tcp.ack &&
        (__s32)(bpf_ntohl(p.tcp.ack_seq) - cs->srv_next) >= 0) {
        cs->flags |= CONN_CLOSE_ACKED;
        tell_close(&k, CLOSE_NOW);
    }

    int rolled_back = 0;
    int r = check_segment(skb, &p, &k, cs, &rolled_back);
    if (r == PARSE) {
        progs.call(skb, PROG_PARSE0);
        r = PASS_TOO_LONG;
    }
    int verdict = finish_pass(skb, &p, cs, r, rolled_back);
    forget_if_done(&k, cs, &p);
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
    default: r = send_class4(skb, ctx, t.rb, cs, clk); break;
    }
    if (r == ANSWERED) {
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
        return bpf_redirect(skb->ifindex, 0);
    }
    if (r == TC_ACT_SHOT)
        return TC_ACT_SHOT;
    struct pkt p = ctx->p;
    return finish_pass(skb, &p, cs, r, ctx->rolled_back);
}
