// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * fastpath's tc (clsact) datapath: the same pipeline as the AF_XDP workers, in the
 * kernel, over the same maps -- for devices where XDP cannot be attached or is turned
 * off (issue #15, docs/decisions.md "The tc datapath").
 *
 * Built from the same map header as the XDP program (fp_maps.h, with FP_PIN_SHARED: every
 * map is opened by its pin, none created) and the C twin of the workers' shared
 * conntrack table (fp_table.h, fp_ct.h). What is here so far is the conntrack step; the
 * from-container / from-netdev / from-overlay programs are built on it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FP_PIN_SHARED
#include "fp_maps.h"
#include "fp_ct.h"

/* What fp_ct_probe found, its return value. */
enum {
	PROBE_NOT_IPV4 = 0,
	PROBE_REPLY = 1,       /* the reply entry of a connection (touched as a reply) */
	PROBE_ESTABLISHED = 2, /* the packet's own entry (touched) */
	PROBE_CREATED = 3,     /* neither: an OUT entry was created */
	PROBE_FULL = 4,        /* neither, and the table could not take one */
	PROBE_NO_TABLE = 5,    /* the pinned map is not a conntrack table of this layout */
};

/* Conntrack as from-container does it (ct.rs ct_egress, then ct_create): one probe for
 * both directions of the frame's connection; a reply or an established entry is touched,
 * a new connection gets an OUT entry whose source identity is skb->mark. cb[0] returns
 * the entry's flags, cb[1] its source identity. The step the tc programs run, as a
 * program of its own for tests (BPF_PROG_TEST_RUN) and `fastpath bench`. */
SEC("classifier")
int fp_ct_probe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__be16 sport = 0, dport = 0;
	__u8 tcp_flags = 0;
	struct ct_hit reply = {}, fwd_hit = {};
	int has_reply = 0, has_fwd = 0, tcp;
	struct ct_state st = {};
	struct ct_key fwd;
	struct fpt t;
	__u32 now = ct_now();

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return PROBE_NOT_IPV4;
	tcp = ip->protocol == IPPROTO_TCP;
	if (tcp) {
		struct tcphdr *th = (void *)(ip + 1);

		if ((void *)(th + 1) > end)
			return PROBE_NOT_IPV4;
		sport = th->source;
		dport = th->dest;
		tcp_flags = ((__u8 *)th)[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);

		if ((void *)(uh + 1) > end)
			return PROBE_NOT_IPV4;
		sport = uh->source;
		dport = uh->dest;
	}
	if (ct_open(&t, tcp))
		return PROBE_NO_TABLE;
	fwd = ct_connection(ip->saddr, ip->daddr, sport, dport, ip->protocol, TUPLE_F_OUT);
	ct_lookup_flow(&t, tcp, fwd, now, &reply, &has_reply, &fwd_hit, &has_fwd);
	if (has_reply) {
		skb->cb[0] = ct_touch(&t, &reply, 1, tcp_flags, now, 0);
		skb->cb[1] = reply.st.src_sec_id;
		return PROBE_REPLY;
	}
	if (has_fwd) {
		skb->cb[0] = ct_touch(&t, &fwd_hit, 0, tcp_flags, now, 0);
		skb->cb[1] = fwd_hit.st.src_sec_id;
		return PROBE_ESTABLISHED;
	}
	st.src_sec_id = skb->mark;
	if (!ct_create(&t, tcp, fwd, &st, now + (tcp ? LIFETIME_TCP_SYN : LIFETIME_NONTCP), now,
		       &fwd_hit))
		return PROBE_FULL;
	skb->cb[0] = ct_touch(&t, &fwd_hit, 0, tcp_flags, now, 0);
	skb->cb[1] = st.src_sec_id;
	return PROBE_CREATED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
