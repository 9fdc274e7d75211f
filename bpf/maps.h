/* Maps. Names are what `bpftool map list` shows and what fileserver/maps.py opens.
 *
 * The maps outlive any one set of programs: maps.c creates them once per process and exports them
 * (bcc's "maps/export"), and every program build (main.c, at start and again on each SIGHUP reload)
 * uses them as bcc "extern" tables. A reload therefore swaps programs without losing a cached file
 * or a connection's sequence translation. The tail-call array is the exception: it holds one build's
 * own programs. */
#pragma once
#include "structs.h"

/* Every name below is a macro argument, so that bpf_build.py can give a second map set in one
 * process names of its own by renaming the tokens (struct and export names follow). */
#ifdef FS_MAPS_ONLY
#define FS_EXPORT(_name) __attribute__((section("maps/export"))) struct _name##_table_t __##_name
#define FS_TABLE(_type, _key, _leaf, _name, _entries, _flags) \
    BPF_F_TABLE(_type, _key, _leaf, _name, _entries, _flags); \
    FS_EXPORT(_name)
#define FS_RINGBUF(_name, _pages) BPF_RINGBUF_OUTPUT(_name, _pages); FS_EXPORT(_name)
#else
#define FS_TABLE(_type, _key, _leaf, _name, _entries, _flags) \
    BPF_F_TABLE("extern", _key, _leaf, _name, _entries, _flags)
/* bcc's BPF_RINGBUF_OUTPUT layout, as an extern table */
#define FS_RINGBUF(_name, _pages) \
    struct _name##_table_t { \
        int key; \
        u32 leaf; \
        int (*ringbuf_output)(void *, u64, u64); \
        void *(*ringbuf_reserve)(u64); \
        void (*ringbuf_discard)(void *, u64); \
        void (*ringbuf_submit)(void *, u64); \
        u32 max_entries; \
    }; \
    __attribute__((section("maps/extern"))) struct _name##_table_t _name = {.max_entries = (_pages) * PAGE_SIZE}
#endif

/* URL path -> body reference. No preallocation: memory follows the entries actually cached. */
FS_TABLE("hash", struct path_key, struct cache_ref, file_cache, CACHE_ENTRIES, BPF_F_NO_PREALLOC);

/* Response bodies by id, one map per size class so kernel memory stays close to the bytes cached. */
FS_TABLE("hash", __u32, struct body0, body_1k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
FS_TABLE("hash", __u32, struct body1, body_2k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
FS_TABLE("hash", __u32, struct body2, body_4k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
FS_TABLE("hash", __u32, struct body3, body_8k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
FS_TABLE("hash", __u32, struct body4, body_16k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
FS_TABLE("hash", __u32, struct body5, body_32k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);

/* Per-connection translation state. A plain hash, not LRU: evicting a live connection that has
 * deltas would break it, whereas a full table only means new connections stay in userspace
 * (counted as ERR_CONN_FULL). Entries are freed at the close (conn.h: note_close); userspace
 * collects those of connections that ended otherwise (a reset, a FIN never acknowledged). */
FS_TABLE("hash", struct conn_key, struct conn_state, conn_state, CONN_ENTRIES, BPF_F_NO_PREALLOC);

/* The deltas of connections whose conn_state entry was freed at their close (conn.h: note_close).
 * An LRU: losing an entry only matters if the server's last ACK is lost and the client sends its
 * FIN again to the TIME_WAIT socket. */
FS_TABLE("lru_hash", struct conn_key, struct closed_conn, closed_conns, CONN_ENTRIES, 0);

/* Socketless connections closed (nosock.h: their client's FIN acknowledged), for a FIN sent again. */
FS_TABLE("lru_hash", struct conn_key, struct nosock_closed, nosock_closed, NOSOCK_CLOSED_ENTRIES, 0);
/* A connection's state to build a segment from once its entry is gone (nosock.h). */
FS_TABLE("percpu_array", int, struct conn_state, conn_scratch, 1, 0);

FS_TABLE("percpu_array", int, struct counters, counters, 1, 0);
FS_TABLE("percpu_array", int, struct if_counters, if_stats, MAX_IFSTATS, 0);

/* Largest frame (MTU + Ethernet header, capped at MAX_FRAME) per ifindex, written by the loader:
 * bpf_skb_change_tail does not check the MTU and veth silently drops oversized frames. */
FS_TABLE("array", int, __u32, if_max_frame, MAX_IFINDEX, 0);

/* Date header bytes and heartbeat; a one-entry hash so an update replaces it atomically. */
FS_TABLE("hash", __u32, struct clock, clock, 1, BPF_F_NO_PREALLOC);

/* Scratch space for the request being parsed (per CPU: a softirq is not preempted). */
FS_TABLE("percpu_array", int, struct req_buf, scratch, 1, 0);

/* Handed from fs_ingress to the programs it tail-calls (same CPU, same softirq). */
FS_TABLE("percpu_array", int, struct answer_ctx, answer_scratch, 1, 0);
/* fs_egress's own: it can run inside fs_ingress (a clone sent out), so it must not share answer_scratch. */
FS_TABLE("percpu_array", int, struct egress_ctx, egress_scratch, 1, 0);

/* Connections the kernel ended with its answer (Connection: close, HTTP/1.0): userspace closes
 * the server socket, whose FIN then follows the answer on the wire (DESIGN.md section 3). */
FS_RINGBUF(close_events, CLOSE_EVENTS_PAGES);

/* Connections userspace has finished with for now: how many bytes it had read from and written to
 * the socket when it last answered everything it read (back_to_kernel compares them with the
 * socket's own count and the client's acknowledgement). LRU: closed connections age out. */
FS_TABLE("lru_hash", struct conn_key, struct user_idle, user_idle, USER_IDLE_ENTRIES, 0);

#ifndef FS_MAPS_ONLY
/* Tail-call targets of this build: the parse stages, one sender per size class, one segment sender
 * per size class (PROG_* in consts.h). */
BPF_PROG_ARRAY(progs, NR_PROGS);
#endif
