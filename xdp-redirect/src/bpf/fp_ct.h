/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Conntrack over the shared table (control/tables/src/ct.rs, from the kernel side):
 * cilium_ct4_global (TCP) and cilium_ct_any4_global (the rest), the same maps the AF_XDP
 * workers read and write, so a connection one datapath created is known to the other.
 *
 * Keys are Cilium's struct ipv4_ct_tuple in two words (its 14 bytes, then two zero
 * bytes); both directions of a connection hash alike (the smaller of the key and its
 * reverse), so the reply and forward entries are found in one probe of one bucket.
 *
 * Value words (ct.rs CtState::encode):
 *   w0  backend ID | source identity << 32
 *   w1  NAT address (wire bytes) | NAT port (host) << 32 | rev_nat index (host) << 48
 *   w2  flags | tx_flags_seen << 16 | rx_flags_seen << 24, stamped: generation << 32
 *   w3  reply MAC | (reply port + 1) << 48   (NodePort replies)
 *   w4  the workers' cached policy verdict (tied to their table generation; the tc
 *       programs neither read nor write it, so they always look policy up)
 */
#ifndef FP_CT_H
#define FP_CT_H

#include "fp_table.h"

#define CT_WORDS 5
#define CT_STAMPED 2

#define TUPLE_F_OUT 0
#define TUPLE_F_IN 1
#define TUPLE_F_RELATED 2
#define TUPLE_F_SERVICE 4

#define CT_RX_CLOSING 0x0001
#define CT_TX_CLOSING 0x0002
#define CT_SEEN_NON_SYN 0x0010
#define CT_NODE_PORT 0x0020

#define LIFETIME_TCP 8000
#define LIFETIME_TCP_SYN 60
#define LIFETIME_TCP_CLOSE 10
#define LIFETIME_NONTCP 60
#define LIFETIME_SVC_TCP 8000
#define LIFETIME_SVC_NONTCP 60

#define FP_TCP_FIN 0x01
#define FP_TCP_SYN 0x02
#define FP_TCP_RST 0x04

/* The conntrack tables: fastpath's shared tables (fp_table.h FP_SHARED_TABLE). */
FP_SHARED_TABLE(cilium_ct4_global);
FP_SHARED_TABLE(cilium_ct_any4_global);

/* A tuple in the table's key form. */
struct ct_key {
	__u64 w0;
	__u64 w1;
};

/* The decoded value (ct.rs CtState). */
struct ct_state {
	__u32 backend_id;
	__u32 src_sec_id;
	__u32 nat_addr; /* wire bytes */
	__u16 nat_port;
	__u16 rev_nat;
	__u16 flags;
	__u8 tx_flags_seen;
	__u8 rx_flags_seen;
	__u16 reply_port; /* 0 = none, else port + 1 */
	__u8 reply_mac[6];
};

/* A found entry. */
struct ct_hit {
	struct fpt_ref ref;
	struct ct_state st;
	__u32 lifetime;
	__u32 tcp;
};

/* CtTuple4::connection(src, dst, sport, dport, proto, flags): addresses and ports as on
 * the wire (network order). */
static __always_inline struct ct_key ct_connection(__be32 src, __be32 dst, __be16 sport,
						   __be16 dport, __u8 proto, __u8 flags)
{
	/* Cilium's orientation: daddr holds the sender, saddr the receiver. */
	union {
		struct ipv4_ct_tuple t;
		struct ct_key k;
	} u = {};

	u.t.daddr = src;
	u.t.saddr = dst;
	u.t.dport = dport;
	u.t.sport = sport;
	u.t.nexthdr = proto;
	u.t.flags = flags;
	return u.k;
}

/* CtKey::reversed: addresses and ports swapped, the direction bit flipped. */
static __always_inline struct ct_key ct_reversed(struct ct_key k)
{
	struct ct_key r;

	r.w0 = k.w0 >> 32 | k.w0 << 32;
	r.w1 = (k.w1 >> 16 & 0xffff) | (k.w1 & 0xffff) << 16 |
	       ((k.w1 & 0xffff00000000ULL) ^ (__u64)TUPLE_F_IN << 40);
	return r;
}

/* CtHash: mix of the direction-free form, the smaller (as words) of key and reverse. */
static __always_inline __u64 ct_hash(struct ct_key k)
{
	struct ct_key r = ct_reversed(k);

	if (r.w0 < k.w0 || (r.w0 == k.w0 && r.w1 < k.w1))
		return fpt_mix2(r.w0, r.w1);
	return fpt_mix2(k.w0, k.w1);
}

static __always_inline int ct_open(struct fpt *t, int tcp)
{
	if (tcp)
		return fpt_open(t, &cilium_ct4_global, CT_WORDS);
	return fpt_open(t, &cilium_ct_any4_global, CT_WORDS);
}

static __always_inline void ct_decode(const __u64 *w, struct ct_state *st)
{
	__u64 m = w[3];

	st->backend_id = (__u32)w[0];
	st->src_sec_id = w[0] >> 32;
	st->nat_addr = (__u32)w[1];
	st->nat_port = w[1] >> 32;
	st->rev_nat = w[1] >> 48;
	st->flags = (__u16)w[2];
	st->tx_flags_seen = w[2] >> 16;
	st->rx_flags_seen = w[2] >> 24;
	st->reply_port = m >> 48;
	__builtin_memcpy(st->reply_mac, &m, 6);
}

static __always_inline void ct_encode(const struct ct_state *st, __u64 *w)
{
	__u64 m = 0;

	__builtin_memcpy(&m, st->reply_mac, 6);
	w[0] = st->backend_id | (__u64)st->src_sec_id << 32;
	w[1] = st->nat_addr | (__u64)st->nat_port << 32 | (__u64)st->rev_nat << 48;
	w[2] = st->flags | (__u64)st->tx_flags_seen << 16 | (__u64)st->rx_flags_seen << 24;
	w[3] = m | (__u64)st->reply_port << 48;
	w[4] = 0;
}

/* A found slot's entry, if it is still the one found and has not expired. */
static __always_inline int ct_hit_of(const struct fpt *t, const struct fpt_ref *r, int tcp,
				     __u32 now, struct ct_hit *hit)
{
	__u64 w[CT_WORDS] = {};
	__u32 life = 0;

	if (!r->found || !fpt_read(t, r, w, CT_WORDS, &life) || fpt_expired(life, now))
		return 0;
	hit->ref = *r;
	hit->lifetime = life;
	hit->tcp = tcp;
	ct_decode(w, &hit->st);
	return 1;
}

/* Conntrack::lookup_flow: one probe for both directions of the packet whose forward key
 * is `fwd`. Sets *reply / *fwd_hit to 1 where an entry was found. */
static __always_inline void ct_lookup_flow(const struct fpt *t, int tcp, struct ct_key fwd,
					   __u32 now, struct ct_hit *reply, int *has_reply,
					   struct ct_hit *fwd_hit, int *has_fwd)
{
	struct ct_key rev = ct_reversed(fwd);
	struct fpt_ref r[2] = {};

	fpt_lookup_pair(t, ct_hash(fwd), rev.w0, rev.w1, fwd.w0, fwd.w1, &r[0], &r[1]);
	/* One decode for both (one value buffer on the stack, not two). */
	for (int i = 0; i < 2; i++) {
		int got = ct_hit_of(t, &r[i & 1], tcp, now, i ? fwd_hit : reply);

		if (i)
			*has_fwd = got;
		else
			*has_reply = got;
	}
}

/* Conntrack::lookup: one key. */
static __always_inline int ct_lookup(const struct fpt *t, int tcp, struct ct_key k, __u32 now,
				     struct ct_hit *hit)
{
	struct fpt_ref r = {};

	fpt_lookup(t, ct_hash(k), k.w0, k.w1, &r);
	return ct_hit_of(t, &r, tcp, now, hit);
}

/* Conntrack::create: create (or replace) `k` with `st`, lifetime `lifetime`. */
static __always_inline int ct_create(const struct fpt *t, int tcp, struct ct_key k,
				     const struct ct_state *st, __u32 lifetime, __u32 now,
				     struct ct_hit *hit)
{
	__u64 w[CT_WORDS];

	ct_encode(st, w);
	if (!fpt_insert(t, ct_hash(k), k.w0, k.w1, w, CT_WORDS, CT_STAMPED, lifetime, now,
			&hit->ref))
		return 0;
	hit->st = *st;
	hit->lifetime = lifetime;
	hit->tcp = tcp;
	return 1;
}

/* Conntrack::touch: a packet of the connection passed; update the TCP state (`reply`: the
 * packet goes in the reply direction; `tcp_flags` its flag byte, 0 for non-TCP) and push
 * the lifetime. `service`: a service entry. Returns the flags after the update. */
static __always_inline __u16 ct_touch(const struct fpt *t, const struct ct_hit *hit, int reply,
				      __u8 tcp_flags, __u32 now, int service)
{
	struct fp_line *s;
	__u16 flags;
	__u32 add, life, closing_bit;
	__u64 cur;

	if (!hit->tcp) {
		fpt_set_lifetime(t, &hit->ref, CT_WORDS,
				 now + (service ? LIFETIME_SVC_NONTCP : LIFETIME_NONTCP));
		return hit->st.flags;
	}
	s = fpt_slot(t, hit->ref.idx);
	if (!s)
		return hit->st.flags;
	cur = READ_ONCE(s->w[2 + CT_STAMPED]);
	flags = (__u16)cur;
	add = (__u32)tcp_flags << (reply ? 24 : 16);
	closing_bit = reply ? CT_RX_CLOSING : CT_TX_CLOSING;
	if (service && (tcp_flags & (FP_TCP_RST | FP_TCP_FIN)))
		flags |= CT_RX_CLOSING | CT_TX_CLOSING;
	else if (tcp_flags & FP_TCP_RST)
		flags |= (flags & CT_SEEN_NON_SYN) ? closing_bit : (CT_RX_CLOSING | CT_TX_CLOSING);
	else if (tcp_flags & FP_TCP_FIN)
		flags |= closing_bit;
	if (!(tcp_flags & FP_TCP_SYN))
		flags |= CT_SEEN_NON_SYN;
	add |= flags;
	if (((__u32)cur & add) != add && !fpt_fetch_or_stamped(t, &hit->ref, CT_STAMPED, add))
		return flags;
	if ((flags & (CT_RX_CLOSING | CT_TX_CLOSING)) == (CT_RX_CLOSING | CT_TX_CLOSING))
		life = LIFETIME_TCP_CLOSE;
	else if (!(flags & CT_SEEN_NON_SYN))
		life = LIFETIME_TCP_SYN;
	else if (service)
		life = LIFETIME_SVC_TCP;
	else
		life = LIFETIME_TCP;
	fpt_set_lifetime(t, &hit->ref, CT_WORDS, now + life);
	return flags;
}

/*
 * The conntrack steps as BPF-to-BPF functions of their own (global: the verifier checks
 * each once, not once per call site, which keeps the programs that use them several times
 * under its complexity limit). Each opens its table by `tcp` (one header read) and returns
 * -1 when the pinned map is not a conntrack table of this layout.
 */

/* A key to look up or create, its map, and the time: the functions take five arguments at
 * most. */
struct ct_req {
	__u64 k0;
	__u64 k1;
	__u32 tcp;
	__u32 now;
};

static __always_inline struct ct_req ct_req(int tcp, struct ct_key k, __u32 now)
{
	struct ct_req q = { .k0 = k.w0, .k1 = k.w1, .tcp = tcp, .now = now };

	return q;
}

/* Conntrack::lookup_flow: bit 0 = the reply entry was found (in *reply), bit 1 = the
 * packet's own (in *fwd). */
__attribute__((noinline)) int fp_ct_flow(const struct ct_req *q, struct ct_hit *reply,
					 struct ct_hit *fwd)
{
	struct ct_key k;
	int a = 0, b = 0;
	struct fpt t;

	if (!q || !reply || !fwd || ct_open(&t, q->tcp))
		return -1;
	k.w0 = q->k0;
	k.w1 = q->k1;
	ct_lookup_flow(&t, q->tcp, k, q->now, reply, &a, fwd, &b);
	return a | b << 1;
}

/* Conntrack::lookup: 1 found (in *hit), 0 not. */
__attribute__((noinline)) int fp_ct_get(const struct ct_req *q, struct ct_hit *hit)
{
	struct ct_key k;
	struct fpt t;

	if (!q || !hit || ct_open(&t, q->tcp))
		return -1;
	k.w0 = q->k0;
	k.w1 = q->k1;
	return ct_lookup(&t, q->tcp, k, q->now, hit);
}

/* Conntrack::create: 1 created (in *hit), 0 the bucket could not take it. */
__attribute__((noinline)) int fp_ct_new(const struct ct_req *q, const struct ct_state *st,
					__u32 lifetime, struct ct_hit *hit)
{
	struct ct_key k;
	struct fpt t;

	if (!q || !st || !hit || ct_open(&t, q->tcp))
		return -1;
	k.w0 = q->k0;
	k.w1 = q->k1;
	return ct_create(&t, q->tcp, k, st, lifetime, q->now, hit);
}

/* Conntrack::touch: the flags after the update. */
__attribute__((noinline)) int fp_ct_touch(const struct ct_hit *hit, __u32 reply, __u32 tcp_flags,
					  __u32 now, __u32 service)
{
	struct fpt t;

	if (!hit || ct_open(&t, hit->tcp))
		return -1;
	return ct_touch(&t, hit, reply, tcp_flags, now, service);
}

/* The conntrack clock: whole seconds of CLOCK_MONOTONIC, as the workers' (clock.rs). */
static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
}

#endif /* FP_CT_H */
