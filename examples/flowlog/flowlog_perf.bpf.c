// SPDX-License-Identifier: GPL-2.0
/*
 * flowlog: one record per IPv4 packet arriving on a device (tc clsact ingress), with the flow
 * key, the packet length and the first bytes of the packet. Records vary in size: each carries
 * CAPTURE(packet) bytes, 16 to 63 depending on the packet's IP id, so the consumer must use
 * cap_len, never sizeof(struct flow_event).
 *
 * Only __sk_buff fields and bpf_skb_load_bytes(): nothing here reads kernel structs.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#define ETH_HLEN 14
#define ETH_P_IP_BE 0x0008 /* htons(ETH_P_IP), as skb->protocol holds it */
#define MAX_CAPTURE 64
#define PROTO_TCP 6
#define PROTO_UDP 17

struct flow_event {
    u32 saddr;   /* network byte order */
    u32 daddr;   /* network byte order */
    u16 sport;   /* host byte order; 0 unless TCP or UDP */
    u16 dport;
    u8 proto;
    u8 ihl;      /* IP header length in bytes / 4 */
    u16 cap_len; /* bytes of payload[] that were captured */
    u32 pkt_len; /* skb->len */
    u8 payload[MAX_CAPTURE];
};

BPF_PERF_OUTPUT(events);

int tc_flowlog(struct __sk_buff *skb)
{
    if (skb->protocol != ETH_P_IP_BE)
        return TC_ACT_OK;
    struct flow_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    u8 vihl = 0;
    u16 id = 0;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0)
        return TC_ACT_OK;
    ev.ihl = vihl & 0x0f;
    bpf_skb_load_bytes(skb, ETH_HLEN + 4, &id, 2);
    bpf_skb_load_bytes(skb, ETH_HLEN + 9, &ev.proto, 1);
    bpf_skb_load_bytes(skb, ETH_HLEN + 12, &ev.saddr, 4);
    bpf_skb_load_bytes(skb, ETH_HLEN + 16, &ev.daddr, 4);
    if (ev.proto == PROTO_TCP || ev.proto == PROTO_UDP) {
        u16 ports[2] = {};
        if (bpf_skb_load_bytes(skb, ETH_HLEN + (ev.ihl & 0x0f) * 4, ports, 4) == 0) {
            ev.sport = ntohs(ports[0]);
            ev.dport = ntohs(ports[1]);
        }
    }
    ev.pkt_len = skb->len;
    /* 16 + (IP id % 48) bytes of the packet, at most its length: a variable-size record */
    u64 n = 16 + (ntohs(id) % 48);
    if (n > skb->len)
        n = skb->len;
    /* Bounds the verifier can follow: clang would fold these two checks into one (or drop
     * them, knowing n < 64), hence the empty asm statements. */
    asm volatile("" : "+r"(n));
    if (n > MAX_CAPTURE)
        return TC_ACT_OK;
    asm volatile("" : "+r"(n));
    if (n == 0)
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, 0, ev.payload, n) < 0)
        return TC_ACT_OK;
    ev.cap_len = n;
    events.perf_submit(skb, &ev, sizeof(ev) - MAX_CAPTURE + n);
    return TC_ACT_OK; /* observe only */
}
