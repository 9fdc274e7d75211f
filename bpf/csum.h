/* Internet checksum helpers (RFC 1071). */
#pragma once

static __always_inline __u16 csum_fold(__u64 sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

struct pseudo_hdr4 {
    __be32 saddr;
    __be32 daddr;
    __u8 zero;
    __u8 proto;
    __be16 len;
};

/* RFC 8200 section 8.1 */
struct pseudo_hdr6 {
    __be32 saddr[4];
    __be32 daddr[4];
    __be32 len;
    __u8 zero[3];
    __u8 proto;
};
