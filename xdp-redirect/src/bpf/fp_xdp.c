// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * fastpath XDP steering program.
 *
 * Attached to every device fastpath owns. It decides, per frame, whether the
 * userspace workers handle it (redirect into the AF_XDP socket registered for
 * this device and rx queue) or whether the kernel does (XDP_PASS).
 *
 * On pod devices (lxc*) it steers:
 *   - ARP requests, except gratuitous/DAD ones (the worker answers them with
 *     the lxc MAC, as bpf_lxc does);
 *   - IPv4 whose destination is a local endpoint in cilium_lxc (not a host
 *     entry);
 *   - frames it cannot parse (truncated Ethernet/IPv4): the worker counts them
 *     as drops with a reason instead of the kernel dropping them silently.
 * Everything else (pod->host, pod->world, ARP replies, IPv6, other ethertypes)
 * goes to the kernel untouched.
 *
 * The XSKMAP is indexed by (device slot * FP_MAX_QUEUES + rx queue), so one
 * loaded program serves all devices. An empty slot falls back to XDP_PASS
 * through bpf_redirect_map's flags argument.
 *
 * Map layouts are Cilium 1.19's (see docs/maps.md); the Rust side asserts
 * the same sizes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FP_MAX_QUEUES 64
#define FP_MAX_DEVS 256

#define ENDPOINT_F_HOST 1
#define ENDPOINT_KEY_IPV4 1

#define FP_ROLE_LXC 1

/* Counter slots of fp_xdp_stats; keep in sync with xdp-redirect/src/lib.rs. */
enum {
	FP_STAT_STEERED = 0,
	FP_STAT_PASS_NOT_ENDPOINT = 1,
	FP_STAT_PASS_ARP = 2,
	FP_STAT_PASS_OTHER_L3 = 3,
	FP_STAT_PASS_UNKNOWN_DEV = 4,
	FP_STAT_MAX = 8,
};

/* cilium_lxc key: struct endpoint_key (20 bytes). */
struct endpoint_key {
	__u32 ip4;
	__u32 ip6_rest[3];
	__u8 family;
	__u8 key;
	__u16 cluster_id;
};

/* cilium_lxc value: struct endpoint_info (48 bytes). */
struct endpoint_info {
	__u32 ifindex;
	__u16 unused;
	__u16 lxc_id;
	__u32 flags;
	__u32 pad0;
	__u64 mac;
	__u64 node_mac;
	__u32 sec_id;
	__u32 parent_ifindex;
	__u32 pad[2];
};

/* fastpath's own device table: which devices it owns and their XSKMAP slot. */
struct fp_dev {
	__u32 slot;
	__u32 role;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65535);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} cilium_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct fp_dev);
} fp_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FP_MAX_DEVS * FP_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} fp_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fp_xdp_stats SEC(".maps");

struct arp_fixed {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&fp_xdp_stats, &slot);

	if (v)
		*v += 1;
}

static __always_inline int pass(__u32 slot)
{
	count(slot);
	return XDP_PASS;
}

SEC("xdp")
int fp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	struct fp_dev *dev = bpf_map_lookup_elem(&fp_devs, &ifindex);
	struct ethhdr *eth = data;
	__u32 key;

	if (!dev)
		return pass(FP_STAT_PASS_UNKNOWN_DEV);
	if (dev->role != FP_ROLE_LXC)
		return pass(FP_STAT_PASS_OTHER_L3);
	if ((void *)(eth + 1) > end)
		goto steer;

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_fixed *arp = (void *)(eth + 1);

		if ((void *)(arp + 1) > end)
			goto steer;
		/* Replies, gratuitous announcements and DAD probes belong to the kernel. */
		if (arp->op != bpf_htons(1) || arp->sip == arp->tip || arp->sip == 0)
			return pass(FP_STAT_PASS_ARP);
		goto steer;
	}

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct endpoint_key k = {};
		struct endpoint_info *ep;

		if ((void *)(ip + 1) > end)
			goto steer;
		k.ip4 = ip->daddr;
		k.family = ENDPOINT_KEY_IPV4;
		ep = bpf_map_lookup_elem(&cilium_lxc, &k);
		if (ep && !(ep->flags & ENDPOINT_F_HOST))
			goto steer;
		return pass(FP_STAT_PASS_NOT_ENDPOINT);
	}

	return pass(FP_STAT_PASS_OTHER_L3);

steer:
	count(FP_STAT_STEERED);
	key = dev->slot * FP_MAX_QUEUES + ctx->rx_queue_index;
	return bpf_redirect_map(&fp_xsks, key, XDP_PASS);
}

/* Bench sink: counts and drops every frame (the receiver in bench/). */
SEC("xdp")
int fp_sink(struct xdp_md *ctx)
{
	count(FP_STAT_STEERED);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
