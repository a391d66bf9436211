// SPDX-License-Identifier: GPL-2.0
/* TC packet source for lab hosts: one event per packet seen on the host's interface. */
#include "demo.h"

int tc_packet(struct __sk_buff *skb)
{
    struct demo_event ev = {};
    ev.kind = KIND_PACKET;
    ev.pid = skb->ifindex;
    ev.aux = skb->protocol;
    ev.len = skb->len;
    ev.value = ((u64)skb->ingress_ifindex << 32) | skb->mark;
    emit(skb, &ev);
    return 0; /* TC_ACT_OK: observe only, never change the packet's fate */
}
