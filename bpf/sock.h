/* The server socket as the kernel's TCP stack holds it. */
#pragma once
#include "structs.h"

/* The lookup tuple of the server socket of the connection p arrived on (p is client -> server). */
static __always_inline void server_tuple(struct pkt *p, struct bpf_sock_tuple *t)
{
    if (p->v6) {
        __builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
        __builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
        t->ipv6.sport = p->tcp.source;
        t->ipv6.dport = p->tcp.dest;
        return;
    }
    t->ipv4.saddr = p->saddr[3];                    /* IPv4-mapped: the address is the last word */
    t->ipv4.daddr = p->daddr[3];
    t->ipv4.sport = p->tcp.source;
    t->ipv4.dport = p->tcp.dest;
}

/* The server socket of that connection, as a full socket: for a handshake in progress, the
 * listener. Non-NULL results must be given to bpf_sk_release. */
static __always_inline struct bpf_sock *lookup_server_socket(struct __sk_buff *skb, struct pkt *p,
                                                            struct bpf_sock_tuple *t)
{
    server_tuple(p, t);
    return p->v6 ? bpf_sk_lookup_tcp(skb, t, sizeof(t->ipv6), BPF_F_CURRENT_NETNS, 0)
                 : bpf_sk_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* The same lookup for any socket, request sockets included (bpf_skc_lookup_tcp: a request
 * socket shows BPF_TCP_NEW_SYN_RECV, not its listener). Non-NULL results go to bpf_sk_release. */
static __always_inline struct bpf_sock *lookup_server_skc(struct __sk_buff *skb, struct pkt *p,
                                                          struct bpf_sock_tuple *t)
{
    server_tuple(p, t);
    return p->v6 ? bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv6), BPF_F_CURRENT_NETNS, 0)
                 : bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* The way to the client, as the socket's route has it: its own segments (seen on egress, after
 * the neighbour layer filled in their Ethernet header) leave by one interface for one next hop.
 * The kernel's answers follow them (segment.h), not the request's way in, which differs behind a
 * load balancer that returns nothing (direct server return) or with asymmetric routes: sent back
 * to where the request came from, they could be dropped while the socket's own segments arrive.
 * Stored only when it changes (the route or its neighbour did): a read on every segment, no
 * write. (A plain store: ingress may read a half-updated address once, if a route changes
 * mid-answer.) */
static __always_inline void note_route(struct __sk_buff *skb, struct pkt *p, struct conn_state *cs)
{
    __u8 *to = p->eth.h_dest;
    if (cs->out_ifindex == skb->ifindex && cs->next_hop[0] == to[0] && cs->next_hop[1] == to[1] &&
        cs->next_hop[2] == to[2] && cs->next_hop[3] == to[3] && cs->next_hop[4] == to[4] && cs->next_hop[5] == to[5])
        return;
    __builtin_memcpy(cs->next_hop, to, ETH_ALEN);
    cs->out_ifindex = skb->ifindex;
}

/* Whether the connection's server socket exists and is established. The kernel answers only then:
 * when the accept queue is full, the listener drops the handshake's last ACK (and with SYN cookies
 * it keeps no state at all), yet the client believes the connection is up and sends its request.
 * Answered here, that request would be acknowledged, the client would never send it again, and
 * the socket, never created, could never close: the client would wait for ever. Passed on, the
 * request's ACK completes the handshake, or is dropped and retransmitted like any segment.
 * Returns 0 if it is not, else the socket's MSS (mss_cache: the payload of one of its segments
 * towards the client, after the route's path MTU, which may be an exception learnt from an ICMP
 * error on an earlier connection, the client's MSS and the timestamp option), or 0xffff. */
static __always_inline __u32 server_socket_mss(struct __sk_buff *skb, struct pkt *p, struct bpf_sock_tuple *t)
{
    struct bpf_sock *sk = lookup_server_socket(skb, p, t);
    if (!sk)
        return 0;
    __u32 mss = 0;
    if (sk->state == BPF_TCP_ESTABLISHED) {
        struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);
        mss = tp && tp->mss_cache && tp->mss_cache < 0xffff ? tp->mss_cache : 0xffff;
    }
    bpf_sk_release(sk);
    return mss;
}
