/* Internal result codes: what one function of the programs tells its caller.
 *
 * One code space for the whole program set. A function returns either a pass reason
 * (enum pass_reason, >= 0: the request goes to userspace and is counted under it) or one of the
 * codes below. Every code is below -1, so none is ever a pass reason, and none is ever a TC verdict
 * (TC_ACT_UNSPEC is -1, the others are >= 0): a result can never be mistaken for a verdict or a
 * reason by accident. Only the program entry points (main.c) turn results into TC verdicts, through
 * verdict() below. */
#pragma once
#include "reasons.h"

enum fs_result {
    /* Nothing against it: go on with the next check (Katran's FURTHER_PROCESSING). From
     * parse_window: the request is one complete request the kernel may answer. */
    FS_CONTINUE = -64,
    /* The request is in the scratch buffer and not decided yet: the (next) parse stage decides. */
    FS_PARSE,
    /* A segment without request bytes (pure ACK, FIN without data): translate it and pass it on. */
    FS_NO_REQUEST,
    /* Drop the client's segment: it sends it again once it has the kernel's answer. */
    FS_HOLD,
    /* Every one of several pipelined requests can be answered: the senders write them in turn. */
    FS_ANSWER_BATCH,
    /* A multi-segment answer was recorded: the segment sender sends its segments. */
    FS_ANSWER_SEGMENTS,
    /* answer_ctx says which segments of the last answer, or its pure ACK, the segment sender sends. */
    FS_RESEND,
    /* Another CPU changed the connection's state while this segment was handled (conn_sync.h):
     * drop it, counted; it was a duplicate, or the client sends it again. */
    FS_RACE,

    /* The header classes parse_http.h tracks (classify_header to parse_window only). */
    FS_HDR_INM,             /* If-None-Match: the sender compares it with the entry's ETag */
    FS_HDR_IMS,             /* If-Modified-Since: ... and this with its Last-Modified */
    /* A header aiohttp allows at most once in a request (its parser's SINGLETON_HEADERS, the RFC
     * 9110 singletons; Content-Length and Transfer-Encoding pass as bodies anyway): classify_header
     * has written its SINGLETON_* bit to req_buf.scratch. */
    FS_HDR_SINGLETON,
    FS_HDR_CONN_KEEP,       /* Connection: keep-alive */
    FS_HDR_CONN_CLOSE,      /* Connection: close */
    FS_HDR_AE,              /* Accept-Encoding: which of the entry's codings answers */

    /* What becomes of the skb: the only results verdict() maps to TC verdicts. */
    FS_PASS,                /* to the server socket (translated when it needed to be) */
    FS_DROP,                /* dropped: a clone went out instead, or the client will retransmit */
    FS_REDIRECT,            /* the skb now holds our segment: out of the interface it came in on */

    FS_RESULT_END,          /* (bound for the assertion below) */
};
/* Every code is in [FS_CONTINUE, FS_RESULT_END): below TC_ACT_UNSPEC (-1), so below every verdict
 * and every pass reason. */
_Static_assert(FS_RESULT_END <= TC_ACT_UNSPEC, "internal results stay below every TC verdict and pass reason");

/* The TC verdict of a program's final result. An unexpected code (a pass reason that reached an
 * entry point) passes the segment: the safe direction. */
static __always_inline int verdict(struct __sk_buff *skb, int r)
{
    if (r == FS_REDIRECT)
        return bpf_redirect(skb->ifindex, 0);
    if (r == FS_DROP)
        return TC_ACT_SHOT;
    return TC_ACT_UNSPEC;
}
