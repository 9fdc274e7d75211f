/* Maps. Names are what `bpftool map list` shows and what fileserver/datapath.py opens. */
#pragma once
#include "structs.h"

/* URL path -> body reference. No preallocation: memory follows the entries actually cached. */
BPF_F_TABLE("hash", struct path_key, struct cache_ref, file_cache, CACHE_ENTRIES, BPF_F_NO_PREALLOC);

/* Response bodies by id, one map per size class so kernel memory stays close to the bytes cached. */
BPF_F_TABLE("hash", __u32, struct body0, body_1k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct body1, body_2k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct body2, body_4k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct body3, body_8k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct body4, body_16k, CACHE_ENTRIES, BPF_F_NO_PREALLOC);

/* Per-connection translation state. A plain hash, not LRU: evicting a live connection that has
 * deltas would break it, whereas a full table only means new connections stay in userspace
 * (counted as ERR_CONN_FULL). Userspace deletes entries of closed connections. */
BPF_F_TABLE("hash", struct conn_key, struct conn_state, conn_state, CONN_ENTRIES, BPF_F_NO_PREALLOC);

BPF_PERCPU_ARRAY(counters, struct counters, 1);
BPF_PERCPU_ARRAY(if_stats, struct if_counters, MAX_IFSTATS);

/* Largest frame (MTU + Ethernet header, capped at MAX_FRAME) per ifindex, written by the loader:
 * bpf_skb_change_tail does not check the MTU and veth silently drops oversized frames. */
BPF_ARRAY(if_max_frame, __u32, MAX_IFINDEX);

/* Date header bytes and heartbeat; a one-entry hash so an update replaces it atomically. */
BPF_F_TABLE("hash", __u32, struct clock, clock, 1, BPF_F_NO_PREALLOC);

/* Scratch space for the request being parsed (per CPU: a softirq is not preempted). */
BPF_PERCPU_ARRAY(scratch, struct req_buf, 1);

/* Handed from fs_ingress to the programs it tail-calls (same CPU, same softirq). */
BPF_PERCPU_ARRAY(answer_scratch, struct answer_ctx, 1);

/* Tail-call targets: the parse stages, then one sender per size class. */
BPF_PROG_ARRAY(progs, PROG_SEND0 + NR_CLASSES);
