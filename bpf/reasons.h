/* Why a request-bearing segment was passed to userspace, and kernel-path errors.
 * Mirrored in fileserver/abi.py (tests/unit/test_abi.py checks the two agree): keep the order.
 * Pass reasons are data, never control flow: internal results live in results.h, below zero. */
#pragma once

enum pass_reason {
    PASS_MISS = 0,          /* path not in file_cache */
    PASS_METHOD,            /* not GET */
    PASS_CLOSING,           /* an earlier kernel answer ended the connection (Connection: close, HTTP/1.0) */
    PASS_VERSION,           /* not HTTP/1.x, or a malformed request line */
    PASS_CLOSE,             /* a Connection header (close, upgrade, ...) */
    PASS_RANGE,             /* Range header */
    PASS_CONDITIONAL,       /* If-* header */
    PASS_BODY,              /* Content-* or Transfer-Encoding: may have a body */
    PASS_PIPELINED,         /* bytes after the end of the first request */
    PASS_SPLIT,             /* the request does not end in this segment */
    PASS_TOO_LONG,          /* request or path longer than the kernel parses */
    PASS_ESCAPED,           /* an absolute-form or asterisk-form target */
    PASS_MALFORMED,         /* bare LF, control bytes, obs-fold, duplicate Host, Expect, ... */
    PASS_TOO_BIG,           /* response does not fit one frame on this link */
    PASS_WINDOW,            /* response does not fit the client's receive window */
    PASS_OUT_OF_SYNC,       /* not at the expected sequence, or earlier answers not acknowledged */
    PASS_USER_OWNED,        /* the connection already went to userspace */
    PASS_TCP_OPTIONS,       /* TCP options other than timestamps, or SYN/FIN/RST/URG with data */
    PASS_IP_OPTIONS,        /* IP options or fragments */
    PASS_NO_CONN,           /* no conn_state entry (connection predates the program, or table full) */
    PASS_STALE,             /* userspace heartbeat is stale */
    PASS_CACHE_RACE,        /* entry changed between lookups */
    PASS_HANDSHAKE,         /* the server socket is not established yet (accept queue full, SYN cookies) */
    PASS_ECN,               /* a CE mark, or CWR/ECE: congestion signals the socket must see (RFC 3168) */
    PASS_ROUTE,             /* the socket's segments to the client leave by another interface */
    PASS_ENCODING,          /* an Accept-Encoding value the kernel does not know (or two of them) */
    NR_PASS_REASONS,
};

enum kernel_error {
    ERR_CHANGE_TAIL = 0,    /* bpf_skb_change_tail failed */
    ERR_STORE,              /* bpf_skb_store_bytes failed after the skb was rewritten: dropped */
    ERR_CONN_FULL,          /* conn_state full: the connection is served by userspace */
    ERR_XLATE,              /* rewriting a sequence number failed */
    ERR_CLOSE_LOST,         /* close_events was full: userspace closes that socket on a timer instead */
    ERR_RESEND_GONE,        /* a lost segment's version was deleted: the connection is reset */
    NR_KERNEL_ERRORS,
};

/* struct counters' arrays: powers of two, so that an index masked with (SLOTS - 1) stays inside. */
#define PASS_SLOTS 32
#define ERROR_SLOTS 8
_Static_assert(NR_PASS_REASONS <= PASS_SLOTS, "counters.pass holds every pass reason");
_Static_assert(NR_KERNEL_ERRORS <= ERROR_SLOTS, "counters.errors holds every kernel error");
