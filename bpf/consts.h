/* Bounds and constants. Every value says its unit or reason; tunables can be overridden with -D. */
#pragma once

#ifndef SERVER_PORT
#error "SERVER_PORT must be passed as -DSERVER_PORT=<port> by the loader"
#endif

/* skb->mark on segments the ingress program built and redirected, so the egress program leaves
 * them alone (they are already in the client's sequence space). It includes the port: another
 * instance's egress filter on the same interface must not mistake our segment for its own. */
#define KERNEL_MARK (0x7e570000 | SERVER_PORT)

#define ETH_HLEN_ 14
#define IPV4_HLEN 20            /* we only build and answer on headers without IP options */
#define IPV6_HLEN 40            /* ... or IPv6 extension headers */
#define TCP_HLEN 20
#define TCP_TS_OPTLEN 12        /* NOP, NOP, TIMESTAMP (10): what Linux clients send on every segment */
#define TCP_MAX_OPTLEN 40

/* The ECN field: the low two bits of IPv4's TOS and IPv6's traffic class (RFC 3168 section 5;
 * the kernel's names, from include/net/inet_ecn.h). */
#define INET_ECN_MASK 3
#define INET_ECN_CE 3

/* ICMP errors that report a path MTU below what we sent (RFC 1191, RFC 8201): ICMPv4 destination
 * unreachable / fragmentation needed, ICMPv6 packet too big (RFC 4443 section 3.2). */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define ICMP_HLEN 8             /* type, code, checksum, then 4 bytes (the MTU in both of these) */
#define ICMP_CSUM_OFF 2
/* Smallest path MTUs believed: Linux's net.ipv4.route.min_pmtu default, and IPv6's minimum link MTU
 * (RFC 8200 section 5). A report below is ignored, as the kernel's own TCP would clamp it. */
#define IPV4_MIN_PMTU 552
#define IPV6_MIN_MTU 1280

/* Field offsets in the TCP header (RFC 9293 section 3.1). */
#define TCP_SEQ_OFF 4
#define TCP_ACK_OFF 8
#define TCP_CSUM_OFF 16

/* TCP option kinds and lengths (RFC 9293 section 3.2, RFC 7323, RFC 2018; the kernel's own names
 * from include/net/tcp.h, which is not UAPI and so not in the headers bcc sees here). */
#define TCPOPT_EOL 0            /* end of the option list */
#define TCPOPT_NOP 1            /* one byte of padding */
#define TCPOPT_MSS 2
#define TCPOPT_WINDOW 3         /* window scale */
#define TCPOPT_SACK 5
#define TCPOPT_TIMESTAMP 8
#define TCPOLEN_MSS 4
#define TCPOLEN_WINDOW 3
#define TCPOLEN_TIMESTAMP 10
#define TCPOLEN_SACK_PERBLOCK 8 /* one block: left and right edge */
#define TCP_MAX_SACK_BLOCKS 4   /* (2 + 4 * 8 = 34 of the 40 option bytes) */

/* Largest request the kernel parses (bytes of TCP payload): browser requests with cookies run to a
 * few KiB. Longer ones go to userspace. Power of two so indexes can be masked for the verifier.
 * A request must also arrive in one segment: on a 1500-byte link that is the MSS, 1448 bytes. */
#ifndef MAX_REQ
#define MAX_REQ 4096
#endif
#define REQ_MASK (MAX_REQ - 1)
/* Bytes read past a header-line start when matching header names (scratch buffer is padded). */
#define NAME_PEEK 32
/* Userspace's parser limits (--max-url-length, --max-header-size, --max-headers): a request over
 * any of them gets a 400 from userspace, so the kernel must not answer it either. */
#ifndef LIMIT_URL_LENGTH
#define LIMIT_URL_LENGTH 8190
#endif
#ifndef LIMIT_HEADER_SIZE
#define LIMIT_HEADER_SIZE 8190
#endif
#ifndef LIMIT_HEADERS
#define LIMIT_HEADERS 128
#endif

/* The request is scanned in windows of PARSE_WINDOW bytes, one tail call of fs_parse each (so at
 * most 8 of the 33 tail calls a packet may make). */
#define PARSE_WINDOW 512
#define NR_PARSE_STAGES (MAX_REQ / PARSE_WINDOW)
/* Slots of the progs tail-call array (fileserver/bpf_build.py fills them): the parser, one sender
 * per size class, one segment sender per size class. */
#define PROG_PARSE0 0
#define PROG_SEND0 1
#define PROG_SEG0 (PROG_SEND0 + NR_CLASSES)
#define NR_PROGS (PROG_SEG0 + NR_CLASSES)

/* Request-target bytes (path + query) scanned; the key holds the path without the query. */
#define MAX_TARGET 256
#define MAX_PATH 128

/* Response bodies are copied into the skb in fixed chunks: bpf_skb_store_bytes needs a length the
 * verifier can bound, and 512 B measured fine (DESIGN.md section 7). */
#define CHUNK 512

/* bpf_skb_change_tail cannot grow an skb beyond SKB_MAX_ALLOC = 16,064 bytes on this kernel. */
#define MAX_FRAME 16064

/* Multi-segment answers (DESIGN.md section 4). Every segment is a clone of the request skb sent by
 * fs_seg<cls>, which tail-calls itself for the next: the kernel allows 33 tail calls per packet
 * (MAX_TAIL_CALL_CNT), and the parse stages (one call per window), the sender and the tail loss
 * probe after the last segment (answer.h) take the rest: 8 + 1 + 23 + 1. 23 segments of a 1500-byte
 * link (1448 B each with timestamps) still hold the largest body (CLASS5_DATA) and its head.
 * Each segment holds at most the client's MSS (less the timestamp option) and what the link's
 * frame allows. */
#define MAX_SEGS 23
#define MAX_TAIL_CALLS 33
_Static_assert(NR_PARSE_STAGES + 1 + MAX_SEGS + 1 <= MAX_TAIL_CALLS, "a longest request and answer exceed the tail calls");
#define MIN_SEG_PAYLOAD 512     /* below this (a tiny MSS), larger answers pass to userspace */
#define MAX_SEG_PAYLOAD (MAX_FRAME - ETH_HLEN_ - IPV4_HLEN - TCP_HLEN)
#define DEFAULT_MSS 536         /* RFC 9293 section 3.7.1: when the SYN has no MSS option */

/* The Date header: userspace keeps " " + IMF-fixdate (29 bytes) + CRLF = 32 bytes fresh in the
 * clock map; the kernel copies them to this offset of every response ("HTTP/1.1 200 OK\r\nDate:"
 * is 22 bytes). 22 is even and 32 is a multiple of 4, as bpf_csum_diff wants. */
#define DATE_SLOT_OFFSET 22
#define DATE_SLOT_LEN 32
/* In a 304, "HTTP/1.1 304 Not Modified\r\nDate:" is 32 bytes: the same slot bytes fit at 32. */
#define NM_DATE_SLOT_OFFSET 32
/* ... and at most here in any stored answer (a 404's is at 29) */
#define MAX_DATE_SLOT_OFFSET 64

/* The 304 answer of an entry sits in the first NM_REGION bytes of its data; ETags are shorter than
 * ETAG_MAX ("<16 hex digits>-<16 hex digits>" in quotes is 36). The longest 304 (a coding's ETag,
 * Vary and a Cache-Control value of cache_control.MAX_VALUE_LEN) is 316 bytes: tests/unit checks it. */
#define NM_REGION 320
#define ETAG_MAX 48
/* Pipelined requests in one segment the kernel answers together, in one segment (DESIGN.md). */
#define MAX_BATCH 8

/* The Accept-Encoding values the kernel knows (parse_http.h's ae_form, fileserver/abi.py's AE_FORMS). */
#define NR_AE_FORMS 8
/* The longest If-None-Match value the kernel reads (a few entity-tags; longer: userspace). */
#define INM_SCAN 256
/* An IMF-fixdate (RFC 9110 section 5.6.7), "Sun, 06 Nov 1994 08:49:37 GMT": Last-Modified's form. */
#define IMF_FIXDATE_LEN 29

/* If userspace has not refreshed the clock for this long, it is presumed dead and every request
 * passes (the filter may outlive the process: DESIGN.md section 6, liveness). */
#ifndef HEARTBEAT_TIMEOUT_NS
#define HEARTBEAT_TIMEOUT_NS (3ULL * 1000000000ULL)
#endif

/* Size classes of cached responses. A hash element must fit a power-of-two kmalloc bucket, so each
 * class holds 2^k bytes minus room for the element header, key and our own header. */
#define CLASS_OVERHEAD 128
#define CLASS0_DATA (1024 - CLASS_OVERHEAD)
#define CLASS1_DATA (2048 - CLASS_OVERHEAD)
#define CLASS2_DATA (4096 - CLASS_OVERHEAD)
#define CLASS3_DATA (8192 - CLASS_OVERHEAD)
#define CLASS4_DATA (16384 - CLASS_OVERHEAD)
#define CLASS5_DATA (32768 - CLASS_OVERHEAD)   /* over one skb: lo needs several too */
#define NR_CLASSES 6

#ifndef CACHE_ENTRIES
#define CACHE_ENTRIES 1024
#endif
#ifndef CONN_ENTRIES
#define CONN_ENTRIES 65536
#endif
/* Connections answered and closed without a socket whose client may still send its FIN again
 * (nosock.h); an LRU (preallocated: about 1.6 MB): one lost leaves that client a reset instead of
 * our ACK. */
#define NOSOCK_CLOSED_ENTRIES 16384
/* user_idle entries: an LRU map is preallocated, so not one per possible connection. Losing an
 * entry only keeps that connection in userspace until its next response. */
#define USER_IDLE_ENTRIES 4096
#define MAX_IFINDEX 4096        /* config array: per-interface largest frame, indexed by ifindex */
#define MAX_IFSTATS 1024        /* per-interface counters for ifindex below this (others uncounted) */

/* v = min(v, max), done in asm so clang can neither drop the comparison (it may "know" the bound
 * from an earlier check the verifier no longer links to this register) nor split it into a copy. */
#define CLAMP_MAX(v, max) asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(v) : "i"(max))

/* conn_state flags */
#define CONN_USER 1             /* a request went to userspace: the connection stays there */
#define CONN_ANSWERED 2         /* the kernel answered at least one request (last_* are valid) */
#define CONN_WS_OK 4            /* window scaling negotiated (SYN and SYN-ACK both carried it) */
#define CONN_CLOSING 8          /* the kernel's last answer ends the connection: userspace closes the socket */
#define CONN_CLOSE_ACKED 16     /* ... and the client has acknowledged it (userspace was told) */
#define CONN_TS_SEEN 32         /* srv_tsval holds a TSval the server socket sent */
#define CONN_SOCK_ACK 64        /* back from userspace on a segment whose ACK the socket has not seen */
#define CONN_UNACKED 128        /* a multi-segment answer the client has not wholly acknowledged (and
                                 * whose request the kernel has not acknowledged yet) */
#define CONN_SOCK_UP 256        /* the server socket was seen established (bpf/sock.h) */
#define CONN_UNDOABLE 512       /* the last answer may still be undone: no client ACK has covered it */
#define CONN_FIN_IN 1024        /* a FIN from the client was seen (fin_in) */
#define CONN_FIN_IN_ACKED 2048  /* ... and the server socket acknowledged it */
#define CONN_FIN_OUT 4096       /* the server socket's FIN was seen (fin_out) */
#define CONN_FIN_OUT_ACKED 8192 /* ... and the client acknowledged it */
#define CONN_NOSOCK 16384       /* the handshake ended here (SYN cookies): no server socket exists (nosock.h) */

/* Response variants: how aiohttp answers each form of request, reproduced byte for byte. The
 * stored bytes are the first; the others differ in the status line's version digit and/or one
 * header line added at the end of the head. */
#define VAR_KEEP11 0            /* HTTP/1.1, keep-alive: the stored bytes */
#define VAR_CLOSE11 1           /* HTTP/1.1 with "Connection: close": + "Connection: close\r\n"; then close */
#define VAR_CLOSE10 2           /* HTTP/1.0: "HTTP/1.0" in the status line; then close */
#define VAR_KEEP10 3            /* HTTP/1.0 with "Connection: keep-alive": "HTTP/1.0" + "Connection: keep-alive\r\n" */
#define NR_VARIANTS 4
#define VERSION_DIGIT_OFFSET 7  /* the '1' of "HTTP/1.1" in the status line */
#define CLOSE_HDR_LEN 19        /* "Connection: close\r\n" */
#define KEEP_HDR_LEN 24         /* "Connection: keep-alive\r\n" */
/* Kinds of answer an entry holds, in body_hdr.vcsum's first index. */
#define KIND_FULL 0
#define KIND_HEAD 1
#define KIND_NM 2
#define NR_KINDS 3

/* req_buf.conn_hdr */
#define CONN_HDR_KEEP 1
#define CONN_HDR_CLOSE 2

/* close_events: what userspace hears about connections the kernel ended. */
#define CLOSE_WANTED 1          /* answered with a closing variant: close once acknowledged (or soon) */
#define CLOSE_NOW 2             /* the client acknowledged that answer: close the socket now */
#define CLOSE_ABORT 3           /* an answer cannot be completed (its version is gone): reset the connection */
#define CLOSE_EVENTS_PAGES 64
