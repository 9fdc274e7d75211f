/* TC ingress: client -> server. Answer a cached GET from the kernel, or translate and pass.
 *
 * The pipeline, as tail-called programs (each verified on its own: one program scanning more than
 * 512 bytes byte by byte does not verify within the kernel's 1M-instruction budget):
 *
 *   fs_ingress      handle_ingress: the segment's checks, connection state, loss recovery of an
 *        |          answer in flight; a request that may be answered is copied to scratch
 *   fs_parse        handle_parse: one window of the request per call (parse_http.h); then the cache
 *        |          lookup, and the sender of the entry's size class
 *   fs_send<cls>    handle_send: the answer in one segment (answer.h); or a longer answer
 *        |          recorded in the connection's state, for
 *   fs_seg<cls>     handle_seg: the segments of a longer answer, each a clone, and later the
 *                   ones lost (fs_ingress's loss recovery calls it too); or its pure ACK
 *
 * Anything that cannot be answered passes to the server socket (finish_pass), translated into the
 * socket's sequence space (tcp_xlate.h) and counted under its reason. If a tail call fails, the
 * request passes too. The stages return internal results (results.h); main.c's entry points map
 * them to TC verdicts. DESIGN.md tells the whole story. */
#include "answer.h"
#include "nosock.h"
#include "tcp_xlate.h"

/* ---- fs_ingress ---------------------------------------------------------------------------------- */

/* The first checks: can this segment's request be answered here at all? Returns FS_PARSE (the
 * request is in the scratch buffer and answer_ctx is filled in), FS_HOLD, a pass reason, or
 * FS_NO_REQUEST for segments without a request (pure ACKs, FIN without data), or FS_RACE. */
static __always_inline int check_segment(struct __sk_buff *skb, struct pkt *p, struct conn_key *k, struct conn_state *cs,
                                         int *rolled_back, __u64 *version)
{
    if (p->payload_len == 0 && !p->tcp.fin)
        return FS_NO_REQUEST;
    int r = recover_answer(p, cs, rolled_back);     /* first: see there */
    if (r != FS_CONTINUE)
        return r;
    if (p->payload_len == 0)
        return FS_NO_REQUEST;                       /* a FIN alone, with nothing to hold: the socket's */
    if (cs->flags & CONN_USER) {
        /* (an answer to undo while the socket has sent since: it is closing) */
        r = *rolled_back ? 0 : back_to_kernel(skb, p, k, cs, version);
        if (r != 1)
            return r ? r : PASS_USER_OWNED;
    }
    if (p->tcp.fin || p->tcp.rst || p->tcp.urg || !p->tcp.ack)
        return PASS_TCP_OPTIONS;
    /* Congestion signals are the socket's to act on: a CE mark it must echo with ECE, the CWR
     * that ends its echo, an ECE that must reduce its window (RFC 3168 sections 6.1.2, 6.1.3).
     * Swallowed with a request, the socket would never see them. */
    if (p->ce || p->tcp.cwr || p->tcp.ece)
        return PASS_ECN;
    if (!p->ip_plain)
        return PASS_IP_OPTIONS;
    parse_ts_option(skb, p);
    if (!p->only_ts)
        return PASS_TCP_OPTIONS;

    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk || bpf_ktime_get_ns() - clk->updated_ns > HEARTBEAT_TIMEOUT_NS)
        return PASS_STALE;

    r = in_sync(p, cs, *rolled_back);
    if (r != FS_CONTINUE)
        return r;

    struct req_buf *rb = scratch.lookup(&zero);
    struct answer_ctx *ctx = answer_scratch.lookup(&zero);
    if (!rb || !ctx)
        return PASS_TOO_LONG;
    if (!(cs->flags & (CONN_SOCK_UP | CONN_NOSOCK))) {  /* once per connection: it stays up until it closes */
        __u32 mss = server_socket_mss(skb, p, &ctx->tuple);
        if (!mss)
            return PASS_HANDSHAKE;
        cs->sock_mss = mss;
        CONN_SET(cs, CONN_SOCK_UP);
    }
    /* Answers leave by the interface the request came in by (clones redirected there, sized for
     * its frames): if the socket's route to the client takes another, they are the socket's. */
    if (cs->out_ifindex != skb->ifindex)
        return PASS_ROUTE;
    ctx->rolled_back = *rolled_back;
    ctx->undone_items = *rolled_back ? cs->last_items : 0;
    ctx->n_items = 0;                               /* (no pipelined requests so far) */
    ctx->batch_total = 0;
    ctx->parse_calls = 0;
    return load_request(skb, p, rb, 0);
}

static __always_inline int new_bytes(struct pkt *p, struct conn_state *cs)
{
    return (__s32)(bpf_ntohl(p->tcp.seq) + p->payload_len - cs->next_seq) > 0;
}

/* Segments wholly before next_seq are old data the server socket will just re-ACK; any new byte
 * goes to userspace, and then so must everything after it (response order). Taking the connection
 * for userspace is a change like an answer, with the undo of a lost answer (recover_answer):
 * claimed (conn_sync.h), or another CPU could answer the same bytes in the kernel meanwhile.
 * Returns 0 if the claim failed. */
static __always_inline int keep_order(struct pkt *p, struct conn_state *cs, __u64 version, int undo)
{
    if (!undo && ((cs->flags & CONN_USER) || !new_bytes(p, cs)))
        return 1;
    if (!conn_claim(cs, version))
        return 0;
    if (undo)
        undo_answer(cs);
    if (new_bytes(p, cs))
        CONN_SET(cs, CONN_USER);
    conn_release(cs);
    return 1;
}

/* The segment goes on to the server socket: count why (r: a pass reason, or FS_NO_REQUEST), keep
 * response order, translate. FS_RACE drops it instead: nothing of it was committed. */
static __always_inline int finish_pass(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs, int r, int rolled_back,
                                       __u64 version)
{
    if (r == FS_RACE || (r != FS_NO_REQUEST && !keep_order(p, cs, version, rolled_back))) {
        COUNT(races);
        return FS_DROP;
    }
    if (rolled_back)
        uncount_hit(cs->last_items);                /* the earlier answer was undone: userspace answers */
    if (r != FS_NO_REQUEST)
        COUNT_PASS(r);
    /* (for back_to_kernel; a plain store: two CPUs passing data of one connection at once can
     * only keep the lower end, and the socket's rcv_nxt check then still holds the other back) */
    __u32 end = bpf_ntohl(p->tcp.seq) + p->payload_len;
    if (p->payload_len && (__s32)(end - cs->passed_end) > 0)
        cs->passed_end = end;
    if (cs->flags & CONN_SOCK_ACK)
        CONN_CLEAR(cs, CONN_SOCK_ACK);              /* the socket gets this segment's ACK itself */
    /* Without a socket so far (nosock.h): this request's ACK, a cookie, makes the kernel create it
     * (nosock_segment lets only the first sequence number through to here). */
    if ((cs->flags & CONN_NOSOCK) && (p->payload_len || p->tcp.fin) && (!(cs->flags & CONN_ANSWERED) || rolled_back))
        CONN_CLEAR(cs, CONN_NOSOCK);
    xlate_in(skb, p, cs);
    return FS_PASS;
}

/* The sender of a body of size class cls (fs_send<cls>). */
static __always_inline void call_sender(struct __sk_buff *skb, __u32 cls)
{
    progs.call(skb, PROG_SEND0 + (cls < NR_CLASSES ? cls : 0));
}

/* Segments the kernel itself sends after the answer (fs_seg<cls>), picked by the answer's class. */
static __always_inline void call_segment_sender(struct __sk_buff *skb, __u32 cls)
{
    progs.call(skb, PROG_SEG0 + (cls < NR_CLASSES ? cls : 0));
}

static __always_inline int handle_ingress(struct __sk_buff *skb)
{
    if (skb->mark == KERNEL_MARK) {
        skb->mark = 0;                              /* ack_the_socket's ACK: already translated */
        return FS_PASS;
    }
    /* The segment and its key live in answer_ctx, where the tail-called programs find them (and
     * off the stack, which is full). */
    int zero = 0;
    struct answer_ctx *ctx = answer_scratch.lookup(&zero);
    if (!ctx)
        return FS_PASS;
    struct pkt *p = &ctx->p;
    struct conn_key *k = &ctx->key;
    __builtin_memset(p, 0, sizeof(*p));
    if (parse_headers(skb, p) < 0) {
        /* Not TCP: an ICMP error about one of our segments (a smaller hop on the path)? */
        __u32 seq_off = 0, csum_off = 0;
        __builtin_memset(p, 0, sizeof(*p));
        __u32 mtu = parse_too_big(skb, p, &seq_off, &csum_off);
        if (mtu)
            learn_path_mtu(skb, p, k, mtu, seq_off, csum_off);
        return FS_PASS;
    }
    if (p->tcp.dest != bpf_htons(SERVER_PORT))
        return FS_PASS;                             /* not ours: let other filters see it */
    count_if(skb, 0);
    conn_key_of(k, p, 1);
    if (p->tcp.syn) {
        /* A kept handshake (nosock.h) is live although the lookup finds the listener: a copy of
         * its own SYN (its ISN + 1 is where its first request starts) is stale, and would start
         * the state afresh. A SYN with another ISN is a new connection on the 4-tuple. */
        struct conn_state *kept = conn_state.lookup(k);
        if (kept && (kept->flags & CONN_NOSOCK) &&
            bpf_ntohl(p->tcp.seq) + 1 == ((kept->flags & CONN_ANSWERED) ? kept->last_req_seq : kept->next_seq))
            return FS_DROP;
        if (!p->tcp.ack && !syn_on_live_connection(skb, p, k, &ctx->tuple))
            new_connection(p, k, skb);
        return FS_PASS;
    }
    ctx->fin = 0;
    struct conn_state *cs = conn_state.lookup(k);
    if (!cs) {
        struct closed_conn *gone = closed_conns.lookup(k);
        if (gone)
            xlate_closed(skb, p, gone, 1);
        else if (p->payload_len)
            COUNT_PASS(PASS_NO_CONN);
        else
            return nosock_late_fin(skb, ctx);
        return FS_PASS;
    }
    cs->last_seen_ns = bpf_ktime_get_ns();
    ctx->version = conn_version(cs);                /* before any check of its state (conn_sync.h) */
    note_client_ack(p, k, cs, &ctx->version);
    if (cs->flags & CONN_NOSOCK) {
        int n = nosock_segment(skb, ctx, cs);
        if (n != FS_CONTINUE)
            return n;
    } else if (keep_handshake(skb, ctx, cs)) {
        return FS_DROP;
    }

    /* Loss recovery of a multi-segment answer the client does not wholly have yet. */
    if (cs->flags & CONN_UNACKED) {
        int f = in_flight(skb, ctx, cs);
        if (f == FS_RESEND) {
            call_segment_sender(skb, part_cls(cs, ctx->seg_off));
            return FS_DROP;                         /* no tail call: as if lost, and recovered alike */
        }
        if (f == FS_HOLD) {
            COUNT(held);
            return FS_DROP;
        }
    }
    int rolled_back = 0;
    int r = check_segment(skb, p, k, cs, &rolled_back, &ctx->version);
    if (r == FS_HOLD) {
        COUNT(held);
        return FS_DROP;
    }
    if (r == FS_PARSE) {
        progs.call(skb, PROG_PARSE0);
        r = PASS_TOO_LONG;
    }
    int passed = finish_pass(skb, p, cs, r, rolled_back, ctx->version);
    forget_if_done(skb, k, cs, p, 0);
    return passed;
}

/* ---- The tail-called stages ---------------------------------------------------------------------- */

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
    return t->cs ? 0 : -1;      /* (gone only once both FINs are acknowledged: nothing is left to answer) */
}

/* The body of ref that answers Accept-Encoding form `form` (ae_form: 0 none, -1 a value the kernel
 * does not know), or 0 if userspace must decide: an unknown value only where userspace has said
 * any value gets the plain body (any_encoding). That the known forms all point at the plain body
 * would not do: none of them picks zstd where br is available too, and a coding compressed here
 * that does not shrink is sent as the file itself for the forms, not for "zstd". */
static __always_inline struct body_ref *body_for_form(struct cache_ref *ref, int form)
{
    if (form > 0)
        return &ref->by_form[(form - 1) & (NR_AE_FORMS - 1)];
    if (form == 0 || ref->any_encoding)
        return &ref->plain;
    return 0;
}

/* One of several pipelined requests (ref: its entry, b: the body its Accept-Encoding calls for)
 * joins the batch answered together. Returns FS_PARSE when another request follows (loaded for
 * the next fs_parse), FS_ANSWER_BATCH once the last is in, or the pass reason for the whole
 * segment: a segment with one request the kernel cannot answer goes to userspace whole, in order. */
static __always_inline int add_to_batch(struct __sk_buff *skb, struct req_buf *rb, struct answer_ctx *ctx,
                                        struct body_ref *b, int more)
{
    __u32 n = ctx->n_items;
    /* (conditionals are compared against the request bytes, which the next request replaces) */
    if (n >= MAX_BATCH || rb->inm_pos || rb->ims_pos)
        return PASS_PIPELINED;
    if (!b->id)
        return PASS_MISS;
    __u32 variant = request_variant(rb);
    /* After an answer that ends the connection aiohttp reads nothing more: userspace's. */
    if (more && (variant == VAR_CLOSE11 || variant == VAR_CLOSE10))
        return PASS_PIPELINED;
    struct batch_item *it = &ctx->items[n & (MAX_BATCH - 1)];
    it->id = b->id;
    it->cls = b->cls;
    it->is_head = rb->path_start == 5;
    it->head_len = b->head_len;
    it->variant = variant;
    it->len = (it->is_head ? b->head_len : b->len) + variant_extra(variant);
    it->off = ctx->batch_total;
    ctx->batch_total += it->len;
    __builtin_memcpy(&ctx->batch_keys[n & (MAX_BATCH - 1)], &rb->key, sizeof(rb->key));
    ctx->n_items = n + 1;
    if (!more)
        return FS_ANSWER_BATCH;
    return load_request(skb, &ctx->p, rb, rb->base + rb->req_end);
}

/* fs_parse: scan one window of the request; then itself for the next window (or the next of
 * several pipelined requests), or the sender. */
static __always_inline int handle_parse(struct __sk_buff *skb)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return FS_PASS;
    struct req_buf *rb = t.rb;
    struct answer_ctx *ctx = t.ctx;
    ctx->parse_calls++;
    __u32 stage = rb->stage;
    int r = parse_window(rb, stage);
    if (r == FS_PARSE && stage + 1 < NR_PARSE_STAGES) {
        rb->stage = stage + 1;
        progs.call(skb, PROG_PARSE0);
        r = PASS_TOO_LONG;
    }
    if (r == FS_PARSE)
        r = PASS_TOO_LONG;                          /* longer than the last window */
    int form = r == FS_CONTINUE ? ae_form(rb) : 0;
    if (r == FS_CONTINUE) {
        struct cache_ref *ref = file_cache.lookup(&rb->key);
        struct body_ref *b = ref ? body_for_form(ref, form) : 0;
        if (!ref) {
            r = PASS_MISS;
        } else if (!b) {
            r = PASS_ENCODING;                      /* a value only userspace's parser reads */
        } else {
            int more = rb->req_end < rb->len;
            if (more || ctx->n_items) {
                r = add_to_batch(skb, rb, ctx, b, more);
                if (r == FS_PARSE) {
                    progs.call(skb, PROG_PARSE0);
                    r = PASS_TOO_LONG;
                } else if (r == FS_ANSWER_BATCH) {
                    ctx->item = 0;
                    call_sender(skb, ctx->items[0].cls);
                    r = PASS_CACHE_RACE;
                }
            } else {
                ctx->ref.id = b->id;
                ctx->ref.cls = b->cls;
                ctx->is_head = rb->path_start == 5;
                ctx->inm_pos = rb->inm_pos;
                ctx->ims_pos = rb->ims_pos;
                ctx->variant = request_variant(rb);
                if (ctx->ref.id)                    /* (0: that coding's body is userspace's) */
                    call_sender(skb, ctx->ref.cls);
                r = ctx->ref.id ? PASS_CACHE_RACE : PASS_MISS;
            }
        }
    }
    struct pkt p = ctx->p;
    return finish_pass(skb, &p, t.cs, r, ctx->rolled_back, ctx->version);
}

/* fs_send<cls>: build the response from the body of size class cls. */
static __always_inline int handle_send(struct __sk_buff *skb, const int cls)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return FS_PASS;
    struct answer_ctx *ctx = t.ctx;
    struct conn_state *cs = t.cs;
    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk)
        return FS_PASS;
    if (ctx->n_items) {                             /* pipelined requests: one item per call */
        int r = send_batch_item(skb, ctx, cs, clk, cls);
        if (r == FS_ANSWER_BATCH) {
            call_sender(skb, ctx->items[ctx->item & (MAX_BATCH - 1)].cls);
            conn_release(cs);                       /* (the tail call failed: the skb is half written) */
            return FS_DROP;
        }
        if (r == FS_REDIRECT || r == FS_ANSWER_SEGMENTS) {
            if ((cs->flags & (CONN_CLOSING | CONN_NOSOCK)) == CONN_CLOSING)
                tell_close(&ctx->key, CLOSE_WANTED);
            count_batch(ctx, cs, ctx->undone_items);
            if (r == FS_ANSWER_SEGMENTS) {
                call_segment_sender(skb, ctx->items[0].cls);
                return FS_DROP;                     /* no tail call: as if lost, and recovered alike */
            }
            return FS_REDIRECT;
        }
        if (r == FS_DROP)
            return FS_DROP;
        struct pkt p = ctx->p;
        return finish_pass(skb, &p, cs, r, ctx->rolled_back, ctx->version);
    }
    int r = answer_request(skb, ctx, t.rb, cs, clk, cls);
    if (r == FS_REDIRECT || r == FS_ANSWER_SEGMENTS) {
        if ((cs->flags & (CONN_CLOSING | CONN_NOSOCK)) == CONN_CLOSING)   /* (no socket: nothing to close) */
            tell_close(&ctx->key, CLOSE_WANTED);
        count_answer(&t.rb->key, cs, ctx->undone_items);
        if (r == FS_ANSWER_SEGMENTS) {
            call_segment_sender(skb, cls);
            return FS_DROP;                         /* no tail call: as if lost, and recovered alike */
        }
        return FS_REDIRECT;
    }
    if (r == FS_DROP)
        return FS_DROP;
    struct pkt p = ctx->p;
    return finish_pass(skb, &p, cs, r, ctx->rolled_back, ctx->version);
}

/* fs_seg<cls>: send segments of the connection's last answer (answer_ctx says which), or its pure
 * ACK. */
static __always_inline int handle_seg(struct __sk_buff *skb, const int cls)
{
    struct tail_ctx t;
    if (load_context(&t) < 0)
        return FS_DROP;
    /* Set up from this version of the state (fs_ingress or fs_send): if another CPU has changed it
     * since (a new answer), these segments would be cut from the wrong answer. The client's
     * retransmission recovers them against the new state. */
    if (conn_version(t.cs) != t.ctx->version) {
        COUNT(races);
        return FS_DROP;
    }
    if (t.ctx->seg_off >= t.ctx->seg_end)
        return send_ack(skb, t.ctx, t.cs);
    int zero = 0;
    struct clock *clk = clock.lookup(&zero);
    if (!clk)
        return FS_DROP;
    return send_segment(skb, t.ctx, t.rb, t.cs, clk, cls);
}
