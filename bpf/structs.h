/* Structures of the maps (fileserver/maps.py and conns.py read them via bcc) and of the programs. */
#pragma once
#include "consts.h"
#include "reasons.h"

/* URL path, zero padded: the file_cache key. */
struct path_key {
    char path[MAX_PATH];
};

/* file_cache value: which body to send. Bodies are never rewritten in place: a new version gets a
 * new id, file_cache is switched to it, then the old body is deleted, so a reader sees one whole
 * version or misses (DESIGN.md section 6). */
struct body_ref {
    __u32 id;               /* 0: none (userspace answers) */
    __u32 cls;              /* size class 0..NR_CLASSES-1 */
    __u32 len;              /* its 200 (body_hdr.len) and its head (head_len): what a pipelined */
    __u32 head_len;         /* request's answer takes, known before the body is looked up */
};

struct cache_ref {
    struct body_ref plain;  /* the answer to a request without Accept-Encoding */
    __u64 last_hit_ns;      /* written by the kernel on each answer: userspace evicts the least recent */
    __u64 hits;             /* answers sent from this entry (for `fileserver stats`' hot files) */
    /* The answer to each Accept-Encoding value the kernel knows (ae_form() n at [n - 1]): the
     * precompressed sibling userspace would send for that value, or the file itself. */
    struct body_ref by_form[NR_AE_FORMS];
    /* 1: the file has no other representation (no sibling, nothing compressed here: userspace's
     * encoding.choose sends it as itself whatever Accept-Encoding says), or this is a 404, so a
     * value the kernel does not know is answered with `plain` too. Set by userspace. */
    __u32 any_encoding;
};

/* What precedes the data of every body: one version of one file, all the kernel needs to answer.
 * data[0, NM_REGION) holds the 304 answer, data[NM_REGION, NM_REGION + len) the 200 answer.
 * Sums are 16-bit one's complement sums of those bytes with their Date slot zeroed, folded. */
struct body_hdr {
    __u32 len;              /* 200 response bytes (headers + body) */
    __u32 csum;
    __u32 head_len;         /* its status line and headers: the whole answer to a HEAD */
    __u32 head_csum;
    __u32 nm_len;           /* the 304 response (headers only) */
    __u32 nm_csum;
    __u16 etag_off;         /* the ETag value, quotes included, inside the 304 bytes */
    __u16 etag_len;
    /* Sums of the other variants (VAR_*, from 1) of each kind of answer (KIND_*), Date zeroed, at
     * [kind * (NR_VARIANTS - 1) + variant - 1] (flat: bcc's Python types lose a second dimension). */
    __u16 vcsum[NR_KINDS * (NR_VARIANTS - 1)];
    __u16 lm_off;           /* the Last-Modified value (IMF_FIXDATE_LEN bytes) inside the 304 bytes */
    __u16 date_off;         /* the Date slot in the 200 answer (DATE_SLOT_OFFSET), or in the 404 of
                             * a negative entry (one for a missing path: nm_len 0, no 304) */
    __u16 pad;
};

#define BODY_STRUCT(n, size)                                                                        \
    struct body##n {                                                                                \
        struct body_hdr h;                                                                          \
        __u8 data[size];                                                                            \
    }
BODY_STRUCT(0, CLASS0_DATA);
BODY_STRUCT(1, CLASS1_DATA);
BODY_STRUCT(2, CLASS2_DATA);
BODY_STRUCT(3, CLASS3_DATA);
BODY_STRUCT(4, CLASS4_DATA);
BODY_STRUCT(5, CLASS5_DATA);

/* One TCP connection to the server, keyed by the client->server 4-tuple. Addresses are IPv6, in
 * network order; an IPv4 one is IPv4-mapped (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2), as a
 * dual-stack socket names its peer, so one key type serves both families. */
struct conn_key {
    __u32 client_ip[4];
    __u32 server_ip[4];
    __u16 client_port;
    __u16 server_port;
};

/* Sequence numbers are as the client sees them ("raw") unless said otherwise. */
struct conn_state {
    __u32 delta_in;         /* client bytes answered by the kernel (server socket never saw them) */
    __u32 delta_out;        /* bytes the kernel sent (server socket never sent them) */
    __u32 next_seq;         /* where the next client request must start */
    __u32 srv_next;         /* server sequence after everything sent so far (client view) */
    __u32 last_req_seq;     /* last request the kernel answered: start and length */
    __u32 last_req_len;
    __u32 last_resp_len;    /* and its response length (starts at srv_next - last_resp_len) */
    __u32 passed_end;       /* client view: after the furthest data byte passed to the server socket */
    __u64 flags;            /* CONN_*: changed only atomically (conn_sync.h) */
    __u64 version;          /* even while the sequence fields above are stable (conn_sync.h) */
    __u64 last_seen_ns;     /* bpf_ktime_get_ns of the last segment (userspace GC) */
    __u16 server_win;       /* last window field the server sent (already scaled) */
    __u8 client_wscale;     /* client's window scale shift (from its SYN) */
    __u8 last_items;        /* requests the last answer answered (several: pipelined) */
    __u32 srv_isn1;         /* the server socket's first data sequence number (ISN + 1; its own view) */
    __u32 srv_tsval;        /* newest TSval sent on the connection, by the socket or the kernel
                             * (host order; valid with CONN_TS_SEEN) */
    /* The last answer, if longer than one segment, kept so its lost segments can be sent again
     * with the same bytes: one part per request it answered (last_items of them; several:
     * pipelined), each cut into segments of its own (answer.h: send_segment). Part k is the first
     * part_len[k] bytes of the 200 answer of body part_id[k] in one variant (a GET's: all of it; a
     * HEAD's: its head), the variant's header line included. Arrays, the class and variant in one
     * byte (PART_CV): the entry must stay within 160 bytes (below). */
    __u32 part_id[MAX_BATCH];
    __u16 part_len[MAX_BATCH];
    __u8 part_cv[MAX_BATCH];    /* PART_CV(size class, VAR_*) */
    __u16 seg_size;         /* payload bytes per segment */
    __u16 client_mss;       /* from the client's SYN */
    __u32 fast_ack;         /* last duplicate ACK a segment was resent for (once per hole) */
    __u16 path_mtu;         /* the path's MTU (IP packet bytes) if an ICMP error about a kernel
                             * segment said it is below the link's; 0: none; 1: below any we send */
    __u16 sock_mss;         /* the server socket's MSS when first seen established (sock.h) */
    __u32 fin_in;           /* the client's sequence after its FIN (with CONN_FIN_IN) */
    __u32 fin_out;          /* the server's sequence after its FIN, client view (with CONN_FIN_OUT) */
    __u32 out_ifindex;      /* the interface the socket's own segments leave by (0: none seen yet) */
    __u8 next_hop[6];       /* and their destination MAC: the next hop the socket's route chose */
    __u16 pad3;
};
/* A conn_state element of the hash (BPF_F_NO_PREALLOC: bpf_mem_alloc) is its 48-byte htab_elem
 * header, the key rounded up to 8 (40), the value and an 8-byte list node: with a value up to 160
 * bytes that is one 256-byte object; one byte more and every connection takes 512. */
_Static_assert(sizeof(struct conn_state) <= 160, "conn_state outgrows its 256-byte allocation");
#define PART_CV(cls, variant) ((cls) | (variant) << 4)
#define PART_CLS(cv) ((cv) & 15)
#define PART_VARIANT(cv) ((cv) >> 4)
_Static_assert(NR_CLASSES <= 16 && NR_VARIANTS <= 16, "a part's class and variant share a byte");
_Static_assert(CLASS5_DATA + KEEP_HDR_LEN <= 0xffff, "part_len holds every answer");

/* What is left of a closed connection's state (closed_conns): the deltas, for the segments a
 * socket in TIME_WAIT may still exchange with the client. */
struct closed_conn {
    __u32 delta_in;
    __u32 delta_out;
};

/* user_idle value: what userspace had read from and written to a connection's socket when it last
 * owed nothing on it. */
struct user_idle {
    __u64 consumed;
    __u64 written;
};

/* Segments of our port the TC programs handled on one interface. */
struct if_counters {
    __u64 in_packets;
    __u64 in_bytes;
    __u64 out_packets;
    __u64 out_bytes;
};

struct clock {
    __u64 updated_ns;       /* CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last refresh */
    __u8 date[DATE_SLOT_LEN];   /* " " + date + CRLF: at DATE_SLOT_OFFSET of a 200, NM_DATE_SLOT_OFFSET of a 304 */
    __u32 socketless;       /* 1: --socketless-close is on and the netns sends every SYN-ACK with a
                             * cookie (net.ipv4.tcp_syncookies=2), checked at each refresh (nosock.h) */
    __u32 pad;
};

/* A connection answered and closed without a socket (nosock.h), kept for a FIN its client sends
 * again because our ACK of it was lost. */
struct nosock_closed {
    __u32 srv_seq;          /* our sequence after our FIN (client view) */
    __u32 fin_end;          /* the client's sequence after its FIN: what our ACK acknowledges */
    __u32 out_ifindex;      /* the way back (conn_state's) */
    __u8 next_hop[6];
    __u16 server_win;
};

struct counters {
    __u64 hits;             /* requests answered in the kernel */
    __u64 hit_bytes;        /* response bytes sent by the kernel */
    __u64 retransmits;      /* retransmitted requests answered again (not counted in hits) */
    __u64 xlate_in;         /* client->server segments translated */
    __u64 xlate_out;        /* server->client segments translated */
    __u64 csum_partial;     /* responses left to checksum offload */
    __u64 csum_full;        /* responses with a full software checksum */
    __u64 sack_blanked;     /* SACK options turned into NOPs: no block named the receiver's bytes */
    __u64 sack_translated;  /* SACK options whose blocks were translated */
    __u64 returns;          /* connections handed back from userspace to the kernel */
    __u64 segments;         /* segments of multi-segment answers after the first */
    __u64 resent;           /* segments of multi-segment answers sent again */
    __u64 acks;             /* pure ACKs sent for requests answered in several segments */
    __u64 probes;           /* tail probes: the last byte of a multi-segment answer sent again */
    __u64 held;             /* client segments dropped while a kernel answer was not wholly acknowledged */
    __u64 path_mtu;         /* ICMP errors that lowered a connection's path MTU (fragmentation needed, too big) */
    __u64 races;            /* segments dropped because another CPU changed their connection meanwhile */
    __u64 freed;            /* conn_state entries freed at their connection's close */
    __u64 socketless;       /* connections answered and closed without a server socket (nosock.h) */
    __u64 pass[PASS_SLOTS];     /* by enum pass_reason */
    __u64 errors[ERROR_SLOTS];  /* by enum kernel_error */
};

/* A parsed Ethernet/IP/TCP segment (IPv4 or IPv6). */
struct pkt {
    struct ethhdr eth;
    __u8 v6;                /* IPv6 (else IPv4) */
    __u8 ip_plain;          /* IPv4 without options or fragmentation; IPv6 with TCP as next header */
    __u8 ce;                /* the IP header's ECN field says Congestion Experienced (RFC 3168 section 5) */
    struct tcphdr tcp;
    __u32 saddr[4];         /* as in struct conn_key: IPv4 addresses are IPv4-mapped */
    __u32 daddr[4];         /* (right after saddr: IPv6 loads both at once) */
    __u32 l4_off;           /* offset of the TCP header */
    __u32 payload_off;
    __u32 payload_len;
    __u32 tsval;            /* from the timestamp option, network order; valid if has_ts */
    __u32 tsecr;
    __u8 has_ts;
    __u8 only_ts;           /* options are exactly NOP NOP TS (or none) */
};

/* The request bytes (they sit in page fragments on lo: no direct packet access). */
struct req_buf {
    __u32 len;                  /* request bytes in b; b[len] is 0 */
    __u32 state;                /* parse_window's scanner state between stages */
    __u32 stage;                /* the window fs_parse scans next */
    __u32 path_start;           /* where the target starts: 4 for "GET ", 5 for "HEAD " */
    __u32 inm_pos;              /* where the If-None-Match value starts (0: no such header) */
    __u32 ims_pos;              /* where the If-Modified-Since value starts (0: no such header) */
    __u32 ae_pos;               /* where the Accept-Encoding value starts (0: no such header) */
    __u32 scratch;              /* values handed through memory to keep verifier states few */
    __u32 singletons;           /* singleton headers seen: SINGLETON_* bits */
    __u32 headers;              /* header lines so far */
    __u32 line_start;           /* where the current line starts */
    __u32 http10;               /* the request line said HTTP/1.0 */
    __u32 conn_hdr;             /* Connection header: 0 none, CONN_HDR_KEEP or CONN_HDR_CLOSE */
    __u32 req_end;              /* where the request parsed ends (its final CRLF's end) */
    __u32 base;                 /* where b starts in the segment's payload (pipelined requests) */
    struct path_key key;        /* the path, built by the parser (here, not on the stack: stack
                                 * slots half zero, half written multiply verifier states) */
    __u8 b[MAX_REQ + NAME_PEEK + 16];
};

/* One of several pipelined requests answered together. */
struct batch_item {
    __u32 id;                   /* its body, of size class cls */
    __u32 cls;
    __u32 len;                  /* its answer's bytes (the variant's header line included) */
    __u32 off;                  /* where its answer starts in the segment's payload */
    __u32 variant;              /* VAR_* */
    __u32 is_head;
    __u32 head_len;             /* its stored head (variant's line not included) */
};

/* What fs_ingress learnt about the segment, for the programs it tail-calls. */
struct answer_ctx {
    struct pkt p;
    struct conn_key key;
    struct body_ref ref;        /* the body that answers */
    __u64 version;              /* the connection's conn_sync.h version when fs_ingress began */
    int rolled_back;
    __u32 undone_items;         /* if rolled_back: requests the undone answer answered */
    int is_head;                /* answer with the headers only */
    __u32 inm_pos;              /* If-None-Match value in the request buffer, 0 if none */
    __u32 ims_pos;              /* If-Modified-Since value in the request buffer, 0 if none */
    __u32 variant;              /* VAR_*: how to answer */
    /* For fs_seg<cls>: send answer bytes [seg_off, seg_end) of the connection's last answer (none:
     * a pure ACK), acknowledging ack_seq, with these timestamps (network order). */
    __u32 seg_off;
    __u32 seg_end;
    __u32 ack_seq;
    __u32 tsval;
    __u32 tsecr;
    __u32 seg_resend;           /* these segments were sent before (counted as resent) */
    __u32 probe;                /* the tail probe is being sent (answer.h: send_segment) */
    __u32 fin;                  /* the segment built carries our FIN (a socketless answer, nosock.h) */
    __u32 parse_calls;          /* fs_parse calls so far (the tail calls left bound the segments) */
    struct bpf_sock_tuple tuple;  /* for the server socket's lookup (bpf/sock.h) */
    /* Pipelined requests answered together (answer.h: send_batch): items[0, n_items), their
     * answers concatenated into one segment of batch_total bytes, written by one fs_send<cls> per
     * item in turn (`item`: the next), which sum their bytes into batch_sum. */
    __u32 n_items;
    __u32 item;
    __u32 batch_total;
    __u32 batch_psum;           /* the pseudo-header's sum (store_tcp_csum) */
    __u64 batch_sum;
    struct batch_item items[MAX_BATCH];
    struct path_key batch_keys[MAX_BATCH];  /* their paths, for the entries' hit counts */
};

/* fs_egress's segment and key (off its stack, which would overflow). */
struct egress_ctx {
    struct pkt p;
    struct conn_key key;
};

/* One record of the close_events ring buffer. */
struct close_event {
    struct conn_key key;
    __u32 kind;                 /* CLOSE_WANTED or CLOSE_NOW */
};

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
