/* HTTP request parsing: one GET or HEAD request, as llhttp (aiohttp's parser) would read it, or the
 * pass reason why not; and its If-None-Match and If-Modified-Since values against an entry's. Functions return a
 * pass reason or an internal result (results.h). */
#pragma once
#include "results.h"
#include "structs.h"

static __always_inline __u8 lc(__u8 c) { return c | 0x20; }   /* letters only; others may alias */

/* The little-endian word of 8 (or 4) bytes of a string literal: a constant once inlined. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "name words are built little-endian");
static __always_inline __u64 lit64(const char *s)
{
    __u64 w = 0;
#pragma unroll
    for (int j = 7; j >= 0; j--)
        w = w << 8 | (__u8)s[j];
    return w;
}
static __always_inline __u32 lit32(const char *s)
{
    return (__u8)s[0] | (__u8)s[1] << 8 | (__u8)s[2] << 16 | (__u32)(__u8)s[3] << 24;
}
#define LC64 0x2020202020202020ULL   /* lc() on every byte of a word */
#define LC32 0x20202020U

/* Is the header name at h exactly `name` (lower case, with its colon)? A name is the whole token
 * before the colon (RFC 9110 section 5.1): "Upgrade-Insecure-Requests" is not "Upgrade". lc()
 * aliases only bytes that are not tchars onto the letters, '-' and ':' of a name, and parse_window
 * rejects those in a name anyway; the sentinel 0 becomes ' ', in no name, so no match reaches past
 * the request. Compared a word at a time (the last word overlapping the one before): each compare
 * is a branch the verifier explores at every position of a window, and byte compares of all the
 * names below cost fs_parse over 900k of its 1M instructions. Unaligned loads from the map value
 * are fine: strict alignment is enforced only where the CPU needs it (not x86 or arm64). */
#define NAME_IS(h, name) ({ _Static_assert(sizeof(name) - 1 >= 4, "names of 4 bytes or more"); \
                            name_is(h, name, sizeof(name) - 1); })
static __always_inline int name_is(const __u8 *h, const char *name, const int n)
{
    if (n < 8)
        return ((*(const __u32 *)h | LC32) == lit32(name)) &
               ((*(const __u32 *)(h + n - 4) | LC32) == lit32(name + n - 4));
#pragma unroll
    for (int j = 0; j + 8 < n; j += 8)
        if ((*(const __u64 *)(h + j) | LC64) != lit64(name + j))
            return 0;
    return (*(const __u64 *)(h + n - 8) | LC64) == lit64(name + n - 8);
}

/* Header names that make a request ineligible, by the whole name. Returns a pass reason,
 * FS_CONTINUE, or one of the FS_HDR_* codes for headers the caller tracks. */
#define INM_NAME_LEN 14  /* "If-None-Match:" */
#define IMS_NAME_LEN 18  /* "If-Modified-Since:" */
#define AE_NAME_LEN 16   /* "Accept-Encoding:" */

/* req_buf.singletons: which singleton headers were seen, one bit each (see FS_HDR_SINGLETON). */
enum {
    SINGLETON_HOST = 1 << 0,            /* llhttp also requires one in HTTP/1.1 */
    SINGLETON_USER_AGENT = 1 << 1,
    SINGLETON_CONTENT_TYPE = 1 << 2,
    SINGLETON_CONTENT_LOCATION = 1 << 3,
    SINGLETON_CONTENT_RANGE = 1 << 4,
    SINGLETON_ETAG = 1 << 5,
    SINGLETON_SERVER = 1 << 6,
    SINGLETON_MAX_FORWARDS = 1 << 7,
};

/* The bit goes through memory, not the return value: one verifier state for every singleton
 * (distinct constant results cost fs_parse ~140k instructions of its 1M). */
static __always_inline int singleton(struct req_buf *rb, __u32 bit)
{
    rb->scratch = bit;
    return FS_HDR_SINGLETON;
}

static __always_inline int classify_header(struct req_buf *rb, const __u8 *h)
{
    switch (lc(h[0])) {
    case 'i':
        if (NAME_IS(h, "if-none-match:"))
            return FS_HDR_INM;
        /* RFC 9110 section 13.1's other preconditions (and If-Range, section 13.1.5) */
        if (NAME_IS(h, "if-modified-since:"))
            return FS_HDR_IMS;
        if (NAME_IS(h, "if-unmodified-since:") || NAME_IS(h, "if-match:") || NAME_IS(h, "if-range:"))
            return PASS_CONDITIONAL;
        return FS_CONTINUE;
    case 'r':
        return NAME_IS(h, "range:") ? PASS_RANGE : FS_CONTINUE;
    case 's':
        /* aiohttp refuses the old WebSocket handshake (draft-76) outright: a 400 */
        if (NAME_IS(h, "sec-websocket-key1:"))
            return PASS_MALFORMED;
        return NAME_IS(h, "server:") ? singleton(rb, SINGLETON_SERVER) : FS_CONTINUE;
    case 'm':
        return NAME_IS(h, "max-forwards:") ? singleton(rb, SINGLETON_MAX_FORWARDS) : FS_CONTINUE;
    case 'a':
        return NAME_IS(h, "accept-encoding:") ? FS_HDR_AE : FS_CONTINUE;
    case 'c':
        /* (a body: Content-Length or Transfer-Encoding frames one, RFC 9112 section 6.1) */
        if (NAME_IS(h, "content-length:"))
            return PASS_BODY;
        /* aiohttp sets up decompression of the (empty) body by it, and answers 400 to a coding it
         * cannot decode (zstd without backports.zstd on Python 3.11): the body's business. */
        if (NAME_IS(h, "content-encoding:"))
            return PASS_BODY;
        if (NAME_IS(h, "content-type:"))
            return singleton(rb, SINGLETON_CONTENT_TYPE);
        if (NAME_IS(h, "content-location:"))
            return singleton(rb, SINGLETON_CONTENT_LOCATION);
        if (NAME_IS(h, "content-range:"))
            return singleton(rb, SINGLETON_CONTENT_RANGE);
        if (NAME_IS(h, "connection:")) {
            /* "keep-alive" and "close" decide the answer's variant (llhttp reads them case-blind, as
             * lc() does); any other value (upgrade, several tokens, odd spacing) goes to userspace. */
            if (h[11] == ' ' && NAME_IS(h + 12, "keep-alive") && h[22] == '\r')
                return FS_HDR_CONN_KEEP;
            if (h[11] == ' ' && NAME_IS(h + 12, "close") && h[17] == '\r')
                return FS_HDR_CONN_CLOSE;
            return PASS_CLOSE;
        }
        return FS_CONTINUE;
    case 'p':
        /* llhttp reads Proxy-Connection as Connection (a legacy of http_parser): its close would
         * end the connection after aiohttp's answer. */
        return NAME_IS(h, "proxy-connection:") ? PASS_CLOSE : FS_CONTINUE;
    case 't':
        return NAME_IS(h, "transfer-encoding:") ? PASS_BODY : FS_CONTINUE;
    case 'u':
        if (NAME_IS(h, "user-agent:"))
            return singleton(rb, SINGLETON_USER_AGENT);
        return NAME_IS(h, "upgrade:") ? PASS_CLOSE : FS_CONTINUE;
    case 'e':
        if (NAME_IS(h, "etag:"))
            return singleton(rb, SINGLETON_ETAG);
        return NAME_IS(h, "expect:") ? PASS_MALFORMED : FS_CONTINUE;   /* 100-continue wants a body */
    case 'h':
        return NAME_IS(h, "host:") ? singleton(rb, SINGLETON_HOST) : FS_CONTINUE;
    }
    return FS_CONTINUE;
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

/* Scan window `stage` of the request, b[stage * PARSE_WINDOW, (stage + 1) * PARSE_WINDOW), as exactly
 * one `GET|HEAD <path>[?query] HTTP/1.x` request with no body and nothing after it; the path goes to
 * rb->key (zeroed by the caller). Returns FS_CONTINUE for such a request, FS_PARSE if it continues
 * past the window, or a pass reason.
 * The caller writes a 0 at b[len]: the scan stops at that sentinel, so the loop never compares
 * positions against len (a NUL inside a request is malformed anyway).
 * HEAD is parsed like GET (the answer is then the headers alone).
 * Verifier cost: the loop index is the byte position and is never modified in the body,
 * look-aheads use constant offsets from it, and the only other state is one small enum. */
static __always_inline int parse_window(struct req_buf *rb, __u32 stage)
{
    /* The stage is a value, not a constant: one program scans every window, so the verifier
     * checks one window's loop once instead of once per stage (each costs it ~800k insns). */
    rb->stage = stage & (NR_PARSE_STAGES - 1);
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
    for (__u32 k = 0; k < PARSE_WINDOW; k++) {
        /* The position is read back from memory at every step like the state: what one step's
         * comparisons learn about it must not split the verifier's states of the next. */
        __u32 i = (*(volatile __u32 *)&rb->stage & (NR_PARSE_STAGES - 1)) * PARSE_WINDOW + k;
        if (i < 4)
            continue;                               /* the method, checked above */
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
            /* '%' too: the key is the path as sent, and userspace registers only the canonical
             * spelling of a path (fileserver/resolve.py), so no other spelling can match. */
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
                rb->req_end = i + 2;                        /* more may follow: pipelined */
                /* llhttp (aiohttp) rejects an HTTP/1.1 request without Host (HTTP/1.0 needs none). */
                return (*(volatile __u32 *)&rb->singletons & SINGLETON_HOST) || *(volatile __u32 *)&rb->http10 ? FS_CONTINUE : PASS_MALFORMED;
            }
            if (!is_tchar(c))
                return PASS_MALFORMED;                      /* obs-fold, an empty name, ... */
            if (++rb->headers > LIMIT_HEADERS)
                return PASS_TOO_LONG;
            int r = classify_header(rb, b + i);
            if (r == FS_HDR_INM) {
                if (*(volatile __u32 *)&rb->inm_pos)
                    return PASS_CONDITIONAL;                /* two of them: let userspace combine */
                rb->inm_pos = i + INM_NAME_LEN;
            } else if (r == FS_HDR_IMS) {
                if (*(volatile __u32 *)&rb->ims_pos)
                    return PASS_CONDITIONAL;
                rb->ims_pos = i + IMS_NAME_LEN;
            } else if (r == FS_HDR_AE) {
                if (*(volatile __u32 *)&rb->ae_pos)
                    return PASS_ENCODING;                   /* two of them: userspace combines them */
                rb->ae_pos = i + AE_NAME_LEN;
            } else if (r == FS_HDR_SINGLETON) {
                __u32 bit = *(volatile __u32 *)&rb->scratch;
                if (*(volatile __u32 *)&rb->singletons & bit)
                    return PASS_MALFORMED;                  /* aiohttp answers a second one 400 */
                rb->singletons |= bit;
            } else if (r == FS_HDR_CONN_KEEP || r == FS_HDR_CONN_CLOSE) {
                if (*(volatile __u32 *)&rb->conn_hdr)
                    return PASS_CLOSE;                      /* two of them: llhttp's rules, not ours */
                rb->conn_hdr = r == FS_HDR_CONN_KEEP ? CONN_HDR_KEEP : CONN_HDR_CLOSE;
            } else if (r != FS_CONTINUE) {
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
    return FS_PARSE;
}

/* Copy the request at `base` of the segment's payload (0: the first, which starts the payload:
 * checked by the caller; more: pipelined behind it) into the scratch buffer for the parse stages
 * and reset their state. Returns FS_PARSE, or PASS_TOO_LONG for a segment longer than the kernel
 * parses. */
static __always_inline int load_request(struct __sk_buff *skb, struct pkt *p, struct req_buf *rb, __u32 base)
{
    if (p->payload_len > MAX_REQ || base >= p->payload_len)
        return PASS_TOO_LONG;
    __u32 plen = p->payload_len - base;
    asm volatile("" : "+r"(plen));
    plen &= REQ_MASK | MAX_REQ;                     /* verifier: plen <= 2 * MAX_REQ - 1 ... */
    if (plen == 0 || plen > MAX_REQ)                /* ... and then <= MAX_REQ */
        return PASS_TOO_LONG;
    if (bpf_skb_load_bytes(skb, p->payload_off + base, rb->b, plen) < 0)
        return PASS_TOO_LONG;
    rb->base = base;
    rb->req_end = 0;
    __u64 end = plen;
    CLAMP_MAX(end, MAX_REQ);
    rb->b[end] = 0;                                 /* the sentinel parse_window stops at */
    rb->len = plen;
    rb->state = ST_START;
    rb->stage = 0;
    rb->inm_pos = 0;
    rb->ims_pos = 0;
    rb->ae_pos = 0;
    rb->singletons = 0;
    rb->headers = 0;
    rb->line_start = 0;
    rb->http10 = 0;
    rb->conn_hdr = 0;
    __builtin_memset(&rb->key, 0, sizeof(rb->key));
    return FS_PARSE;
}

/* Scanner phases of etag_matches, per element of the If-None-Match list. */
enum {
    ET_LEAD,    /* whitespace before the element */
    ET_WEAK,    /* after a 'W': expecting the '/' of "W/" */
    ET_TAG,     /* the entity-tag itself, compared with the entry's byte by byte */
    ET_TRAIL,   /* whitespace after it (anything else spoils the element) */
};

/* Does the If-None-Match value at rb->b[pos] name this ETag? 1 yes, 0 no, -1 for userspace ("*",
 * or a value longer than INM_SCAN). The value is read exactly as userspace reads it
 * (http_semantics.evaluate_preconditions): split at every ',', each element stripped of
 * whitespace (parse_window lets only space and tab through), "W/" dropped (the weak comparison of
 * GET and HEAD, RFC 9110 section 13.1.2), then compared whole; any element equal to the ETag
 * gives a 304, as does "*", which userspace decides. Verifier cost: one pass, the element's
 * state laundered through map memory (phase, bytes matched, still equal), as in parse_window. */
static __always_inline int etag_matches(struct req_buf *rb, __u64 pos, __u8 *tag, __u32 tag_len)
{
    const __u32 fresh = ET_LEAD | 1 << 8;       /* bits 0-1 phase, 2-7 bytes matched, 8 equal so far */
    __u32 st = fresh;
    int found = -1;
#pragma clang loop unroll(disable)
    for (__u32 j = 0; j < INM_SCAN; j++) {
        rb->scratch = st;
        st = *(volatile __u32 *)&rb->scratch & 0x1ff;
        __u64 at = pos + j;
        asm volatile("" : "+r"(at));            /* or LLVM turns the check into a trip count and
                                                 * reads through an unbounded pointer (bcc, LLVM 14) */
        if (at >= MAX_REQ)
            break;
        __u8 c = rb->b[at];
        __u32 phase = st & 3, m = (st >> 2) & 63, ok = st >> 8;
        if (c == '\r' || c == ',') {
            if (ok && phase >= ET_TAG && m == tag_len) {
                found = 1;
                break;
            }
            if (c == '\r') {
                found = 0;
                break;
            }
            st = fresh;
            continue;
        }
        int ws = c == ' ' || c == '\t';
        if (c == 0 || (phase == ET_LEAD && c == '*'))
            break;
        if (phase == ET_LEAD) {
            if (ws)
                continue;
            if (c == 'W') {
                st = ET_WEAK | 1 << 8;
                continue;
            }
            phase = ET_TAG;                     /* c is the tag's first byte */
        } else if (phase == ET_WEAK) {
            st = ET_TAG | (c == '/') << 8;      /* "W" and anything else: equal to nothing */
            continue;
        }
        if (phase == ET_TAG && !ws) {
            if (m < tag_len && m < ETAG_MAX && c == tag[m])
                m++;
            else
                ok = 0;
        } else {
            phase = ET_TRAIL;
            if (!ws)
                ok = 0;
        }
        st = phase | m << 2 | ok << 8;
    }
    /* One verifier state after the loop, whichever position it ended at: without this each
     * position's exit is verified through the rest of the program on its own. */
    rb->scratch = found + 1;
    return (int)(*(volatile __u32 *)&rb->scratch & 3) - 1;
}

/* How many of the (at most 4) bytes at v are optional whitespace (RFC 9110 section 5.6.3). */
static __always_inline __u32 ows_len(const __u8 *v)
{
    __u32 k = 0;
#pragma unroll
    for (int s = 0; s < 4; s++)
        if (k == s && (v[s] == ' ' || v[s] == '\t'))
            k++;
    return k;
}

/* Is the If-Modified-Since value at rb->b[pos] exactly this Last-Modified (IMF_FIXDATE_LEN bytes,
 * optional whitespace around it)? Then the file has not been modified since (RFC 9110 section
 * 13.1.3: same second), and userspace would answer 304 too. Any other date, or another form of
 * one, is userspace's to parse: 0. */
static __always_inline int date_is(struct req_buf *rb, __u64 pos, __u8 *last_modified)
{
    if (pos > MAX_REQ - IMF_FIXDATE_LEN - 16)
        return 0;
    CLAMP_MAX(pos, MAX_REQ - IMF_FIXDATE_LEN - 16);
    __u8 *v = rb->b + pos;
    __u32 k = ows_len(v);
    int equal = 1;
#pragma unroll
    for (int j = 0; j < IMF_FIXDATE_LEN; j++)
        if (v[k + j] != last_modified[j])
            equal = 0;
    __u8 *after = v + k + IMF_FIXDATE_LEN;
    return equal && after[ows_len(after)] == '\r';
}

/* Is v exactly the n bytes of s (case and all)? Inlined with a literal: constant compares. */
#define BYTES_ARE(v, s) bytes_are(v, s, sizeof(s) - 1)
static __always_inline int bytes_are(const __u8 *v, const char *s, const int n)
{
#pragma unroll
    for (int j = 0; j < n; j++)
        if (v[j] != s[j])
            return 0;
    return 1;
}

/* Which Accept-Encoding value the request carries: 0 none, n for fileserver/abi.py's AE_FORMS[n - 1]
 * (the exact values browsers and curl send, in that order), or -1 for any other (userspace's to
 * parse, with q-values and all). Only exact lower-case bytes match; userspace has registered, for
 * each form, the answer its own parser gives that very value (fileserver/encoding.py). */
#define AE_IS(v, s) BYTES_ARE(v, s "\r")
static __always_inline int ae_form(struct req_buf *rb)
{
    __u64 pos = rb->ae_pos;
    if (!pos)
        return 0;
    CLAMP_MAX(pos, MAX_REQ);                        /* (b holds NAME_PEEK + 16 bytes past MAX_REQ) */
    __u8 *v = rb->b + pos;
    v += ows_len(v) & 3;
    if (AE_IS(v, "gzip, deflate, br, zstd"))
        return 1;
    if (AE_IS(v, "gzip, deflate, br"))
        return 2;
    if (AE_IS(v, "gzip, deflate"))
        return 3;
    if (AE_IS(v, "deflate, gzip, br, zstd"))
        return 4;
    if (AE_IS(v, "deflate, gzip, br"))
        return 5;
    if (AE_IS(v, "deflate, gzip"))
        return 6;
    if (AE_IS(v, "gzip"))
        return 7;
    if (AE_IS(v, "identity"))
        return 8;
    return -1;
}
_Static_assert(NR_AE_FORMS == 8, "ae_form knows every form");

/* How aiohttp answers this form of request (VAR_*): by its version and Connection header. */
static __always_inline __u32 request_variant(struct req_buf *rb)
{
    if (rb->http10)
        return rb->conn_hdr == CONN_HDR_KEEP ? VAR_KEEP10 : VAR_CLOSE10;
    return rb->conn_hdr == CONN_HDR_CLOSE ? VAR_CLOSE11 : VAR_KEEP11;
}
