"""A test-only BPF program that drops chosen TCP segments on an interface: by default the
server->client data segments arriving at the client."""

from __future__ import annotations

import ctypes as ct
import errno

from tests.support import NetNS

DROPPER = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

/* Segments with source port SPORT (or destination port DPORT) are numbered from 1 as they pass:
 * data segments, or with PURE_ACKS the segments without data, SYN, FIN or RST. cfg[1]: a bitmap of numbers 1..64 to
 * drop; cfg[0]: drop every cfg[0]-th as well (0: none); cfg[2]: drop a seeded pseudo-random share
 * as well, cfg[2]/65536 of them (an LCG from cfg[3], so a run repeats exactly).
 * cfg[3]: reorder a seeded share of the segments not dropped, cfg[3]/65536 of them (ingress only):
 * the segment is queued again behind those already waiting for the CPU's backlog (a clone
 * redirected to the interface's ingress, marked so that it then passes), so it arrives after
 * the rest of its burst, as behind a router with several queues.
 * stats[0]: data segments seen, stats[1]: dropped, stats[2]: the LCG's state, stats[3]: reordered.
 * With mark_ce the chosen segments are not dropped but marked Congestion Experienced (RFC 3168),
 * as a router with a full queue does. */
#define REQUEUED_MARK 0x7e0dd
BPF_ARRAY(cfg, u64, 4);
BPF_ARRAY(stats, u64, 4);

int drop_chosen(struct __sk_buff *skb)
{
    struct ethhdr eth;
    struct tcphdr tcp;
    if (skb->mark == REQUEUED_MARK) {
        skb->mark = 0;
        return TC_ACT_UNSPEC;
    }
    u32 l4, ip_payload;     /* TCP header offset; IP payload bytes (TCP header and data) */
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return TC_ACT_UNSPEC;
    if (eth.h_proto == htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_TCP)
            return TC_ACT_UNSPEC;
        l4 = ETH_HLEN + ip.ihl * 4;
        ip_payload = ntohs(ip.tot_len) - ip.ihl * 4;
    } else if (eth.h_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_TCP)
            return TC_ACT_UNSPEC;
        l4 = ETH_HLEN + sizeof(ip6);
        ip_payload = ntohs(ip6.payload_len);
    } else {
        return TC_ACT_UNSPEC;
    }
    if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0 || (tcp.source != htons(SPORT) && tcp.dest != htons(DPORT)))
        return TC_ACT_UNSPEC;
    u32 payload = ip_payload - tcp.doff * 4;
    if (PURE_ACKS ? (payload || tcp.syn || tcp.fin || tcp.rst) : payload == 0)
        return TC_ACT_UNSPEC;
    int k0 = 0, k1 = 1, k2 = 2, k3 = 3;
    u64 *seen = stats.lookup(&k0), *dropped = stats.lookup(&k1), *lcg = stats.lookup(&k2), *moved = stats.lookup(&k3);
    u64 *every = cfg.lookup(&k0), *bitmap = cfg.lookup(&k1), *share = cfg.lookup(&k2), *reorder = cfg.lookup(&k3);
    if (!seen || !dropped || !lcg || !moved || !every || !bitmap || !share || !reorder)
        return TC_ACT_UNSPEC;
    u64 n = __sync_fetch_and_add(seen, 1);
    *lcg = *lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    if ((n < 64 && (*bitmap >> n) & 1) || (*every && (n + 1) % *every == 0) || (*lcg >> 48) < *share) {
        __sync_fetch_and_add(dropped, 1);
        if (!MARK_CE)
            return TC_ACT_SHOT;
        if (eth.h_proto == htons(ETH_P_IP)) {
            __be16 old, new;    /* version/IHL and TOS: the header checksum's first word */
            if (bpf_skb_load_bytes(skb, ETH_HLEN, &old, 2) < 0)
                return TC_ACT_UNSPEC;
            new = old | htons(3);
            bpf_skb_store_bytes(skb, ETH_HLEN, &new, 2, 0);
            bpf_l3_csum_replace(skb, ETH_HLEN + 10, old, new, 2);
        } else {
            u8 b1;              /* the traffic class' low nibble is in the header's second byte */
            if (bpf_skb_load_bytes(skb, ETH_HLEN + 1, &b1, 1) < 0)
                return TC_ACT_UNSPEC;
            b1 |= 0x30;
            bpf_skb_store_bytes(skb, ETH_HLEN + 1, &b1, 1, 0);
        }
        return TC_ACT_UNSPEC;
    }
    *lcg = *lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    if ((*lcg >> 48) < *reorder) {
        __sync_fetch_and_add(moved, 1);
        skb->mark = REQUEUED_MARK;
        bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
        return TC_ACT_SHOT;
    }
    return TC_ACT_UNSPEC;
}
"""


class Dropper:
    """Drop segments from port `sport` arriving on `ifname` (or, with egress, segments to port
    `dport` leaving it); `drop` numbers them from 1, `every` and `share` add more; `reorder` (a
    share, ingress only) delays segments behind the rest of their burst. Two droppers may share
    an interface (one per direction): close the second one first."""

    def __init__(self, ns: NetNS, ifname: str, sport: int = 0, drop: set[int] = frozenset(), every: int = 0,
                 share: float = 0.0, seed: int = 1, *, dport: int = 0, egress: bool = False,
                 pure_acks: bool = False, mark_ce: bool = False, reorder: float = 0.0) -> None:
        from bcc import BPF  # type: ignore[import-not-found]
        from pyroute2 import IPRoute

        text = (DROPPER.replace("SPORT", str(sport)).replace("DPORT", str(dport)).replace("PURE_ACKS", str(int(pure_acks)))
                .replace("MARK_CE", str(int(mark_ce))))
        self.bpf = BPF(text=text.encode())
        fn = self.bpf.load_func(b"drop_chosen", BPF.SCHED_CLS)
        cfg = self.bpf[b"cfg"]
        cfg[ct.c_int(0)] = ct.c_uint64(every)
        cfg[ct.c_int(1)] = ct.c_uint64(sum(1 << (i - 1) for i in drop))
        cfg[ct.c_int(2)] = ct.c_uint64(int(share * 65536))
        if reorder and egress:
            raise ValueError("reordering needs the ingress side: a clone redirected to egress leaves at once")
        cfg[ct.c_int(3)] = ct.c_uint64(int(reorder * 65536))
        self.bpf[b"stats"][ct.c_int(2)] = ct.c_uint64(seed)
        self.ns = ns
        from pyroute2.netlink.exceptions import NetlinkError

        with ns.entered(), IPRoute() as ipr:
            idx = self.ifindex = ipr.link_lookup(ifname=ifname)[0]
            # Its own clsact: close() removes it, filter and all. A second dropper on the same
            # interface (the other direction) shares the first one's and leaves it to that one.
            try:
                ipr.tc("add", "clsact", idx)
                self.owns_qdisc = True
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                self.owns_qdisc = False
            ipr.tc("add-filter", "bpf", idx, fd=fn.fd, name="test-dropper", parent="ffff:fff3" if egress else "ffff:fff2",
                   direct_action=True)

    def stats(self) -> tuple[int, int]:
        st = self.bpf[b"stats"]
        return int(st[ct.c_int(0)].value), int(st[ct.c_int(1)].value)

    def reordered(self) -> int:
        return int(self.bpf[b"stats"][ct.c_int(3)].value)

    def close(self) -> None:
        from pyroute2 import IPRoute

        if self.owns_qdisc:
            with self.ns.entered(), IPRoute() as ipr:
                ipr.tc("del", "clsact", self.ifindex)
        self.bpf.cleanup()
