/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The map layouts fastpath's kernel programs share: the XDP steering program (fp_xdp.c)
 * and the tc datapath (fp_tc.c) include this one header, and the Rust side
 * (control/abi) declares the same structs. `xdp-redirect/tests/layouts.rs` reads the
 * BTF of both compiled objects and checks every struct here -- size and the offset of
 * every member -- against the Rust types, so a drift on either side fails the tests.
 *
 * Layouts are Cilium 1.19's where Cilium has the map (docs/maps.md), fastpath's own
 * (fp_*) otherwise.
 *
 * Sharing: the XDP object creates the cilium_* and fp_* maps below; fastpath pins them
 * under /sys/fs/bpf/fastpath/<node>/tc/globals. The tc object is built with
 * FP_PIN_SHARED defined: its definitions carry LIBBPF_PIN_BY_NAME, so loading it with
 * that pin path opens the very maps the XDP object made instead of creating new ones.
 * The datapath-written tables (conntrack, affinity) are created by the control plane
 * itself (control/tables/src/shm.rs) and always shared by pin.
 */
#ifndef FP_MAPS_H
#define FP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifdef FP_PIN_SHARED
#define FP_PIN __uint(pinning, LIBBPF_PIN_BY_NAME);
#else
#define FP_PIN
#endif

#define FP_MAX_QUEUES 64
/* One slot per device: up to 4095 pods (Cilium's endpoint IDs) and the node NIC. */
#define FP_MAX_DEVS 4096

#define ENDPOINT_F_HOST 1
#define ENDPOINT_KEY_IPV4 1

#define FP_ROLE_LXC 1
#define FP_ROLE_UNDERLAY 2

#define LB_MAP_MAX 65536

#define FP_MODE_TUNNEL 0
#define FP_MODE_NATIVE 1

#define IPCACHE_FIXED_BITS 32
#define IPCACHE_FAMILY_IPV4 1
#define IPCACHE_F_SKIP_TUNNEL (1 << 0)
#define IPCACHE_F_HAS_TUNNEL_EP (1 << 1)
#define IPCACHE_F_IPV6_TUNNEL_EP (1 << 2)

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

/* cilium_ipcache_v2 key: struct ipcache_key (24 bytes, LPM). */
struct ipcache_key {
	__u32 prefixlen;
	__u16 cluster_id;
	__u8 pad1;
	__u8 family;
	__u32 ip4;
	__u32 ip6_rest[3];
};

/* cilium_ipcache_v2 value: struct remote_endpoint_info (24 bytes). */
struct remote_endpoint_info {
	__u32 sec_identity;
	__u32 tunnel_endpoint[4];
	__u16 pad;
	__u8 key;
	__u8 flags;
};

/* cilium_lb4_services_v2 key: struct lb4_key (12 bytes). */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

/* cilium_lb4_services_v2 value: struct lb4_service (12 bytes). */
struct lb4_service {
	__u32 backend_id;
	__u16 count;
	__be16 rev_nat_index;
	__u8 flags;
	__u8 flags2;
	__u16 qcount;
};

/* cilium_lb4_backends_v3 value: struct lb4_backend (12 bytes). */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
	__u16 cluster_id;
	__u8 zone;
	__u8 pad;
};

/* cilium_lb4_reverse_nat value: struct lb4_reverse_nat (6 bytes, packed). */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
} __attribute__((packed));

/* fp_routes key (LPM): native routing's pod CIDRs of other nodes (node.remote_nodes'
 * pod_cidr, the routes the workers use) -> the node's address, the next hop. */
struct fp_route_key {
	__u32 prefixlen;
	__be32 addr;
};

/* cilium_lb_affinity_match key: struct lb_affinity_match (8 bytes): a backend a
 * sessionAffinity service still offers. */
struct lb_affinity_match {
	__u32 backend_id;
	__be16 rev_nat_id;
	__u16 pad;
};

/* fastpath's load-balancer settings for the kernel programs (one entry): the node's
 * default algorithm (1 random, 2 maglev) for services that name none. (A Maglev table
 * carries its own size and seed: cilium_lb4_maglev.) */
struct fp_lb_config {
	__u32 default_alg;
};

/* cilium_ct4_global / cilium_ct_any4_global key: struct ipv4_ct_tuple (14 bytes, packed).
 * In fastpath's shared table the 14 bytes are the first two key words of a slot. */
struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));
_Static_assert(sizeof(struct ipv4_ct_tuple) == 14, "ipv4_ct_tuple is 14 bytes");

/* cilium_policy_v3_<endpoint> key: struct policy_key (12 bytes, LPM: prefixlen = 40 fixed
 * bits of identity and direction + the protocol/port prefix). */
struct policy_key {
	__u32 prefixlen;
	__u32 sec_label;
	__u8 egress;
	__u8 protocol;
	__be16 dport;
};

/* Types the programs use only as locals are not in the objects' BTF, where the layout test
 * reads the others: their shape is pinned here. */
_Static_assert(sizeof(struct policy_key) == 12 && __builtin_offsetof(struct policy_key, dport) == 10,
	       "policy_key as control/abi/src/policy.rs");

/* cilium_policy_v3_<endpoint> value: struct policy_entry (12 bytes). Flags: bit 0 deny,
 * bits 3-7 the entry's protocol/port prefix length. */
struct policy_entry {
	__be16 proxy_port;
	__u8 flags;
	__u8 auth_type;
	__u32 precedence;
	__u32 cookie;
};

_Static_assert(sizeof(struct policy_entry) == 12 &&
		       __builtin_offsetof(struct policy_entry, precedence) == 4,
	       "policy_entry as control/abi/src/policy.rs");

/* fastpath: a backend's (address, port, protocol), to steer its replies. */
struct fp_backend_addr {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* fastpath's node-wide settings (one entry, written by the control plane). */
struct fp_config {
	__u32 mode;
	__be16 tunnel_port;
	__u16 pad;
	__be32 native_net;
	__be32 native_mask;
	/* The node's underlay address (source of encapsulated frames) and the underlay
	 * device's MTU: what the tc datapath's encapsulation needs. */
	__be32 node_ip;
	__u32 underlay_mtu;
	/* The pods' gateway address: the source of the ICMP errors the node sends them
	 * (fragmentation needed). */
	__be32 router_ip;
	__u32 pad2;
};

/* fastpath's next hops (fp_nexthops), kept by the control plane in step with the kernel's
 * neighbour table as the workers' are: a node address -> the device and MACs frames to it
 * go out with, and the inner destination MAC when the node wants one (a kernel VXLAN
 * device, `overlay_mac`). */
#define FP_NH_INNER_MAC 1
struct fp_nexthop {
	__u32 ifindex;
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u8 inner_dst_mac[6];
	__u8 flags;
	__u8 pad;
};

/* fastpath's ports by slot (the workers' port number, fp_dev.slot): the device and its MAC.
 * Conntrack entries name a device by port (the one a NodePort client's request came in
 * on, where its replies go); this is how the tc datapath finds it. */
struct fp_port {
	__u32 ifindex;
	__u8 mac[6];
	__u16 pad;
};

/* An ARP packet for IPv4 over Ethernet. */
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


/* The inner maps of cilium_lb4_maglev: a service's Maglev lookup table. Cilium's inner
 * map holds the table as one 4*M-byte value; fastpath's holds it as entries of one u32
 * each: entry 0 the table's size M, entry 1 the datapath hash seed it goes with, entries
 * 2..M+1 the backend IDs of slots 0..M-1 -- because M is a run-time setting
 * (datapath.maglev_table_size) and the kernel programs are compiled once: an array's
 * max_entries may differ per inner map (BPF_F_INNER_MAP), its value size may not; and a
 * table read with another table's size or seed would pick other backends than the
 * workers. The IDs, in order, are Cilium's. docs/maps.md. */
struct fp_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16381);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};

/* fastpath's own device table: which devices it owns and their XSKMAP slot. */
struct fp_dev {
	__u32 slot;
	__u32 role;
};

/* One 64-byte line of a shared table (control/tables/src/shared_table.rs): the
 * element of the mmapable arrays that hold conntrack and affinity. */
struct fp_line {
	__u64 w[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65535);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	FP_PIN
} cilium_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
	FP_PIN
} cilium_ipcache_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	FP_PIN
} cilium_lb4_services_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	FP_PIN
} cilium_lb4_backends_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	FP_PIN
} cilium_lb4_reverse_nat SEC(".maps");

/* Key: the service ID, network order (as in lb4_service.rev_nat_index). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, LB_MAP_MAX);
	__type(key, __u16);
	FP_PIN
	__array(values, struct fp_maglev_inner);
} cilium_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
	FP_PIN
} cilium_lb_affinity_match SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_lb_config);
	FP_PIN
} fp_lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_backend_addr);
	__type(value, __u32);
	FP_PIN
} fp_lb_backend_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_config);
	FP_PIN
} fp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct fp_dev);
	FP_PIN
} fp_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_route_key);
	__type(value, __be32);
	FP_PIN
} fp_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FP_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct fp_port);
	FP_PIN
} fp_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct fp_nexthop);
	FP_PIN
} fp_nexthops SEC(".maps");

/* The identities this node accepts from the overlay (a VNI that is none of them is 183,
 * as the workers refuse it): identity -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u8);
	FP_PIN
} fp_identities SEC(".maps");

/* The per-endpoint policy maps cilium_policy_v3_<id> (Cilium 1.19's layout, one LPM trie
 * per endpoint, each pinned under its own name), reached by endpoint ID: one program
 * serves every endpoint, where Cilium compiles each endpoint's program against its map.
 * An endpoint without a map has no policy computed (everything allowed). */
struct fp_policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	/* Sizes rather than types: an object that never reads the maps would otherwise
	 * carry the structs as forward declarations, which aya cannot load. */
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__type(key, __u32);
	FP_PIN
	__array(values, struct fp_policy_inner);
} fp_policy SEC(".maps");

#endif /* FP_MAPS_H */
