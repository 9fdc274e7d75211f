/* The compilation unit bcc builds. fileserver/bpf_build.py expands the local includes into one text
 * (bcc rewrites map calls only in its main file) and passes settings as -D flags.
 *
 * Where things are: consts.h (bounds), reasons.h (pass reasons, mirrored in Python), results.h
 * (internal results and verdict()), structs.h and maps.h (the maps userspace shares), report.h
 * (counters, close events), parse_pkt.h and parse_http.h (parsing), csum.h and segment.h (building
 * segments), tcp_xlate.h (sequence translation), sock.h (the server socket), conn.h (the
 * connection state machine), answer.h (answers from the cache); tc_ingress.c and tc_egress.c
 * orchestrate them. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/stddef.h>

#include "consts.h"
#include "results.h"
#include "structs.h"
#include "maps.h"
#include "tc_ingress.c"
#include "tc_egress.c"

/* Entry points live here: bcc only treats functions of the main file as programs. They alone turn
 * internal results into TC verdicts. */
int fs_ingress(struct __sk_buff *skb) { return verdict(skb, handle_ingress(skb)); }
int fs_egress(struct __sk_buff *skb) { return verdict(skb, handle_egress(skb)); }

int fs_parse(struct __sk_buff *skb) { return verdict(skb, handle_parse(skb)); }
_Static_assert((NR_PARSE_STAGES & (NR_PARSE_STAGES - 1)) == 0, "parse_window masks the stage");

/* One sender and one segment sender per size class: the class must be a constant for the
 * verifier to bound each read of the body by its map's value size (answer.h). */
int fs_send0(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 0)); }
int fs_send1(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 1)); }
int fs_send2(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 2)); }
int fs_send3(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 3)); }
int fs_send4(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 4)); }
int fs_send5(struct __sk_buff *skb) { return verdict(skb, handle_send(skb, 5)); }

int fs_seg0(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 0)); }
int fs_seg1(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 1)); }
int fs_seg2(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 2)); }
int fs_seg3(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 3)); }
int fs_seg4(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 4)); }
int fs_seg5(struct __sk_buff *skb) { return verdict(skb, handle_seg(skb, 5)); }
_Static_assert(NR_CLASSES == 6, "one fs_send<cls> and one fs_seg<cls> entry point per size class");
