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
 *   - IPv4 to another node's pod: in tunnel mode when cilium_ipcache_v2 gives
 *     the destination a tunnel endpoint, in native routing mode when the
 *     destination is inside the native routing CIDR (fp_config).
 *   - TCP/UDP to a service frontend (cilium_lb4_services_v2 master entry): the
 *     worker translates it (lb4_local);
 *   - TCP/UDP from a service backend's address and port (fp_lb_backend_addrs) to
 *     anything but a host address: replies of NodePort/ExternalIP connections that
 *     the worker must reverse-translate.
 * Everything else (pod->host, pod->world, ARP replies, IPv6, other ethertypes)
 * goes to the kernel untouched.
 *
 * On the underlay device (the node NIC) it steers:
 *   - UDP to the tunnel port (VXLAN, 8472) -- first fragments too, so the
 *     worker counts them;
 *   - IPv4 whose destination is a local endpoint (native routing ingress);
 *   - TCP/UDP to a NodePort or ExternalIP frontend (exact cilium_lb4_services_v2
 *     key, or the 0.0.0.0 NodePort surrogate when addressed to the node);
 *   - TCP/UDP from a service backend (fp_lb_backend_addrs): in native routing
 *     mode, replies of NodePort connections SNATed to this node arrive
 *     unencapsulated, addressed to the node (in tunnel mode they come as VXLAN).
 * Everything else -- SSH, ARP, the host's own traffic, anything unparseable --
 * goes to the kernel: the node must stay reachable whatever fastpath does.
 *
 * The XSKMAP is indexed by (device slot * FP_MAX_QUEUES + rx queue), so one
 * loaded program serves all devices. An empty slot falls back to XDP_PASS
 * through bpf_redirect_map's flags argument.
 *
 * Map layouts are Cilium 1.19's (see docs/maps.md), in fp_maps.h, shared with the tc
 * datapath (fp_tc.c) and checked against the Rust layouts (tests/layouts.rs).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fp_maps.h"

/* Counter slots of fp_xdp_stats; keep in sync with xdp-redirect/src/lib.rs. */
enum {
	FP_STAT_STEERED = 0,
	FP_STAT_PASS_NOT_ENDPOINT = 1,
	FP_STAT_PASS_ARP = 2,
	FP_STAT_PASS_OTHER_L3 = 3,
	FP_STAT_PASS_UNKNOWN_DEV = 4,
	FP_STAT_STEERED_REMOTE = 5,
	FP_STAT_STEERED_OVERLAY = 6,
	FP_STAT_PASS_UNDERLAY = 7,
	FP_STAT_STEERED_SERVICE = 8,
	/* A frame to steer whose device/rx queue has no socket in fp_xsks (an rx queue no
	 * worker serves, or a start-up/shutdown window): passed to the kernel, and counted
	 * here so it is never silent. */
	FP_STAT_PASSED_NO_SOCKET = 9,
	FP_STAT_MAX = 10,
};

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

static __always_inline struct endpoint_info *endpoint(__be32 daddr)
{
	struct endpoint_key k = {};

	k.ip4 = daddr;
	k.family = ENDPOINT_KEY_IPV4;
	return bpf_map_lookup_elem(&cilium_lxc, &k);
}

/* Is daddr a pod on another node that the workers forward (tunnel or native)? */
static __always_inline int remote_pod(__be32 daddr, const struct fp_config *cfg)
{
	struct ipcache_key k = {};
	struct remote_endpoint_info *info;

	if (cfg->mode == FP_MODE_NATIVE)
		return cfg->native_mask && (daddr & cfg->native_mask) == cfg->native_net;
	k.prefixlen = IPCACHE_FIXED_BITS + 32;
	k.family = IPCACHE_FAMILY_IPV4;
	k.ip4 = daddr;
	info = bpf_map_lookup_elem(&cilium_ipcache_v2, &k);
	return info &&
	       (info->flags & (IPCACHE_F_HAS_TUNNEL_EP | IPCACHE_F_SKIP_TUNNEL |
			       IPCACHE_F_IPV6_TUNNEL_EP)) == IPCACHE_F_HAS_TUNNEL_EP;
}

/* The L4 ports of a TCP/UDP first fragment (0 if none). */
static __always_inline int l4_ports(struct iphdr *ip, void *end, __be16 *sport, __be16 *dport)
{
	__be16 *p;

	if ((ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) ||
	    (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	p = (void *)ip + ip->ihl * 4;
	if ((void *)(p + 2) > end)
		return 0;
	*sport = p[0];
	*dport = p[1];
	return 1;
}

/* Is daddr:dport/proto a service frontend (master entry)? With `surrogate`, the
 * NodePort 0.0.0.0 entry matches too (traffic addressed to the node). ClusterIPs
 * reached from outside are steered too: the worker counts them (174). */
static __always_inline int frontend(__be32 daddr, __be16 dport, __u8 proto, int surrogate)
{
	struct lb4_key k = {};
	struct lb4_service *svc;

	k.address = daddr;
	k.dport = dport;
	k.proto = proto;
	svc = bpf_map_lookup_elem(&cilium_lb4_services_v2, &k);
	if (!svc && surrogate) {
		k.address = 0;
		svc = bpf_map_lookup_elem(&cilium_lb4_services_v2, &k);
	}
	return svc != 0;
}

static __always_inline int from_backend(__be32 saddr, __be16 sport, __u8 proto)
{
	struct fp_backend_addr k = {};

	k.address = saddr;
	k.port = sport;
	k.proto = proto;
	return bpf_map_lookup_elem(&fp_lb_backend_addrs, &k) != 0;
}

/* Into this device's socket for the frame's rx queue. An empty slot makes
 * bpf_redirect_map return its fallback (XDP_PASS): the frame goes to the kernel and is
 * counted as passed_no_socket instead of as steered. */
static __always_inline int redirect(struct xdp_md *ctx, const struct fp_dev *dev, __u32 stat)
{
	__u32 q = ctx->rx_queue_index;
	long r;

	if (q >= FP_MAX_QUEUES)
		return pass(FP_STAT_PASSED_NO_SOCKET);
	r = bpf_redirect_map(&fp_xsks, dev->slot * FP_MAX_QUEUES + q, XDP_PASS);
	if (r != XDP_REDIRECT)
		return pass(FP_STAT_PASSED_NO_SOCKET);
	count(stat);
	return XDP_REDIRECT;
}

/* The node NIC: only tunnel traffic and native-routed traffic for local pods. */
static __always_inline int steer_underlay(struct xdp_md *ctx, const struct fp_dev *dev,
					  const struct fp_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(FP_STAT_PASS_UNDERLAY);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return pass(FP_STAT_PASS_UNDERLAY);
	/* Non-first fragments carry no UDP header: nothing to match, kernel's. */
	if (ip->protocol == IPPROTO_UDP && !(ip->frag_off & bpf_htons(0x1fff))) {
		struct udphdr *udp = (void *)ip + ip->ihl * 4;

		if ((void *)(udp + 1) <= end && udp->dest == cfg->tunnel_port)
			return redirect(ctx, dev, FP_STAT_STEERED_OVERLAY);
	}
	{
		struct endpoint_info *ep = endpoint(ip->daddr);
		int host = ep && (ep->flags & ENDPOINT_F_HOST);
		__be16 sport, dport;

		if (ep && !host)
			return redirect(ctx, dev, FP_STAT_STEERED);
		if (l4_ports(ip, end, &sport, &dport)) {
			if (frontend(ip->daddr, dport, ip->protocol, host))
				return redirect(ctx, dev, FP_STAT_STEERED_SERVICE);
			if (cfg->mode == FP_MODE_NATIVE && host &&
			    from_backend(ip->saddr, sport, ip->protocol))
				return redirect(ctx, dev, FP_STAT_STEERED_SERVICE);
		}
	}
	return pass(FP_STAT_PASS_UNDERLAY);
}

SEC("xdp")
int fp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	struct fp_dev *dev = bpf_map_lookup_elem(&fp_devs, &ifindex);
	struct ethhdr *eth = data;
	struct fp_config *cfg;
	__u32 zero = 0;

	if (!dev)
		return pass(FP_STAT_PASS_UNKNOWN_DEV);
	cfg = bpf_map_lookup_elem(&fp_config, &zero);
	if (!cfg)
		return pass(FP_STAT_PASS_UNKNOWN_DEV);
	if (dev->role == FP_ROLE_UNDERLAY)
		return steer_underlay(ctx, dev, cfg);
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

		if ((void *)(ip + 1) > end)
			goto steer;
		struct endpoint_info *ep = endpoint(ip->daddr);
		int host = ep && (ep->flags & ENDPOINT_F_HOST);
		__be16 sport, dport;

		if (ep && !host)
			goto steer;
		if (remote_pod(ip->daddr, cfg))
			return redirect(ctx, dev, FP_STAT_STEERED_REMOTE);
		if (ip->ihl >= 5 && l4_ports(ip, end, &sport, &dport)) {
			if (frontend(ip->daddr, dport, ip->protocol, 0))
				return redirect(ctx, dev, FP_STAT_STEERED_SERVICE);
			if (!host && from_backend(ip->saddr, sport, ip->protocol))
				return redirect(ctx, dev, FP_STAT_STEERED_SERVICE);
		}
		return pass(FP_STAT_PASS_NOT_ENDPOINT);
	}

	return pass(FP_STAT_PASS_OTHER_L3);

steer:
	return redirect(ctx, dev, FP_STAT_STEERED);
}

/* Bench sink: counts and drops every frame but ARP, which it passes so that the device
 * still answers for its address (the receiver in bench/, a pod's eth0 or a node's NIC). */
SEC("xdp")
int fp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_ARP))
		return XDP_PASS;
	count(FP_STAT_STEERED);
	return XDP_DROP;
}

/* Bench sink, tc side: frames that reach the device without passing its XDP hook -- the
 * tc datapath hands frames to a pod with bpf_redirect_peer, straight into the pod side's
 * receive path -- are counted and dropped at its tc ingress, on the same counter. */
SEC("classifier")
int fp_sink_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_ARP))
		return 0; /* TC_ACT_OK */
	count(FP_STAT_STEERED);
	return 2; /* TC_ACT_SHOT */
}

/* Bench: in-kernel XDP forwarding to one local pod, the "in-kernel XDP redirect" row of
 * bench/: what an XDP program costs that only rewrites and redirects (TTL - 1 with the
 * header checksum fixed, both MACs rewritten, bpf_redirect to the pod's lxc) with no lookup,
 * no conntrack, no policy. Everything that is not IPv4 with TTL > 1 is passed. */
struct fp_kfwd_cfg {
	__u32 ifindex;
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_kfwd_cfg);
} fp_kfwd SEC(".maps");

SEC("xdp")
int fp_kfwd_prog(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct fp_kfwd_cfg *cfg;
	__u32 zero = 0, check;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ttl <= 1)
		return XDP_PASS;
	cfg = bpf_map_lookup_elem(&fp_kfwd, &zero);
	if (!cfg || !cfg->ifindex)
		return XDP_PASS;
	/* RFC 1624 incremental update, as the kernel's ip_decrease_ttl. */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	__builtin_memcpy(eth->h_dest, cfg->dmac, 6);
	__builtin_memcpy(eth->h_source, cfg->smac, 6);
	count(FP_STAT_STEERED);
	return bpf_redirect(cfg->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
