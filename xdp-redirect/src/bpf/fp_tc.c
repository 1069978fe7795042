// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * fastpath's tc (clsact) datapath: the workers' pipeline, in the kernel, over the same
 * maps -- for devices where XDP cannot be attached or is turned off (`--datapath tc`,
 * docs/tc.md). Attached at tc ingress:
 *
 *   cil_from_container  on a pod's lxc device: what the pod sends (stage/from_container.rs)
 *   cil_from_netdev     on the node NIC: VXLAN from other nodes (stage/from_netdev.rs,
 *                       stage/from_overlay.rs)
 *
 * and both end in the same two steps: local delivery with the receiver's ingress policy
 * (stage/to_container.rs) and VXLAN encapsulation to another node (stage/forward.rs).
 *
 * Everything it reads and writes is what the workers read and write: cilium_lxc,
 * cilium_ipcache_v2, the per-endpoint policy maps (fp_policy -> cilium_policy_v3_<id>),
 * cilium_lb4_reverse_nat, fastpath's next hops, and conntrack -- the very table the
 * workers use (fp_table.h, fp_ct.h) -- so a connection one datapath saw is known to the
 * other, and a device can move between them without breaking it. Built from the same map
 * header as the XDP program (fp_maps.h, with FP_PIN_SHARED: every map is opened by its
 * pin). Frames the workers would not see (the XDP program passes them to the kernel:
 * pod -> host or world, ARP replies, IPv6, other ethertypes) are passed to the kernel
 * here too (TC_ACT_OK), before any lookup.
 *
 * Every drop is counted in cilium_metrics with Cilium's reason code and direction, as the
 * workers count theirs; forwarded packets as reason 0.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/if_packet.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FP_PIN_SHARED
#include "fp_maps.h"
#include "fp_ct.h"

/* Cilium's drop reasons (bpf/lib/drop_reasons.h), as control/abi/src/drop.rs. */
#define DROP_INVALID_SMAC 130
#define DROP_INVALID_DMAC 131
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_FRAG_NEEDED 136
#define DROP_WRITE_ERROR 141
#define DROP_NO_TUNNEL_KEY 147
#define DROP_UNKNOWN_TARGET 150
#define DROP_UNROUTABLE 151
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_HOST_UNREACH 164
#define DROP_NAT_NO_MAPPING 167
#define DROP_NO_FIB 169
#define DROP_INVALID_IDENTITY 171
#define DROP_UNKNOWN_SENDER 172
#define DROP_POLICY_DENY 181
#define DROP_IS_CLUSTER_IP 174
#define DROP_INVALID_VNI 183
#define DROP_TTL_EXCEEDED 196

/* Metric directions (cilium_metrics). */
#define DIR_INGRESS 1
#define DIR_EGRESS 2

/* policy_key.egress */
#define POL_INGRESS 0
#define POL_EGRESS 1
#define PRECEDENCE_DENY 0xffffffffU

#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6

#define VXLAN_HLEN 8
#define VXLAN_FLAG_VNI 0x08
#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + VXLAN_HLEN + ETH_HLEN)

/* Counters other than drops, by slot of fp_tc_stats (xdp-redirect/src/lib.rs TC_STAT_NAMES). */
enum {
	TC_STAT_PASSED = 0,      /* handed to the kernel untouched */
	TC_STAT_DELIVERED = 1,   /* to a local pod */
	TC_STAT_ENCAPSULATED = 2,
	TC_STAT_DECAPSULATED = 3,
	TC_STAT_ARP_REPLIES = 4,
	TC_STAT_ICMP_ERRORS = 5, /* ICMP errors sent back (the originals count as drops) */
	TC_STAT_ROUTED = 6,      /* NodePort replies back to their clients */
	TC_STAT_MAX = 7,
};

/* cilium_metrics, Cilium's layout: per (reason, direction), packets and bytes per CPU.
 * Key: reason (0 forwarded, else the drop code), direction (1 ingress, 2 egress), then
 * Cilium's source line and file, which fastpath leaves 0. */
struct metrics_key {
	__u8 reason;
	__u8 dir;
	__u16 line;
	__u8 file;
	__u8 reserved[3];
};
_Static_assert(sizeof(struct metrics_key) == 8, "cilium_metrics key");

struct fp_metric {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct metrics_key);
	__type(value, struct fp_metric);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_metrics SEC(".maps");

/* Count one packet of `len` bytes on this CPU's value of `key` in a per-CPU hash of
 * {packets, bytes}, creating the entry; when another CPU created it first, count on the
 * entry it made. */
static __always_inline void percpu_count(void *map, const void *key, __u64 len)
{
	struct fp_metric *m = bpf_map_lookup_elem(map, key), one = { 1, len };

	if (!m && bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
		return;
	if (!m)
		m = bpf_map_lookup_elem(map, key);
	if (m) {
		m->packets += 1;
		m->bytes += len;
	}
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TC_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fp_tc_stats SEC(".maps");

/* cilium_policystats (Cilium 1.18+): per policy entry, the packets and bytes its verdict
 * decided, per CPU. Key: the endpoint, the entry's protocol/port prefix length, and the
 * entry's key (identity, direction, protocol and port masked to that prefix). */
struct policy_stats_key {
	__u16 endpoint_id;
	__u8 pad1;
	__u8 prefix_len;
	__u32 sec_label;
	__u8 egress;
	__u8 protocol;
	__be16 dport;
};
_Static_assert(sizeof(struct policy_stats_key) == 12, "cilium_policystats key");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct policy_stats_key);
	__type(value, struct fp_metric);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_policystats SEC(".maps");

/* Conntrack results too big for the 512-byte stack that a program and the functions it
 * calls share: one per CPU. tc programs run with bottom halves off and do not nest on a
 * CPU, and each user below is done with it before the next one starts (service, then
 * egress, then delivery). */
struct fp_scratch {
	struct ct_hit reply;
	struct ct_hit fwd;
	struct ct_state st;
	/* A service connection's entry: its key (lb4_local, nodeport_lb4); then, in
	 * nodeport_lb4, the SNATed connection's OUT key. */
	struct ct_req svc_q;
	/* nodeport_lb4's backend (off the stack the call chain shares). */
	struct lb4_backend be;
	/* Not cleared by scratch(): the state a NodePort delivery gives the IN entry, set by
	 * fp_nodeport just before fp_local_delivery; the frame's length on arrival; the
	 * frontend key cil_from_netdev found, which fp_nodeport serves (looked up once). */
	struct ct_state np;
	__u32 rx_len;
	struct lb4_key key;
};

/* One value of type `vtype` per CPU: room off the 512-byte stack. */
#define FP_PERCPU_ONE(name, vtype)                                                         \
	struct {                                                                           \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                   \
		__uint(max_entries, 1);                                                    \
		__type(key, __u32);                                                        \
		__type(value, vtype);                                                      \
	} name SEC(".maps")

FP_PERCPU_ONE(fp_tc_scratch, struct fp_scratch);

static __always_inline struct fp_scratch *scratch(void)
{
	__u32 zero = 0;
	struct fp_scratch *s = bpf_map_lookup_elem(&fp_tc_scratch, &zero);

	if (s)
		__builtin_memset(s, 0, offsetof(struct fp_scratch, np));
	return s;
}

/* The scratch value as the last user left it (a conntrack hit handed on). */
static __always_inline struct fp_scratch *scratch_keep(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&fp_tc_scratch, &zero);
}

/* What a parsed IPv4 packet carries (stage/flow.rs Ip). */
struct flow {
	__be32 src;
	__be32 dst;
	__u16 total_len;
	__u16 l4_off; /* from the start of the frame */
	__u8 proto;
	__u8 tcp_flags;
	__u8 tracked;
	__u8 later_fragment;
	__be16 sport; /* ICMP echo: the identifier as sport (request) or dport (reply) */
	__be16 dport;
	__u8 icmp_type;
	__u8 dont_frag;
	__u8 l4_hlen; /* the first fragment's TCP/UDP/ICMP header length, else 0 */
	__u8 pad;
	__be16 icmp_id;
	/* The service a from-container packet went through (lb4_local), host order; 0: none. */
	__u16 rev_nat;
	/* from-container, after the service step: the destination's identity (a local
	 * endpoint's, the ipcache's, or world) and, for another node's pod, its tunnel
	 * endpoint; looked up once for policy and forwarding. */
	__u32 dst_id;
	__be32 tunnel_ep;
	__u8 dst_local;
	__u8 pad3[3];
	/* The frontend a service DNAT replaced (stage/flow.rs orig_dst), 0: none. An ICMP
	 * error about the packet quotes it as the sender sent it. */
	__be32 orig_dst;
	__be16 orig_dport;
	__u16 pad4;
	/* nodeport_lb4: the client's identity, for the local backend's ingress policy. */
	__u32 src_id;
};

/* The node NIC's parsed packet, off the stack: the call chains from cil_from_netdev
 * (nodeport_lb4, then delivery, then conntrack) would otherwise pass the 512 bytes the
 * verifier allows them together. One per CPU, as the scratch value. */
FP_PERCPU_ONE(fp_tc_flow, struct flow);

static __always_inline struct flow *netdev_flow(void)
{
	__u32 zero = 0;
	struct flow *f = bpf_map_lookup_elem(&fp_tc_flow, &zero);

	if (f)
		__builtin_memset(f, 0, sizeof(*f));
	return f;
}

static __always_inline void stat(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&fp_tc_stats, &slot);

	if (v)
		*v += 1;
}

/* The frame's length as it arrived (what the workers count, whatever the program did to
 * it since: encapsulated, decapsulated, trimmed), recorded by each program on entry. */
static __always_inline __u32 rx_len(void)
{
	struct fp_scratch *s = scratch_keep();

	return s ? s->rx_len : 0;
}

static __always_inline void set_rx_len(struct __sk_buff *skb)
{
	struct fp_scratch *s = scratch_keep();

	if (s)
		s->rx_len = skb->len;
}

/* Count the packet in cilium_metrics: `reason` (0 forwarded) in direction `dir`. */
static __always_inline void metric(__u32 reason, __u32 dir)
{
	struct metrics_key k = {};

	k.reason = reason;
	k.dir = dir & 3;
	percpu_count(&cilium_metrics, &k, rx_len());
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason, __u32 dir)
{
	metric(reason, dir);
	return TC_ACT_SHOT;
}

static __always_inline int pass(void)
{
	stat(TC_STAT_PASSED);
	return TC_ACT_OK;
}

/* Is the MAC at `a` the one in the low six bytes (memory order) of `m`? */
static __always_inline int mac_is(const __u8 *a, __u64 m)
{
	const __u8 *b = (const __u8 *)&m;

	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline struct endpoint_info *endpoint(__be32 ip)
{
	struct endpoint_key k = {};

	k.ip4 = ip;
	k.family = ENDPOINT_KEY_IPV4;
	return bpf_map_lookup_elem(&cilium_lxc, &k);
}

static __always_inline struct remote_endpoint_info *ipcache(__be32 ip)
{
	struct ipcache_key k = {};

	k.prefixlen = IPCACHE_FIXED_BITS + 32;
	k.family = IPCACHE_FAMILY_IPV4;
	k.ip4 = ip;
	return bpf_map_lookup_elem(&cilium_ipcache_v2, &k);
}

/* The ipcache entry's IPv4 tunnel endpoint, 0 if it has none (tunnel_v4()). */
static __always_inline __be32 tunnel_v4(const struct remote_endpoint_info *i)
{
	if (!i || (i->flags & (IPCACHE_F_HAS_TUNNEL_EP | IPCACHE_F_SKIP_TUNNEL |
			       IPCACHE_F_IPV6_TUNNEL_EP)) != IPCACHE_F_HAS_TUNNEL_EP)
		return 0;
	return i->tunnel_endpoint[0];
}

/* One's complement add of two 32-bit partial sums. */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b);
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* Add the `len` bytes at `off` to `*sum` in whole chunks of `step` bytes (a constant: the
 * verifier needs bpf_csum_diff's size known), at most `max` chunks, advancing `*done`.
 * -1 if a chunk is not in the linear data. */
static __always_inline int csum_chunks(void *data, void *end, __u32 off, __u32 len, __u32 *done,
				       __u32 *sum, const __u32 step, const int max)
{
	for (int i = 0; i < max; i++) {
		__u8 *p = data + off + *done;
		__s64 s;

		if (*done + step > len)
			break;
		if ((void *)(p + step) > end)
			return -1;
		s = bpf_csum_diff(0, 0, (__be32 *)p, step, 0);
		if (s < 0)
			return -1;
		*sum = csum_add32(*sum, s);
		*done += step;
	}
	return 0;
}

/* The one's complement sum (unfolded) of the `len` bytes at `off`, added to `sum`: in
 * 64-byte chunks with bpf_csum_diff over the packet, then 4-byte ones, the last 0-3 bytes
 * by hand; at most CSUM_MAX bytes, which the caller has pulled into the linear data. -1 if
 * it cannot. */
#define CSUM_MAX 2048
static __always_inline __s64 csum_range(struct __sk_buff *skb, __u32 off, __u32 len, __u32 sum)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 done = 0;

	if (len > CSUM_MAX)
		return -1;
	if (csum_chunks(data, end, off, len, &done, &sum, 64, CSUM_MAX / 64) ||
	    csum_chunks(data, end, off, len, &done, &sum, 4, 16))
		return -1;
	{
		__u8 *p = data + off + done;
		__u8 tail[4] = {};
		__u32 left = len - done;

		if (left >= 1) {
			if ((void *)(p + 1) > end)
				return -1;
			tail[0] = p[0];
		}
		if (left >= 2) {
			if ((void *)(p + 2) > end)
				return -1;
			tail[1] = p[1];
		}
		if (left >= 3) {
			if ((void *)(p + 3) > end)
				return -1;
			tail[2] = p[2];
		}
		sum = csum_add32(sum, *(__u32 *)tail);
	}
	return sum;
}

/* check_ipv4 (stage/flow.rs): a whole, checksummed IPv4 header at `off`, and its L4 header
 * when it is the first fragment. Returns 0 or a drop reason. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + off;
	__u32 ihl, l4;
	__s64 sum;

	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return DROP_INVALID;
	ihl = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < ihl || off + bpf_ntohs(ip->tot_len) > skb->len)
		return DROP_INVALID;
	if ((void *)ip + 60 <= end) {
		sum = bpf_csum_diff(0, 0, (__be32 *)ip, ihl & 60, 0);
	} else {
		if (ihl != 20)
			return DROP_INVALID; /* options reaching past the linear data */
		sum = bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0);
	}
	if (sum < 0 || csum_fold(sum) != 0)
		return DROP_INVALID;
	f->src = ip->saddr;
	f->dst = ip->daddr;
	f->total_len = bpf_ntohs(ip->tot_len);
	f->proto = ip->protocol;
	f->later_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
	f->dont_frag = (ip->frag_off & bpf_htons(0x4000)) != 0;
	f->l4_hlen = 0;
	f->tracked = 0;
	f->tcp_flags = 0;
	f->sport = 0;
	f->dport = 0;
	f->icmp_type = 0;
	f->icmp_id = 0;
	l4 = off + (ihl & 60);
	f->l4_off = l4;
	if (f->later_fragment)
		return 0;
	if (f->total_len < ihl)
		return DROP_INVALID;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = data + l4;

		if ((void *)(th + 1) > end || f->total_len - ihl < sizeof(*th) || th->doff < 5 ||
		    f->total_len - ihl < th->doff * 4)
			return DROP_CT_INVALID_HDR;
		f->sport = th->source;
		f->dport = th->dest;
		f->tcp_flags = ((__u8 *)th)[13];
		f->l4_hlen = th->doff * 4;
		f->tracked = 1;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = data + l4;

		if ((void *)(uh + 1) > end || f->total_len - ihl < sizeof(*uh))
			return DROP_CT_INVALID_HDR;
		f->sport = uh->source;
		f->dport = uh->dest;
		f->l4_hlen = sizeof(*uh);
		f->tracked = 1;
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *ih = data + l4;

		if ((void *)(ih + 1) > end || f->total_len - ihl < sizeof(*ih))
			return DROP_CT_INVALID_HDR;
		f->icmp_type = ih->type;
		f->icmp_id = ih->un.echo.id;
		f->l4_hlen = sizeof(*ih);
		if (ih->type == ICMP_ECHO) {
			f->sport = ih->un.echo.id;
			f->tracked = 1;
		} else if (ih->type == ICMP_ECHOREPLY) {
			f->dport = ih->un.echo.id;
			f->tracked = 1;
		}
	}
	return 0;
}

/* Ip::policy_port: the port (ICMP: type) the policy judges, host order. */
static __always_inline __be16 policy_port(const struct flow *f)
{
	if (f->later_fragment)
		return 0;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP)
		return f->dport;
	if (f->proto == IPPROTO_ICMP)
		return bpf_htons(f->icmp_type);
	return 0;
}

static __always_inline struct policy_entry *policy_lpm(void *inner, __u32 id, __u8 dir,
						       __u8 proto, __be16 port)
{
	struct policy_key k = {};

	k.prefixlen = 64;
	k.sec_label = id;
	k.egress = dir;
	k.protocol = proto;
	k.dport = port;
	return bpf_map_lookup_elem(inner, &k);
}

/* Cilium 1.20's policy identity aggregation (control/abi/src/identity.rs
 * policy_aggregate): the identity of the second policy lookup -- world's (2) for the
 * world's identities and node-local CIDR identities, remote-node's (6) for remote nodes',
 * else 0 (any identity). */
#define ID_SCOPE_MASK 0xff000000U
#define ID_SCOPE_LOCAL_CIDR (1U << 24)
#define ID_SCOPE_REMOTE_NODE (2U << 24)
static __always_inline __u32 policy_aggregate(__u32 id)
{
	if (id == IDENTITY_WORLD || id == 9 || id == 10 ||
	    (id & ID_SCOPE_MASK) == ID_SCOPE_LOCAL_CIDR)
		return IDENTITY_WORLD;
	if (id == IDENTITY_REMOTE_NODE || (id & ID_SCOPE_MASK) == ID_SCOPE_REMOTE_NODE)
		return IDENTITY_REMOTE_NODE;
	return 0;
}

/* Cilium 1.20's verdict (control/tables/src/policy.rs EndpointPolicy::verdict) for
 * endpoint `ep_id`, remote identity `id`, direction `dir`: 0 = allowed, or the drop reason
 * (133 nothing allows, 181 a deny entry, 157 a later fragment nothing allows). An endpoint
 * without a map has no policy computed: allowed. */
__attribute__((noinline)) int fp_policy_verdict(__u32 ep_id, __u32 id, __u32 port, __u32 what,
					     __u32 len)
{
	__u32 key = ep_id & 0xffff;
	__u8 dir = what & 1, proto = what >> 8;
	int later_fragment = (what >> 16) & 1;
	void *inner = bpf_map_lookup_elem(&fp_policy, &key);
	struct policy_entry *e, *w = 0, *c;
	__u32 agg = policy_aggregate(id);

	if (!inner)
		return 0;
	e = policy_lpm(inner, id, dir, proto, port);
	if (e && e->precedence == PRECEDENCE_DENY) {
		c = e;
	} else {
		/* Cilium 1.20: the second lookup is under the identity's aggregate. */
		if (id != agg)
			w = policy_lpm(inner, agg, dir, proto, port);
		if (e && w)
			c = (w->precedence > e->precedence ||
			     (w->precedence == e->precedence && (w->flags >> 3) > (e->flags >> 3)))
				    ? w
				    : e;
		else
			c = e ? e : w;
	}
	if (!c)
		return later_fragment ? DROP_FRAG_NOSUPPORT : DROP_POLICY;
	/* The entry that decided counts the packet (cilium_policystats). */
	{
		struct policy_stats_key sk = {};
		__u8 plen = c->flags >> 3;

		sk.endpoint_id = key;
		sk.prefix_len = plen;
		sk.sec_label = c == w ? agg : id;
		sk.egress = dir;
		if (plen >= 8)
			sk.protocol = proto;
		if (plen >= 24)
			sk.dport = port;
		else if (plen > 8)
			sk.dport = bpf_htons(bpf_ntohs(port) & (0xffff << (24 - plen)));
		percpu_count(&cilium_policystats, &sk, len);
	}
	if (c->flags & 1)
		return DROP_POLICY_DENY;
	return 0;
}

static __always_inline int policy_verdict(__u16 ep_id, __u8 dir, __u32 id, const struct flow *f)
{
	/* Direction, protocol and the later-fragment bit in one argument (five at most); the
	 * datagram's length for the entry's byte count (as the workers count it). */
	return fp_policy_verdict(ep_id, id, policy_port(f),
				 (dir & 1) | (__u32)f->proto << 8 | (__u32)f->later_fragment << 16,
				 f->total_len);
}

static __always_inline __u32 new_lifetime(const struct flow *f, __u32 now)
{
	return now + (f->proto == IPPROTO_TCP ? LIFETIME_TCP_SYN : LIFETIME_NONTCP);
}

/* ct_policy_forward without the cached verdict (the tc programs always look policy up):
 * the policy of endpoint `ep_id` in `dir` for identity `remote`, then the connection's
 * entry `key` created (with `st`) or refreshed. 0 or a drop reason. */
static __always_inline int ct_policy_forward(const struct ct_req *q, struct ct_hit *hit,
					     int has_hit, const struct ct_state *st, __u16 ep_id,
					     __u8 dir, __u32 remote, const struct flow *f)
{
	int r = policy_verdict(ep_id, dir, remote, f);

	if (r)
		return r;
	if (!f->tracked)
		return 0;
	if (has_hit) {
		fp_ct_touch(hit, 0, f->tcp_flags, q->now, 0);
		return 0;
	}
	/* A bucket that cannot take it: the workers carry on too, the connection untracked. */
	if (fp_ct_new(q, st, new_lifetime(f, q->now), hit) == 1)
		fp_ct_touch(hit, 0, f->tcp_flags, q->now, 0);
	return 0;
}

/* Rewrite one side of the packet -- the source (`dst` 0: reverse NAT of a service reply)
 * or the destination (`dst` 1: DNAT to a backend) -- to `addr`:`port`, fixing the IPv4 and
 * L4 checksums (wire/nat.rs rewrite). A later fragment has no ports to rewrite. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct flow *f, int dst, __be32 addr,
				       __be16 port)
{
	__be32 old_addr = dst ? f->dst : f->src;
	__be16 old_port = dst ? f->dport : f->sport;
	__u32 csum_off = 0, port_off = f->l4_off + (dst ? 2 : 0);
	__u32 addr_off = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u64 flags = BPF_F_PSEUDO_HDR | sizeof(addr);

	if (f->proto == IPPROTO_TCP)
		csum_off = f->l4_off + offsetof(struct tcphdr, check);
	else if (f->proto == IPPROTO_UDP) {
		csum_off = f->l4_off + offsetof(struct udphdr, check);
		flags |= BPF_F_MARK_MANGLED_0;
	}
	if (csum_off && !f->later_fragment) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, addr, flags) ||
		    bpf_l4_csum_replace(skb, csum_off, old_port, port,
					(flags & BPF_F_MARK_MANGLED_0) | sizeof(port)) ||
		    bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0))
			return -1;
	}
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, addr,
				sizeof(addr)) ||
	    bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0))
		return -1;
	if (dst) {
		f->dst = addr;
		f->dport = port;
	} else {
		f->src = addr;
		f->sport = port;
	}
	return 0;
}

/* l3_forward (stage/forward.rs): TTL - 1 with the incremental checksum (196 when it was
 * 1 or 0), the next hop's MACs. 0 or a drop reason. */
static __always_inline int l3_forward(struct __sk_buff *skb, const __u8 *dmac, const __u8 *smac)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 check;

	if ((void *)(ip + 1) > end)
		return DROP_INVALID;
	if (ip->ttl <= 1)
		return DROP_TTL_EXCEEDED;
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	return 0;
}

/* RFC 1812 4.3.2.3: an ICMP error carries as much of the original as fits 576 bytes. */
#define ICMP_ERROR_MAX 576
#define ICMP_QUOTE_MAX (ICMP_ERROR_MAX - 20 - 8)
#define ICMP_PORT_UNREACH_KIND (ICMP_DEST_UNREACH | ICMP_PORT_UNREACH << 8)
#define ICMP_FRAG_NEEDED_KIND (ICMP_DEST_UNREACH | ICMP_FRAG_NEEDED << 8)

/* icmp_error (stage/icmp.rs, wire/icmp.rs make_error): turn the frame into an ICMP error
 * about it -- `kind` = type | code << 8, `info` the rest-of-header word (the next-hop MTU
 * of fragmentation-needed) -- from `from` to the packet's sender, quoting its IPv4 header
 * and as much payload as fits 576 bytes (as the sender sent it: a service DNAT is undone
 * first), and send it back out of the device it came in on, to the MAC it came from. The
 * caller counts the original as dropped. Returns the tc verdict. */
__attribute__((noinline)) int fp_icmp_error(struct __sk_buff *skb, struct flow *f, __be32 from,
					    __u32 kind, __u32 info)
{
	struct {
		struct iphdr ip;
		struct icmphdr ic;
	} h = {};
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 quote, icmp_off = ETH_HLEN + sizeof(struct iphdr);
	void *data, *end;
	struct ethhdr *eth;
	__be32 to;
	__s64 sum;

	if (!f)
		return TC_ACT_SHOT;
	if (f->orig_dst && nat_rewrite(skb, f, 1, f->orig_dst, f->orig_dport))
		return TC_ACT_SHOT;
	to = f->src;
	quote = f->total_len < ICMP_QUOTE_MAX ? f->total_len : ICMP_QUOTE_MAX;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);
	/* The quote stays where it is; the new IPv4 and ICMP headers go in front of it. */
	if (bpf_skb_change_tail(skb, ETH_HLEN + quote, 0) ||
	    bpf_skb_adjust_room(skb, sizeof(h), BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(sizeof(h) + quote);
	h.ip.frag_off = bpf_htons(0x4000);
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_ICMP;
	h.ip.saddr = from;
	h.ip.daddr = to;
	sum = bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	h.ip.check = csum_fold(sum);
	h.ic.type = kind & 0xff;
	h.ic.code = kind >> 8;
	h.ic.un.gateway = bpf_htonl(info);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) ||
	    bpf_skb_pull_data(skb, icmp_off + sizeof(h.ic) + quote))
		return TC_ACT_SHOT;
	sum = csum_range(skb, icmp_off, sizeof(h.ic) + quote, 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	h.ic.checksum = csum_fold(sum);
	if (bpf_skb_store_bytes(skb, icmp_off + offsetof(struct icmphdr, checksum), &h.ic.checksum,
				sizeof(h.ic.checksum), 0) ||
	    bpf_skb_store_bytes(skb, 0, dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	stat(TC_STAT_ICMP_ERRORS);
	return bpf_redirect(skb->ifindex, 0);
}

/* local_delivery (stage/to_container.rs): to the pod `ep` from identity `src_id`. A reply
 * of a connection the pod made skips policy (and is reverse-NATed if it went through a
 * service); anything else must pass the pod's ingress policy, and a new connection gets an
 * IN entry. Then TTL - 1, the pod's MACs, and into the pod. */
#define DELIVER_FROM_POD 1
#define DELIVER_NODEPORT 2
__attribute__((noinline)) int fp_local_delivery(struct __sk_buff *skb, struct flow *f,
						__u32 src_id, __u32 how)
{
	__u32 from_pod = how & DELIVER_FROM_POD;
	struct endpoint_info *ep;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 ifindex, now = ct_now();
	__u16 lxc_id;
	int r;

	if (!f)
		return TC_ACT_SHOT;
	ep = endpoint(f->dst);
	if (!ep)
		return drop(skb, DROP_UNROUTABLE, DIR_INGRESS);
	if (ep->flags & ENDPOINT_F_HOST)
		return drop(skb, DROP_HOST_UNREACH, from_pod ? DIR_EGRESS : DIR_INGRESS);
	ifindex = ep->ifindex;
	lxc_id = ep->lxc_id;
	__builtin_memcpy(dmac, &ep->mac, ETH_ALEN);
	__builtin_memcpy(smac, &ep->node_mac, ETH_ALEN);
	if (f->tracked) {
		int tcp = f->proto == IPPROTO_TCP, found;
		struct fp_scratch *sc = scratch();
		struct ct_req q;

		if (!sc)
			return drop(skb, DROP_CT_CREATE_FAILED, DIR_INGRESS);
		q = ct_req(tcp, ct_connection(f->src, f->dst, f->sport, f->dport, f->proto, TUPLE_F_IN),
			   now);
		found = fp_ct_flow(&q, &sc->reply, &sc->fwd);
		if (found < 0)
			return drop(skb, DROP_CT_CREATE_FAILED, DIR_INGRESS);
		if (found & 1) {
			fp_ct_touch(&sc->reply, 1, f->tcp_flags, now, 0);
			if (sc->reply.st.rev_nat) {
				__be16 id = bpf_htons(sc->reply.st.rev_nat);
				struct lb4_reverse_nat *fe =
					bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &id);

				if (fe && nat_rewrite(skb, f, 0, fe->address, fe->port))
					return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
			}
		} else {
			/* A NodePort connection's IN entry says where the replies go. */
			if (how & DELIVER_NODEPORT)
				sc->st = sc->np;
			sc->st.src_sec_id = src_id;
			r = ct_policy_forward(&q, &sc->fwd, found & 2, &sc->st, lxc_id, POL_INGRESS,
					      src_id, f);
			if (r)
				return drop(skb, r, DIR_INGRESS);
		}
	} else {
		r = policy_verdict(lxc_id, POL_INGRESS, src_id, f);
		if (r)
			return drop(skb, r, DIR_INGRESS);
	}
	/* What follows the datagram (Ethernet padding) is not delivered (forward.rs). */
	if (skb->len > ETH_HLEN + f->total_len &&
	    bpf_skb_change_tail(skb, ETH_HLEN + f->total_len, 0))
		return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
	r = l3_forward(skb, dmac, smac);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	/* A pod's packet to a pod of this node is counted out of one (egress) and into the
	 * other (ingress), as the workers count it. */
	if (from_pod)
		metric(0, DIR_EGRESS);
	/* What came in through the NIC and went into a pod is counted as routed in by the
	 * workers; here as delivered. */
	metric(0, DIR_INGRESS);
	stat(TC_STAT_DELIVERED);
	/* Straight into the pod's namespace: the lxc's peer receives it (bpf_lxc's
	 * redirect_ep with the peer flag). */
	return bpf_redirect_peer(ifindex, 0);
}

/* lb4_local's answer for a service without backends: ICMP port unreachable from the
 * frontend (Cilium's service-no-backend-response: reject), counted as drop 158. */
#define FP_REJECT 0x1000
/* fp_egress: the packet is the reply of a NodePort connection (stage/nodeport.rs). */
#define FP_NODEPORT_REPLY 0x1001
/* fp_nodeport: deliver to the local backend (f->src_id the client's identity), or
 * encapsulate to the remote backend's node (f->tunnel_ep). The caller does either, so
 * that the deepest call chain stays within the verifier's stack limit. */
#define FP_DELIVER 0x1002
#define FP_ENCAP 0x1003
/* fp_nodeport, native routing: route to the remote backend's node (fp_route). */
#define FP_ROUTE 0x1004

#define SVC_FLAG_AFFINITY 0x10
#define SVC_FLAG_ROUTABLE 0x40
#define ALG_RANDOM 1
#define ALG_MAGLEV 2
/* Entries in front of a Maglev table's slots in its inner map: M, then the seed. */
#define MAGLEV_HEADER 2
#define BE_STATE_ACTIVE 0

/* cilium_lb4_affinity: fastpath's shared table (fp_table.h) of (client, service) -> the
 * backend ID, lifetime = last use + the service's timeout; the workers use the same one. */
FP_SHARED_TABLE(cilium_lb4_affinity);

/* The Linux/Cilium jhash_3words (maglev.rs). */
static __always_inline __u32 rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	__u32 iv = initval + 0xdeadbeef + (3 << 2);

	a += iv;
	b += iv;
	c += iv;
	c ^= b;
	c -= rol32(b, 14);
	a ^= c;
	a -= rol32(c, 11);
	b ^= a;
	b -= rol32(a, 25);
	c ^= b;
	c -= rol32(b, 16);
	a ^= c;
	a -= rol32(c, 4);
	b ^= a;
	b -= rol32(a, 14);
	c ^= b;
	c -= rol32(b, 24);
	return c;
}

/* The affinity entry of client/service key (k0, k1) (lb.rs affinity_words: the client's
 * address, then the service ID in network order): 1 with *id when it is live and its
 * backend still offered (cilium_lb_affinity_match), its lifetime pushed to now + timeout;
 * 0 otherwise. Functions of their own: the table code is too big for the stack of the
 * call chains it sits in. */
__attribute__((noinline)) int fp_affinity_get(__u64 k0, __u64 k1, __u32 now, __u32 timeout,
					      __u32 *id)
{
	struct lb_affinity_match mk = {};
	struct fpt_ref ref = {};
	struct fpt t = {};
	__u64 v[1] = {};
	__u32 life = 0;

	if (!id || fpt_open(&t, &cilium_lb4_affinity, 1))
		return 0;
	fpt_lookup(&t, fpt_mix2(k0, k1), k0, k1, &ref);
	if (!ref.found || !fpt_read(&t, &ref, v, 1, &life) || fpt_expired(life, now))
		return 0;
	mk.backend_id = v[0];
	mk.rev_nat_id = (__u16)k1;
	if (!bpf_map_lookup_elem(&cilium_lb_affinity_match, &mk))
		return 0;
	fpt_set_lifetime(&t, &ref, 1, now + timeout);
	*id = v[0];
	return 1;
}

/* Record backend `id` for client/service key (k0, k1) until `lifetime`. */
__attribute__((noinline)) int fp_affinity_put(__u64 k0, __u64 k1, __u32 id, __u32 lifetime,
					      __u32 now)
{
	struct fpt_ref ref = {};
	struct fpt t = {};
	__u64 v[1] = { id };

	if (fpt_open(&t, &cilium_lb4_affinity, 1))
		return 0;
	return fpt_insert(&t, fpt_mix2(k0, k1), k0, k1, v, 1, 1, lifetime, now, &ref);
}

/* select_backend (stage/lb.rs): the backend for a new connection to `m` -- session
 * affinity first (fp_affinity_get), then the service's algorithm: Maglev (the flow's slot
 * of the service's table, hash_from_tuple_v4 over the source address and the ports, the
 * destination deliberately left out so every node and VIP agrees) or a random slot. An
 * affinity service records the choice. 0 with *id, or 158. */
static __always_inline int select_backend(const struct flow *f, const struct lb4_key *key,
					  const struct lb4_service *m, __u32 now, __u32 *id)
{
	__u32 zero = 0, alg = m->backend_id >> 24, timeout = m->backend_id & 0xffffff;
	struct fp_lb_config *lb = bpf_map_lookup_elem(&fp_lb_config, &zero);
	int aff = m->flags & SVC_FLAG_AFFINITY;
	__u64 k0 = (__u32)f->src, k1 = (__u16)m->rev_nat_index;

	if (!lb)
		return DROP_NO_SERVICE;
	if (aff && fp_affinity_get(k0, k1, now, timeout, id))
		return 0;
	if (!alg)
		alg = lb->default_alg;
	if (alg == ALG_MAGLEV) {
		__be16 rev = m->rev_nat_index;
		void *table = bpf_map_lookup_elem(&cilium_lb4_maglev, &rev);
		__u32 slot, *p;

		__u32 m_at = 0, seed_at = 1, *m, *seed;

		/* The table's own size M and seed (entries 0 and 1), then its slots. */
		m = table ? bpf_map_lookup_elem(table, &m_at) : 0;
		seed = table ? bpf_map_lookup_elem(table, &seed_at) : 0;
		if (!m || !seed || !*m)
			return DROP_NO_SERVICE;
		slot = jhash_3words(f->src, (__u32)f->sport << 16 | f->dport, f->proto, *seed) %
			       *m +
		       MAGLEV_HEADER;
		p = bpf_map_lookup_elem(table, &slot);
		if (!p)
			return DROP_NO_SERVICE;
		*id = *p;
	} else {
		struct lb4_key sk = *key;
		struct lb4_service *e;

		if (!m->count)
			return DROP_NO_SERVICE;
		sk.backend_slot = bpf_get_prandom_u32() % m->count + 1;
		e = bpf_map_lookup_elem(&cilium_lb4_services_v2, &sk);
		if (!e)
			return DROP_NO_SERVICE;
		*id = e->backend_id;
	}
	if (aff)
		fp_affinity_put(k0, k1, *id, now + timeout, now);
	return 0;
}

/* svc_backend (stage/lb.rs): the backend of a service connection to frontend `key`/`m`
 * -- the one its service entry pins, or, for a new connection (or a new SYN on a closed
 * one, or towards a backend going away), a random slot of the service, recorded in a new
 * service entry (select_backend). On success *out is the backend, sc->st the service
 * entry's state (its nat_port: a NodePort connection's SNAT port, 0 until one is chosen)
 * and sc->svc_q its key. Returns 0 or a drop reason (158). */
static __always_inline int svc_backend(struct fp_scratch *sc, const struct flow *f,
				       const struct lb4_key *key, const struct lb4_service *m,
				       __u32 src_id, __u32 now, struct lb4_backend *out)
{
	struct lb4_backend *be = 0;
	int tcp = f->proto == IPPROTO_TCP, found;
	__u16 rev = bpf_ntohs(m->rev_nat_index);
	__u32 id;

	/* CtTuple4::service: daddr = frontend, saddr = client, dport = client port, sport =
	 * frontend port. */
	sc->svc_q = ct_req(tcp, ct_connection(f->dst, f->src, f->dport, f->sport, f->proto,
					      TUPLE_F_SERVICE),
			   now);
	found = fp_ct_get(&sc->svc_q, &sc->fwd);
	if (found < 0)
		return DROP_CT_CREATE_FAILED;
	if (found) {
		id = sc->fwd.st.backend_id;
		be = bpf_map_lookup_elem(&cilium_lb4_backends_v3, &id);
		if (be) {
			int new_syn = tcp && (f->tcp_flags & (FP_TCP_SYN | 0x10)) == FP_TCP_SYN;
			int closing = (sc->fwd.st.flags & (CT_RX_CLOSING | CT_TX_CLOSING)) ==
				      (CT_RX_CLOSING | CT_TX_CLOSING);

			if (new_syn && (closing || be->flags != BE_STATE_ACTIVE)) {
				be = 0;
			} else {
				fp_ct_touch(&sc->fwd, 0, f->tcp_flags, now, 1);
				sc->st = sc->fwd.st;
			}
		}
	}
	if (!be) {
		int r = select_backend(f, key, m, now, &id);

		if (r)
			return r;
		be = bpf_map_lookup_elem(&cilium_lb4_backends_v3, &id);
		if (!be)
			return DROP_NO_SERVICE;
		__builtin_memset(&sc->st, 0, sizeof(sc->st));
		sc->st.backend_id = id;
		sc->st.rev_nat = rev;
		sc->st.src_sec_id = src_id;
		if (fp_ct_new(&sc->svc_q, &sc->st, new_lifetime(f, now), &sc->fwd) == 1)
			fp_ct_touch(&sc->fwd, 0, f->tcp_flags, now, 1);
	}
	*out = *be;
	return 0;
}

/* DNAT to backend `be`, remembering the frontend for an ICMP error's quote. */
static __always_inline int dnat(struct __sk_buff *skb, struct flow *f, const struct lb4_backend *be)
{
	f->orig_dst = f->dst;
	f->orig_dport = f->dport;
	return nat_rewrite(skb, f, 1, be->address, be->port);
}

/* lb4_local (stage/lb.rs): a pod's packet to a service frontend `key`/`m`: its backend,
 * then DNAT. Returns 0 with f->rev_nat set (the service ID the OUT entry records for the
 * reverse translation), FP_REJECT for a service without backends, or a drop reason. */
static __always_inline int lb4_local(struct __sk_buff *skb, struct flow *f, struct lb4_key *key,
				     struct lb4_service *m, __u32 src_id, __u32 now)
{
	struct fp_scratch *sc = scratch();
	struct lb4_backend be;
	int r;

	if (!sc)
		return DROP_CT_CREATE_FAILED;
	if (!m->count)
		return FP_REJECT;
	r = svc_backend(sc, f, key, m, src_id, now, &be);
	if (r)
		return r;
	if (dnat(skb, f, &be))
		return DROP_WRITE_ERROR;
	f->rev_nat = bpf_ntohs(m->rev_nat_index);
	return 0;
}

/* Is the packet longer than `mtu` (IPv4 bytes)? A GSO packet (a pod with TSO on) is
 * judged by the segments it will be cut into: IPv4 and L4 headers plus gso_size. */
static __always_inline int too_big(struct __sk_buff *skb, const struct flow *f, __u32 mtu)
{
	__u32 len = f->total_len;

	if (skb->gso_size)
		len = f->l4_off - ETH_HLEN + f->l4_hlen + skb->gso_size;
	return len > mtu;
}

/* vxlan::flow_hash: the inner flow's hash that picks the outer UDP source port. */
static __always_inline __u32 flow_hash(const struct flow *f)
{
	__u64 a = bpf_ntohl(f->src), b = bpf_ntohl(f->dst), h, x;
	__u32 ports = 0;

	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP)
		ports = (__u32)bpf_ntohs(f->sport) << 16 | bpf_ntohs(f->dport);
	else if (f->proto == IPPROTO_ICMP)
		ports = bpf_ntohs(f->icmp_id);
	x = (__u64)f->proto << 32 | ports;
	h = (a << 32 | b) ^ (x << 17 | x >> 47);
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
}

/* The outer headers (vxlan::emit) for `encap`. */
struct outer {
	struct iphdr ip;
	struct udphdr udp;
	__u8 vx[VXLAN_HLEN];
};
_Static_assert(sizeof(struct outer) == 36, "outer IPv4 + UDP + VXLAN");

/* encap (stage/forward.rs): wrap the frame in IPv4/UDP/VXLAN to `tunnel_ep`, VNI = the
 * sender's identity (the host goes out as remote-node), the inner MACs as the workers set
 * them, the outer MACs and device from the next-hop table the control plane keeps in step
 * with the kernel's neighbours; then out of the node NIC. */
__attribute__((noinline)) int fp_encap(struct __sk_buff *skb, const struct flow *f, __u32 tunnel_ep,
				       __u32 src_id, __u64 lxc_mac)
{
	/* A pod's packet (lxc_mac set), else NodePort traffic from outside. */
	const __u32 dir = lxc_mac ? DIR_EGRESS : DIR_INGRESS;
	struct fp_nexthop *nh = bpf_map_lookup_elem(&fp_nexthops, &tunnel_ep);
	__u32 zero = 0, vni, inner_len;
	struct fp_config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
	struct outer o = {};
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 ifindex;
	void *data, *end;
	struct ethhdr *eth;
	__u16 sport;
	__s64 sum;

	if (!cfg || !f)
		return drop(skb, DROP_UNROUTABLE, dir);
	if (!nh || !nh->ifindex)
		return drop(skb, DROP_NO_FIB, dir);
	if (too_big(skb, f, cfg->underlay_mtu - ENCAP_LEN)) {
		/* A pod's DF packet learns the path MTU from the gateway; anything else is a
		 * counted drop (stage/icmp.rs too_big). */
		metric(DROP_FRAG_NEEDED, dir);
		if (lxc_mac && f->dont_frag)
			return fp_icmp_error(skb, (struct flow *)f, cfg->router_ip,
					     ICMP_FRAG_NEEDED_KIND, cfg->underlay_mtu - ENCAP_LEN);
		return TC_ACT_SHOT;
	}
	vni = src_id == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : src_id;
	ifindex = nh->ifindex;
	__builtin_memcpy(dmac, nh->dst_mac, ETH_ALEN);
	__builtin_memcpy(smac, nh->src_mac, ETH_ALEN);
	/* The inner frame is exactly header + datagram (padding stripped). */
	inner_len = ETH_HLEN + f->total_len;
	if (skb->len > inner_len && bpf_skb_change_tail(skb, inner_len, 0))
		return drop(skb, DROP_WRITE_ERROR, dir);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return drop(skb, DROP_INVALID, dir);
	if (nh->flags & FP_NH_INNER_MAC) {
		__builtin_memcpy(eth->h_dest, nh->inner_dst_mac, ETH_ALEN);
		if (lxc_mac)
			__builtin_memcpy(eth->h_source, &lxc_mac, ETH_ALEN);
		else
			__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	}
	sport = 32768 + (__u16)(((__u64)flow_hash(f) * (61000 - 32768)) >> 32);
	o.ip.version = 4;
	o.ip.ihl = 5;
	o.ip.tot_len = bpf_htons(sizeof(o) + inner_len);
	o.ip.id = bpf_htons((__u16)bpf_get_prandom_u32());
	o.ip.ttl = 64;
	o.ip.protocol = IPPROTO_UDP;
	o.ip.saddr = cfg->node_ip;
	o.ip.daddr = tunnel_ep;
	sum = bpf_csum_diff(0, 0, (__be32 *)&o.ip, sizeof(o.ip), 0);
	o.ip.check = csum_fold(sum);
	o.udp.source = bpf_htons(sport);
	o.udp.dest = cfg->tunnel_port;
	o.udp.len = bpf_htons(sizeof(o.udp) + VXLAN_HLEN + inner_len);
	o.vx[0] = VXLAN_FLAG_VNI;
	o.vx[4] = vni >> 16;
	o.vx[5] = vni >> 8;
	o.vx[6] = vni;
	/* Room for the outer IPv4/UDP/VXLAN and a new outer Ethernet header in front of the
	 * inner frame: grow at the MAC layer, marked as UDP-tunnelled Ethernet so GSO (a pod's
	 * TSO burst) is segmented per outer packet. */
	if (bpf_skb_adjust_room(skb, sizeof(o) + ETH_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
					BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)))
		return drop(skb, DROP_WRITE_ERROR, dir);
	/* adjust_room opened the gap after the first 14 bytes, which are still the inner
	 * Ethernet header: it is the outer one now; the inner one goes after VXLAN. */
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)eth + ETH_HLEN + sizeof(o) + ETH_HLEN > end)
		return drop(skb, DROP_WRITE_ERROR, dir);
	__builtin_memcpy((void *)eth + ETH_HLEN + sizeof(o), eth, ETH_HLEN);
	__builtin_memcpy((void *)eth + ETH_HLEN, &o, sizeof(o));
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	metric(0, dir);
	stat(TC_STAT_ENCAPSULATED);
	return bpf_redirect(ifindex, 0);
}

/* route_native (stage/forward.rs): natively routed to the node that owns the destination
 * (fp_routes, the routes the workers use), unencapsulated: TTL - 1, the next hop's MACs
 * (fp_nexthops), out of its device. A pod's DF packet too big for the underlay is answered
 * with fragmentation needed. `from_pod`: a pod's packet (egress), else NodePort traffic
 * from outside (ingress). */
__attribute__((noinline)) int fp_route(struct __sk_buff *skb, struct flow *f, __u32 from_pod)
{
	const __u32 dir = from_pod ? DIR_EGRESS : DIR_INGRESS;
	struct fp_config *cfg;
	struct fp_route_key k = {};
	struct fp_nexthop *nh;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 zero = 0, ifindex;
	__be32 *gw;
	int r;

	cfg = bpf_map_lookup_elem(&fp_config, &zero);
	if (!f || !cfg)
		return drop(skb, DROP_UNROUTABLE, dir);
	k.prefixlen = 32;
	k.addr = f->dst;
	gw = bpf_map_lookup_elem(&fp_routes, &k);
	if (!gw)
		return drop(skb, DROP_UNROUTABLE, dir);
	nh = bpf_map_lookup_elem(&fp_nexthops, gw);
	if (!nh || !nh->ifindex)
		return drop(skb, DROP_NO_FIB, dir);
	ifindex = nh->ifindex;
	__builtin_memcpy(dmac, nh->dst_mac, ETH_ALEN);
	__builtin_memcpy(smac, nh->src_mac, ETH_ALEN);
	if (too_big(skb, f, cfg->underlay_mtu)) {
		metric(DROP_FRAG_NEEDED, dir);
		if (from_pod && f->dont_frag)
			return fp_icmp_error(skb, f, cfg->router_ip, ICMP_FRAG_NEEDED_KIND,
					     cfg->underlay_mtu);
		return TC_ACT_SHOT;
	}
	if (skb->len > ETH_HLEN + f->total_len &&
	    bpf_skb_change_tail(skb, ETH_HLEN + f->total_len, 0))
		return drop(skb, DROP_WRITE_ERROR, dir);
	r = l3_forward(skb, dmac, smac);
	if (r)
		return drop(skb, r, dir);
	metric(0, dir);
	stat(TC_STAT_ROUTED);
	return bpf_redirect(ifindex, 0);
}

/* bpf_lxc's ARP responder: a request for any address but the pod's own is answered with
 * the lxc MAC, back out of the device it came from. */
static __always_inline int arp_respond(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_fixed *arp = (void *)(eth + 1);
	struct endpoint_info *ep;
	__u8 lxc_mac[ETH_ALEN], req_mac[ETH_ALEN];
	__be32 sip, tip;

	if ((void *)(arp + 1) > end)
		return drop(skb, DROP_INVALID, DIR_EGRESS);
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != 6 ||
	    arp->plen != 4 || arp->op != bpf_htons(1))
		return drop(skb, DROP_INVALID, DIR_EGRESS);
	sip = arp->sip;
	tip = arp->tip;
	/* Address-conflict probing for the pod's own address: nobody else owns it, stay
	 * silent (as bpf_lxc). */
	ep = endpoint(tip);
	if (tip == sip || (ep && ep->ifindex == skb->ifindex))
		return drop(skb, DROP_UNKNOWN_TARGET, DIR_EGRESS);
	ep = endpoint(sip);
	if (!ep || (ep->flags & ENDPOINT_F_HOST) || ep->ifindex != skb->ifindex)
		return drop(skb, DROP_UNKNOWN_SENDER, DIR_EGRESS);
	__builtin_memcpy(lxc_mac, &ep->node_mac, ETH_ALEN);
	__builtin_memcpy(req_mac, arp->sha, ETH_ALEN);
	arp->op = bpf_htons(2);
	__builtin_memcpy(arp->tha, req_mac, ETH_ALEN);
	arp->tip = sip;
	__builtin_memcpy(arp->sha, lxc_mac, ETH_ALEN);
	arp->sip = tip;
	__builtin_memcpy(eth->h_dest, req_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, lxc_mac, ETH_ALEN);
	stat(TC_STAT_ARP_REPLIES);
	return bpf_redirect(skb->ifindex, 0);
}

/* The ports of an IPv4 TCP/UDP first fragment at `ETH_HLEN` (source, destination), with
 * its IPv4 header in *ipp; 0 for anything else. */
static __always_inline __be16 *l4_ports(struct __sk_buff *skb, struct iphdr **ipp)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__be16 *ports;

	if ((void *)(ip + 1) > end || ip->ihl < 5 ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) ||
	    (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 2) > end)
		return 0;
	*ipp = ip;
	return ports;
}

/* The service frontend (master entry) an IPv4 TCP/UDP first fragment is addressed to, if
 * any; `key` gets its key. */
static __always_inline struct lb4_service *frontend_of(struct __sk_buff *skb, struct lb4_key *key,
						       __be32 node_ip)
{
	struct lb4_service *m;
	struct iphdr *ip = 0;
	struct lb4_key k = {};
	__be16 *ports = l4_ports(skb, &ip);

	if (!ports || !ip)
		return 0;
	k.address = ip->daddr;
	k.dport = ports[1];
	k.proto = ip->protocol;
	m = bpf_map_lookup_elem(&cilium_lb4_services_v2, &k);
	/* To this node's address: the NodePort surrogate frontend 0.0.0.0:port too. */
	if (!m && node_ip && k.address == node_ip) {
		k.address = 0;
		m = bpf_map_lookup_elem(&cilium_lb4_services_v2, &k);
	}
	if (key)
		*key = k;
	return m;
}

/* The service step of from-container: a packet to a frontend is translated (lb4_local);
 * anything else is left alone. 0, or a drop reason. */
__attribute__((noinline)) int fp_lb4_local(struct __sk_buff *skb, struct flow *f, __u32 src_id)
{
	struct lb4_service *m, master;
	struct fp_config *cfg;
	struct lb4_key key;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&fp_config, &zero);
	if (!f || !cfg)
		return DROP_INVALID;
	m = frontend_of(skb, &key, cfg->node_ip);
	if (!m)
		return 0;
	master = *m;
	return lb4_local(skb, f, &key, &master, src_id, ct_now());
}

/* Is this a frame from a service backend (address, port, protocol)? */
static __always_inline int from_backend(struct __sk_buff *skb)
{
	struct fp_backend_addr b = {};
	struct iphdr *ip = 0;
	__be16 *ports = l4_ports(skb, &ip);

	if (!ports || !ip)
		return 0;
	b.address = ip->saddr;
	b.port = ports[0];
	b.proto = ip->protocol;
	return bpf_map_lookup_elem(&fp_lb_backend_addrs, &b) != 0;
}

/* Would the XDP program steer this IPv4 frame from a pod to the workers (fp_steer)? The
 * tc datapath takes the same frames; the rest is the kernel's. */
static __always_inline int ours_from_pod(struct __sk_buff *skb, const struct fp_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct endpoint_info *ep;
	int host;

	if ((void *)(ip + 1) > end)
		return 1;
	ep = endpoint(ip->daddr);
	host = ep && (ep->flags & ENDPOINT_F_HOST);
	if (ep && !host)
		return 1;
	if (cfg->mode == FP_MODE_TUNNEL && tunnel_v4(ipcache(ip->daddr)))
		return 1;
	/* Native routing: a pod of another node (fp_xdp.c remote_pod). */
	if (cfg->mode == FP_MODE_NATIVE && cfg->native_mask &&
	    (ip->daddr & cfg->native_mask) == cfg->native_net)
		return 1;
	if (frontend_of(skb, 0, cfg->node_ip))
		return 1;
	/* A service backend's reply (a NodePort client's, outside the cluster). */
	return !host && from_backend(skb);
}

/* Conntrack on from-container (ct_egress, then ct_policy_forward): one probe for both
 * directions; a reply of a connection the pod accepted skips policy; anything else must
 * pass the pod's egress policy towards the destination's identity (a local endpoint's, the
 * ipcache's, or world), and the connection's OUT entry is created or refreshed (recording
 * the service it went through, `f->rev_nat`). 0, or a drop reason. */
__attribute__((noinline)) int fp_egress(const struct flow *f, __u32 src_id, __u32 src_lxc)
{
	struct fp_scratch *sc = scratch();
	struct ct_req q = {};
	__u32 now = ct_now(), dst_id;
	int found = 0;

	if (!f)
		return DROP_INVALID;
	if (!sc)
		return DROP_CT_CREATE_FAILED;
	if (f->tracked) {
		q = ct_req(f->proto == IPPROTO_TCP,
			   ct_connection(f->src, f->dst, f->sport, f->dport, f->proto, TUPLE_F_OUT),
			   now);
		found = fp_ct_flow(&q, &sc->reply, &sc->fwd);
		if (found < 0)
			return DROP_CT_CREATE_FAILED;
		if (found & 1) {
			fp_ct_touch(&sc->reply, 1, f->tcp_flags, now, 0);
			/* A NodePort client's connection served by this pod: its reply goes back
			 * the way the request came (sc->reply holds the entry). */
			if (sc->reply.st.flags & CT_NODE_PORT)
				return FP_NODEPORT_REPLY;
			return 0;
		}
	}
	dst_id = f->dst_id;
	sc->st.src_sec_id = src_id;
	sc->st.rev_nat = f->rev_nat;
	if (!f->tracked)
		return policy_verdict(src_lxc, POL_EGRESS, dst_id, f);
	return ct_policy_forward(&q, &sc->fwd, found & 2, &sc->st, src_lxc, POL_EGRESS, dst_id, f);
}

#define SNAT_PORT_MIN 32768
#define SNAT_RETRIES 8

/* forward_reply (stage/nodeport.rs): a NodePort reply -- destination back to the client
 * when the request was SNATed (`snat`), source back to the frontend -- to the client's MAC
 * out of the device the request came in on (the entry's reply port), as `dir`. */
static __always_inline int forward_reply(struct __sk_buff *skb, struct flow *f,
					 const struct ct_state *st, int snat, __u32 dir)
{
	__u16 id = bpf_htons(st->rev_nat);
	struct lb4_reverse_nat *fe = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &id);
	__u32 slot = st->reply_port - 1, ifindex;
	struct fp_port *port;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__be32 fe_addr, client = st->nat_addr;
	__be16 fe_port, client_port = bpf_htons(st->nat_port);
	int r;

	if (!fe)
		return drop(skb, DROP_NO_SERVICE, dir);
	fe_addr = fe->address;
	fe_port = fe->port;
	port = st->reply_port ? bpf_map_lookup_elem(&fp_ports, &slot) : 0;
	if (!port || !port->ifindex)
		return drop(skb, DROP_NO_FIB, dir);
	ifindex = port->ifindex;
	__builtin_memcpy(smac, port->mac, ETH_ALEN);
	__builtin_memcpy(dmac, st->reply_mac, ETH_ALEN);
	if (snat && nat_rewrite(skb, f, 1, client, client_port))
		return drop(skb, DROP_WRITE_ERROR, dir);
	if (nat_rewrite(skb, f, 0, fe_addr, fe_port))
		return drop(skb, DROP_WRITE_ERROR, dir);
	/* What follows the datagram (padding) is not forwarded (forward.rs l3_forward). */
	if (skb->len > ETH_HLEN + f->total_len &&
	    bpf_skb_change_tail(skb, ETH_HLEN + f->total_len, 0))
		return drop(skb, DROP_WRITE_ERROR, dir);
	r = l3_forward(skb, dmac, smac);
	if (r)
		return drop(skb, r, dir);
	metric(0, dir);
	stat(TC_STAT_ROUTED);
	return bpf_redirect(ifindex, 0);
}

/* nodeport_reply (stage/nodeport.rs): a local backend's reply to a NodePort/ExternalIP
 * client, found by fp_egress (the IN entry, left in the scratch value). */
__attribute__((noinline)) int fp_nodeport_reply(struct __sk_buff *skb, struct flow *f)
{
	struct fp_scratch *sc = scratch_keep();

	if (!sc || !f)
		return drop(skb, DROP_CT_CREATE_FAILED, DIR_EGRESS);
	return forward_reply(skb, f, &sc->reply.st, 0, DIR_EGRESS);
}

/* nodeport_snat_reply (stage/nodeport.rs): a packet from another node to this node's
 * address: the reply of a SNATed NodePort connection (an OUT entry with the NodePort flag)
 * goes back to the client; anything else has no way into the host from here (164). */
__attribute__((noinline)) int fp_nodeport_snat_reply(struct __sk_buff *skb, struct flow *f)
{
	struct fp_scratch *sc = scratch();
	__u32 now = ct_now();
	struct ct_req q;
	int found;

	if (!sc || !f)
		return drop(skb, DROP_CT_CREATE_FAILED, DIR_INGRESS);
	q = ct_req(f->proto == IPPROTO_TCP,
		   ct_connection(f->dst, f->src, f->dport, f->sport, f->proto, TUPLE_F_OUT), now);
	found = fp_ct_get(&q, &sc->fwd);
	if (found != 1 || !(sc->fwd.st.flags & CT_NODE_PORT))
		return drop(skb, DROP_HOST_UNREACH, DIR_INGRESS);
	fp_ct_touch(&sc->fwd, 1, f->tcp_flags, now, 0);
	return forward_reply(skb, f, &sc->fwd.st, 1, DIR_INGRESS);
}

/* Is SNAT port `p` (network order) of this node free towards the backend -- no OUT entry,
 * or the one of this very client? */
static __always_inline int snat_free(struct fp_scratch *sc, const struct flow *f, __be32 node,
				     __be16 p, __u32 now)
{
	struct ct_req q = ct_req(f->proto == IPPROTO_TCP,
				 ct_connection(node, f->dst, p, f->dport, f->proto, TUPLE_F_OUT), now);
	int found = fp_ct_get(&q, &sc->reply);

	if (found < 0)
		return 0;
	return !found || (sc->reply.st.nat_addr == f->src &&
			  sc->reply.st.nat_port == bpf_ntohs(f->sport));
}

/* nodeport_lb4 (stage/nodeport.rs): a packet from outside the cluster (in on the node NIC)
 * to a NodePort or ExternalIP frontend. A local backend gets it DNATed; a remote one DNATed
 * and SNATed to this node's address (Cilium's default SNAT mode), then encapsulated to the
 * backend's node. The conntrack entry remembers the client's MAC and the device for the
 * replies, as the workers' does, so either datapath can answer. */
__attribute__((noinline)) int fp_nodeport(struct __sk_buff *skb, struct flow *f)
{
	struct fp_scratch *sc = scratch();
	__u32 zero = 0, now = ct_now(), src_id, ifindex = skb->ifindex;
	struct fp_config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
	struct lb4_service *m;
	struct remote_endpoint_info *ri;
	struct endpoint_info *ep;
	struct fp_dev *dev;
	struct ethhdr *eth;
	__be32 node, client, tunnel;
	__be16 client_port;
	__u16 port = 0;
	int r;

	if (!f || !sc || !cfg)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	node = cfg->node_ip;
	/* The frontend cil_from_netdev found for this frame (sc->key). */
	m = bpf_map_lookup_elem(&cilium_lb4_services_v2, &sc->key);
	if (!m)
		return drop(skb, DROP_NO_SERVICE, DIR_INGRESS);
	if (!(m->flags & SVC_FLAG_ROUTABLE))
		return drop(skb, DROP_IS_CLUSTER_IP, DIR_INGRESS);
	if (!m->count)
		return FP_REJECT;
	dev = bpf_map_lookup_elem(&fp_devs, &ifindex);
	if (!dev)
		return drop(skb, DROP_UNKNOWN_SENDER, DIR_INGRESS);
	ri = ipcache(f->src);
	src_id = ri ? ri->sec_identity : IDENTITY_WORLD;
	r = svc_backend(sc, f, &sc->key, m, src_id, now, &sc->be);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	/* The reply state: the service, the client's MAC and port of entry. */
	__builtin_memset(&sc->np, 0, sizeof(sc->np));
	{
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;

		eth = data;
		if ((void *)(eth + 1) > end)
			return drop(skb, DROP_INVALID, DIR_INGRESS);
		__builtin_memcpy(sc->np.reply_mac, eth->h_source, ETH_ALEN);
	}
	sc->np.rev_nat = bpf_ntohs(m->rev_nat_index);
	sc->np.flags = CT_NODE_PORT;
	sc->np.src_sec_id = src_id;
	sc->np.reply_port = dev->slot + 1;
	client = f->src;
	client_port = f->sport;
	if (dnat(skb, f, &sc->be))
		return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
	ep = endpoint(f->dst);
	if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
		/* A local backend: no SNAT; its ingress policy judges the client. */
		f->src_id = src_id;
		return FP_DELIVER;
	}
	/* A remote backend: SNAT to the node, keeping the client's port when it is free. */
	port = sc->st.nat_port;
	if (!port) {
		if (bpf_ntohs(client_port) >= SNAT_PORT_MIN && snat_free(sc, f, node, client_port, now))
			port = bpf_ntohs(client_port);
		for (int i = 0; i < SNAT_RETRIES && !port; i++) {
			__u16 p = SNAT_PORT_MIN + bpf_get_prandom_u32() % (65536 - SNAT_PORT_MIN);

			if (snat_free(sc, f, node, bpf_htons(p), now))
				port = p;
		}
		if (!port)
			return drop(skb, DROP_NAT_NO_MAPPING, DIR_INGRESS);
		/* Later packets of the flow reuse it. */
		sc->st.nat_port = port;
		fp_ct_new(&sc->svc_q, &sc->st, new_lifetime(f, now), &sc->fwd);
	}
	sc->np.nat_addr = client;
	sc->np.nat_port = bpf_ntohs(client_port);
	sc->svc_q = ct_req(f->proto == IPPROTO_TCP,
			   ct_connection(node, f->dst, bpf_htons(port), f->dport, f->proto,
					 TUPLE_F_OUT),
			   now);
	r = fp_ct_get(&sc->svc_q, &sc->fwd);
	if (r == 1 ||
	    (r == 0 && fp_ct_new(&sc->svc_q, &sc->np, new_lifetime(f, now), &sc->fwd) == 1))
		fp_ct_touch(&sc->fwd, 0, f->tcp_flags, now, 0);
	if (nat_rewrite(skb, f, 0, node, bpf_htons(port)))
		return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
	if (cfg->mode != FP_MODE_TUNNEL)
		return FP_ROUTE;
	tunnel = tunnel_v4(ipcache(f->dst));
	if (!tunnel)
		return drop(skb, DROP_UNROUTABLE, DIR_INGRESS);
	f->tunnel_ep = tunnel;
	return FP_ENCAP;
}

/* From the node NIC to a service frontend: validate, then nodeport_lb4 and what it asks
 * for. Frames not addressed to this NIC are not ours to serve (131, as the workers refuse
 * them). */
static __always_inline int netdev_service(struct __sk_buff *skb)
{
	struct flow *f = netdev_flow();
	int r;

	if (!f)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	if (skb->pkt_type != PACKET_HOST)
		return drop(skb, DROP_INVALID_DMAC, DIR_INGRESS);
	r = parse_ipv4(skb, ETH_HLEN, f);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	r = fp_nodeport(skb, f);
	switch (r) {
	case FP_REJECT:
		metric(DROP_NO_SERVICE, DIR_INGRESS);
		return fp_icmp_error(skb, f, f->dst, ICMP_PORT_UNREACH_KIND, 0);
	case FP_DELIVER:
		return fp_local_delivery(skb, f, f->src_id, DELIVER_NODEPORT);
	case FP_ENCAP:
		return fp_encap(skb, f, f->tunnel_ep, IDENTITY_HOST, 0);
	case FP_ROUTE:
		return fp_route(skb, f, 0);
	}
	return r;
}

/* Routed, not encapsulated, from the node NIC (from_netdev.rs, from_overlay.rs
 * to_local_pod): a packet for a local pod is delivered, its source's identity from the
 * ipcache (world when it has none); one to this node's own address from a service backend
 * is the reply of a SNATed NodePort connection, or refused (164). */
static __always_inline int netdev_routed(struct __sk_buff *skb, int to_pod)
{
	struct flow *f = netdev_flow();
	struct remote_endpoint_info *ri;
	int r;

	if (!f)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	if (skb->pkt_type != PACKET_HOST)
		return drop(skb, DROP_INVALID_DMAC, DIR_INGRESS);
	r = parse_ipv4(skb, ETH_HLEN, f);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	if (!to_pod)
		return fp_nodeport_snat_reply(skb, f);
	ri = ipcache(f->src);
	return fp_local_delivery(skb, f, ri ? ri->sec_identity : IDENTITY_WORLD, 0);
}


/* cil_from_container: tc ingress of a pod's lxc device. */
SEC("classifier")
int cil_from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct endpoint_info *src_ep;
	__u32 zero = 0, src_id, src_lxc;
	__u64 lxc_mac = 0;
	struct fp_config *cfg;
	struct flow f = {};
	__be32 tunnel_ep = 0;
	int r;

	set_rx_len(skb);
	if ((void *)(eth + 1) > end)
		return drop(skb, DROP_INVALID, DIR_EGRESS);
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_fixed *arp = (void *)(eth + 1);

		/* Replies, gratuitous announcements and DAD probes belong to the kernel. */
		if ((void *)(arp + 1) <= end &&
		    (arp->op != bpf_htons(1) || arp->sip == arp->tip || arp->sip == 0))
			return pass();
		/* A source MAC that is a group address is never a sender's (IEEE 802). */
		if (eth->h_source[0] & 1)
			return drop(skb, DROP_INVALID_SMAC, DIR_EGRESS);
		return arp_respond(skb);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass();
	cfg = bpf_map_lookup_elem(&fp_config, &zero);
	if (!cfg)
		return pass();
	if (!ours_from_pod(skb, cfg))
		return pass();
	if (eth->h_source[0] & 1)
		return drop(skb, DROP_INVALID_SMAC, DIR_EGRESS);
	r = parse_ipv4(skb, ETH_HLEN, &f);
	if (r)
		return drop(skb, r, DIR_EGRESS);
	/* The sender: the endpoint with this source address behind this very device, from its
	 * own MAC, to the lxc's MAC (the gateway the pod's ARP got). */
	src_ep = endpoint(f.src);
	if (!src_ep || (src_ep->flags & ENDPOINT_F_HOST))
		return drop(skb, DROP_INVALID_SIP, DIR_EGRESS);
	if (src_ep->ifindex != skb->ifindex)
		return drop(skb, DROP_INVALID_SIP, DIR_EGRESS);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return drop(skb, DROP_INVALID, DIR_EGRESS);
	if (!mac_is(eth->h_dest, src_ep->node_mac))
		return drop(skb, DROP_INVALID_DMAC, DIR_EGRESS);
	if (!mac_is(eth->h_source, src_ep->mac))
		return drop(skb, DROP_INVALID_SMAC, DIR_EGRESS);
	src_id = src_ep->sec_id;
	src_lxc = src_ep->lxc_id;
	__builtin_memcpy(&lxc_mac, &src_ep->node_mac, ETH_ALEN);

	/* Services (lb4_local): a frontend is translated to a backend before anything else
	 * looks at the destination. */
	if (f.tracked && f.proto != IPPROTO_ICMP) {
		r = fp_lb4_local(skb, &f, src_id);
		if (r == FP_REJECT) {
			metric(DROP_NO_SERVICE, DIR_EGRESS);
			return fp_icmp_error(skb, &f, f.dst, ICMP_PORT_UNREACH_KIND, 0);
		}
		if (r)
			return drop(skb, r, DIR_EGRESS);
	}
	/* The destination, once: a local endpoint, or the ipcache's identity and tunnel. */
	{
		struct endpoint_info *dst_ep = endpoint(f.dst);

		if (dst_ep) {
			f.dst_id = dst_ep->sec_id;
			f.dst_local = 1;
		} else {
			struct remote_endpoint_info *ri = ipcache(f.dst);

			f.dst_id = ri ? ri->sec_identity : IDENTITY_WORLD;
			f.tunnel_ep = tunnel_v4(ri);
		}
	}
	r = fp_egress(&f, src_id, src_lxc);
	if (r == FP_NODEPORT_REPLY)
		return fp_nodeport_reply(skb, &f);
	if (r)
		return drop(skb, r, DIR_EGRESS);
	if (f.dst_local)
		return fp_local_delivery(skb, &f, src_id, DELIVER_FROM_POD);
	if (cfg->mode == FP_MODE_NATIVE)
		return fp_route(skb, &f, 1);
	tunnel_ep = f.tunnel_ep;
	if (!tunnel_ep)
		return drop(skb, DROP_UNROUTABLE, DIR_EGRESS);
	return fp_encap(skb, &f, tunnel_ep, src_id, lxc_mac);
}

/* from-overlay (stage/from_overlay.rs): the VXLAN header at `vx_off` of a frame from the
 * node NIC; the VNI is the sender's identity; strip the outer headers and deliver. */
static __always_inline int from_overlay(struct __sk_buff *skb, __u32 vx_off, __u32 end_off)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *vx = data + vx_off;
	struct flow *f = netdev_flow();
	__u32 vni;
	int r;

	if (!f)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	if ((void *)(vx + VXLAN_HLEN) > end)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	if (vx[0] != VXLAN_FLAG_VNI || vx[1] || vx[2] || vx[3] || vx[7])
		return drop(skb, DROP_NO_TUNNEL_KEY, DIR_INGRESS);
	vni = (__u32)vx[4] << 16 | (__u32)vx[5] << 8 | vx[6];
	if (vni == IDENTITY_HOST || vni == IDENTITY_UNKNOWN)
		return drop(skb, DROP_INVALID_IDENTITY, DIR_INGRESS);
	/* An identity the cluster does not know is refused too. */
	if (!bpf_map_lookup_elem(&fp_identities, &vni))
		return drop(skb, DROP_INVALID_VNI, DIR_INGRESS);
	/* Outer padding is not part of the inner frame; then the outer headers go (the
	 * outer Ethernet header stays, rewritten below, and the inner one goes with them). */
	if (skb->len > end_off && bpf_skb_change_tail(skb, end_off, 0))
		return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
	/* Outer IPv4, UDP, VXLAN and the inner Ethernet header: everything between the outer
	 * Ethernet header and the inner IPv4 header. */
	if (bpf_skb_adjust_room(skb, -(__s32)(vx_off + VXLAN_HLEN), BPF_ADJ_ROOM_MAC, 0))
		return drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN > end)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	r = parse_ipv4(skb, ETH_HLEN, f);
	if (r)
		return drop(skb, r, DIR_INGRESS);
	/* To this node's own address: the reply of a SNATed NodePort connection, or nothing. */
	{
		struct endpoint_info *ep = endpoint(f->dst);

		if (ep && (ep->flags & ENDPOINT_F_HOST) && f->tracked)
			return fp_nodeport_snat_reply(skb, f);
	}
	stat(TC_STAT_DECAPSULATED);
	return fp_local_delivery(skb, f, vni, 0);
}

/* Does the UDP datagram of `ulen` bytes at `off` (IPv4 header just before it, 20 bytes)
 * checksum to zero with its pseudo header? */
static __always_inline int udp_csum_ok(struct __sk_buff *skb, __u32 off, __u32 ulen)
{
	void *data, *end;
	struct iphdr *ip;
	__u32 pseudo;
	__s64 sum;

	if (ulen > CSUM_MAX || bpf_skb_pull_data(skb, off + ulen))
		return 0;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end)
		return 0;
	/* The pseudo header: addresses, protocol, UDP length. */
	pseudo = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
		 (ip->daddr >> 16) + bpf_htons(IPPROTO_UDP) + bpf_htons(ulen);
	sum = csum_range(skb, off, ulen, pseudo);
	return sum >= 0 && csum_fold(sum) == 0;
}

/* cil_from_netdev: tc ingress of the node NIC. VXLAN to this node's tunnel port goes to
 * from-overlay, a frontend's traffic to nodeport_lb4, natively routed traffic for a local
 * pod to delivery; everything else is the kernel's (as the XDP steering decides). */
SEC("classifier")
int cil_from_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;
	struct fp_config *cfg;
	__u32 zero = 0, ihl, ulen;

	set_rx_len(skb);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return pass();
	cfg = bpf_map_lookup_elem(&fp_config, &zero);
	if (!cfg || ip->ihl < 5)
		return pass();
	ihl = ip->ihl * 4;
	udp = (void *)ip + ihl;
	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)) ||
	    (void *)(udp + 1) > end || udp->dest != cfg->tunnel_port) {
		struct endpoint_info *ep;
		int host;

		struct fp_scratch *sc = scratch_keep();

		/* NodePort / ExternalIP from outside the cluster (nodeport_lb4), its frontend's
		 * key kept for it. */
		if (sc && frontend_of(skb, &sc->key, cfg->node_ip))
			return netdev_service(skb);
		/* For a local pod (natively routed, or any routed frame: the steering takes it
		 * in either mode), and in native mode a backend's NodePort reply to this node. */
		ep = endpoint(ip->daddr);
		host = ep && (ep->flags & ENDPOINT_F_HOST);
		if (ep && !host)
			return netdev_routed(skb, 1);
		if (cfg->mode == FP_MODE_NATIVE && host && from_backend(skb))
			return netdev_routed(skb, 0);
		return pass();
	}
	/* VXLAN for some node: the outer headers Linux would accept (from_netdev.rs). */
	if (skb->pkt_type != PACKET_HOST)
		return drop(skb, DROP_INVALID_DMAC, DIR_INGRESS);
	if (ip->frag_off & bpf_htons(0x2000))
		return drop(skb, DROP_FRAG_NOSUPPORT, DIR_INGRESS);
	if (ip->daddr != cfg->node_ip)
		return drop(skb, DROP_UNKNOWN_TARGET, DIR_INGRESS);
	{
		/* The header with its options, as ip_rcv checks it (the UDP header after the
		 * options is in the linear data: checked above). */
		__s64 sum = -1;

		if (ihl == 20)
			sum = bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0);
		else if ((void *)ip + 60 <= end)
			sum = bpf_csum_diff(0, 0, (__be32 *)ip, ihl & 60, 0);
		if (sum < 0 || csum_fold(sum) != 0)
			return drop(skb, DROP_INVALID, DIR_INGRESS);
	}
	ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) + VXLAN_HLEN || ulen > bpf_ntohs(ip->tot_len) - ihl)
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	/* A non-zero UDP checksum must verify, as udp_rcv checks it (Linux senders send
	 * VXLAN with none). */
	if (udp->check && !udp_csum_ok(skb, ETH_HLEN + ihl, ulen))
		return drop(skb, DROP_INVALID, DIR_INGRESS);
	return from_overlay(skb, ETH_HLEN + ihl + sizeof(*udp), ETH_HLEN + ihl + ulen);
}

/* Test entry: the conntrack step of from-container alone (ct.rs ct_egress, then
 * ct_create): one probe for both directions of the frame's connection; a reply or an
 * established entry is touched, a new connection gets an OUT entry whose source identity
 * is skb->mark. cb[0] returns the entry's flags, cb[1] its source identity. Never
 * attached; run through BPF_PROG_TEST_RUN by xdp-redirect/tests/tc_conntrack.rs. */
enum {
	PROBE_NOT_IPV4 = 0,
	PROBE_REPLY = 1,
	PROBE_ESTABLISHED = 2,
	PROBE_CREATED = 3,
	PROBE_FULL = 4,
	PROBE_NO_TABLE = 5,
};

SEC("classifier")
int fp_ct_probe(struct __sk_buff *skb)
{
	struct ct_hit reply = {}, fwd_hit = {};
	struct ct_state st = {};
	struct ct_key fwd;
	struct ct_req q;
	struct flow f = {};
	__u32 now = ct_now();
	int tcp, found;

	if (parse_ipv4(skb, ETH_HLEN, &f) || !f.tracked)
		return PROBE_NOT_IPV4;
	tcp = f.proto == IPPROTO_TCP;
	fwd = ct_connection(f.src, f.dst, f.sport, f.dport, f.proto, TUPLE_F_OUT);
	q = ct_req(tcp, fwd, now);
	found = fp_ct_flow(&q, &reply, &fwd_hit);
	if (found < 0)
		return PROBE_NO_TABLE;
	if (found & 1) {
		skb->cb[0] = fp_ct_touch(&reply, 1, f.tcp_flags, now, 0);
		skb->cb[1] = reply.st.src_sec_id;
		return PROBE_REPLY;
	}
	if (found & 2) {
		skb->cb[0] = fp_ct_touch(&fwd_hit, 0, f.tcp_flags, now, 0);
		skb->cb[1] = fwd_hit.st.src_sec_id;
		return PROBE_ESTABLISHED;
	}
	st.src_sec_id = skb->mark;
	if (fp_ct_new(&q, &st, new_lifetime(&f, now), &fwd_hit) != 1)
		return PROBE_FULL;
	skb->cb[0] = fp_ct_touch(&fwd_hit, 0, f.tcp_flags, now, 0);
	skb->cb[1] = st.src_sec_id;
	return PROBE_CREATED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
