/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fastpath's shared table (control/tables/src/shared_table.rs), from the kernel side.
 *
 * Conntrack and session affinity are written per connection by whichever datapath sees
 * the packet: the AF_XDP workers or the tc programs. Both work on the same memory: a
 * BPF_MAP_TYPE_ARRAY of 64-byte lines made with BPF_F_MMAPABLE, which the control plane
 * creates, pins and maps into the workers (control/tables/src/shm.rs), and which a tc
 * program reaches by its pin. This file is the C twin of the Rust table's read and
 * write protocol; xdp-redirect/tests/tc_table.rs runs both against one map.
 *
 * Layout, in lines of 64 bytes (struct fp_line):
 *   lines 0..63   the table header (4096 bytes, shared_table.rs FILE_HEADER_BYTES):
 *                 line 0 = magic "FPSHTBL1", layout version, key words K, value words
 *                 W, slot bytes, bucket count; line 2 = the entry count (an atomic).
 *   next B lines  the buckets: eight tag words each (one line per bucket)
 *   next 8*B      the slots: K key words, W value words, one lifetime word (one line)
 *
 * A tag is a seqlock word: state (2 bits: empty, busy, valid) | generation (30) << 2 |
 * fingerprint (16) << 32. Readers load the tag, the key, then the tag again; writers
 * claim a slot with a CAS to busy (next generation), write, and publish valid with a
 * second CAS (an atomic is a full barrier in BPF, so the words are visible before the
 * tag on every architecture). The lifetime word and stamped value words carry the
 * slot's generation in their upper 32 bits; in-place updates are CASes that check it,
 * so an update through a stale handle never lands in the next owner's entry.
 *
 * Only K = 2 (IPv4 conntrack tuples, affinity keys) is ported.
 */
#ifndef FP_TABLE_H
#define FP_TABLE_H

#include "fp_maps.h"

#define FPT_HEADER_LINES 64
#define FPT_COUNT_LINE 2
#define FPT_WAYS 8
/* "FPSHTBL1", the bytes in order read as a little-endian word. */
#define FPT_MAGIC 0x314c425448535046ULL
#define FPT_VERSION 1ULL
#define FPT_ST_EMPTY 0ULL
#define FPT_ST_BUSY 1ULL
#define FPT_ST_VALID 2ULL
#define FPT_ST_MASK 3ULL
#define FPT_GEN_MASK 0x3fffffffULL
#define FPT_FP_MASK (0xffffULL << 32)
/* The largest table the header may claim (2^23 buckets = 64M entries). */
#define FPT_MAX_BUCKETS (1ULL << 23)

#ifndef READ_ONCE
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#endif
#define fpt_barrier() asm volatile("" ::: "memory")

/* A shared table's map: an mmapable array of lines, created and pinned by the control plane
 * and opened by its pin (max_entries here is a placeholder: the pinned map's size is
 * used). */
#define FP_SHARED_TABLE(name)                                                              \
	struct {                                                                           \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                          \
		__uint(max_entries, 1);                                                    \
		__uint(map_flags, BPF_F_MMAPABLE);                                         \
		__type(key, __u32);                                                        \
		__type(value, struct fp_line);                                             \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                       \
	} name SEC(".maps")

/* One table: its map and geometry, read from its header. */
struct fpt {
	void *map;
	__u32 buckets;
	__u32 mask;
};

/* A found slot: its index and the tag it had when found. */
struct fpt_ref {
	__u32 idx;
	__u32 found;
	__u64 tag;
};

static __always_inline struct fp_line *fpt_line(void *map, __u32 i)
{
	return bpf_map_lookup_elem(map, &i);
}

static __always_inline __u64 fpt_make_tag(__u64 st, __u64 gen, __u64 fp)
{
	return st | (gen & FPT_GEN_MASK) << 2 | fp << 32;
}

static __always_inline __u64 fpt_gen(__u64 tag)
{
	return (tag >> 2) & FPT_GEN_MASK;
}

/* Has `lifetime` passed at `now` (seconds, wrapping)? As shared_table::expired. */
static __always_inline int fpt_expired(__u32 lifetime, __u32 now)
{
	return (__s32)(now - lifetime) > 0;
}

/* The header's checks: magic, layout version, K = 2, `val_words` = W, 64-byte slots, a
 * power-of-two bucket count. 0 when the map is a table of that shape. */
static __always_inline int fpt_open(struct fpt *t, void *map, __u32 val_words)
{
	struct fp_line *h = fpt_line(map, 0);
	__u64 b;

	if (!h)
		return -1;
	b = h->w[3];
	if (h->w[0] != FPT_MAGIC || h->w[1] != (FPT_VERSION | 2ULL << 32) ||
	    h->w[2] != (val_words | 64ULL << 32) || !b || b > FPT_MAX_BUCKETS || (b & (b - 1)))
		return -1;
	t->map = map;
	t->buckets = b;
	t->mask = b - 1;
	return 0;
}

static __always_inline struct fp_line *fpt_bucket(const struct fpt *t, __u32 b)
{
	return fpt_line(t->map, FPT_HEADER_LINES + b);
}

static __always_inline struct fp_line *fpt_slot(const struct fpt *t, __u32 idx)
{
	return fpt_line(t->map, FPT_HEADER_LINES + t->buckets + idx);
}

/* shared_table::mix for two key words: k0 * phi ^ k1, then two multiply-xorshift rounds. */
static __always_inline __u64 fpt_mix2(__u64 k0, __u64 k1)
{
	__u64 h = k0 * 0x9e3779b97f4a7c15ULL;

	h ^= k1;
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ULL;
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ULL;
	return h ^ (h >> 29);
}

/* Slot `s`'s two key words, if its tag is still `t1` after reading them (the seqlock
 * read). 1 when the key was read whole. */
static __always_inline int fpt_key_if(struct fp_line *b, __u32 way, struct fp_line *s, __u64 t1,
				      __u64 *k0, __u64 *k1)
{
	*k0 = READ_ONCE(s->w[0]);
	*k1 = READ_ONCE(s->w[1]);
	fpt_barrier();
	return READ_ONCE(b->w[way & 7]) == t1;
}

/* Find keys `a` and `b`, which hash (`h`) to the same bucket -- the two directions of a
 * connection -- in one pass over it (SharedTable::lookup_pair). */
static __always_inline void fpt_lookup_pair(const struct fpt *t, __u64 h, __u64 a0, __u64 a1,
					    __u64 b0, __u64 b1, struct fpt_ref *ra,
					    struct fpt_ref *rb)
{
	__u32 bi = h & t->mask;
	__u64 want = FPT_ST_VALID | (h >> 48) << 32;
	struct fp_line *bl = fpt_bucket(t, bi);

	ra->found = 0;
	ra->idx = 0;
	ra->tag = 0;
	rb->found = 0;
	rb->idx = 0;
	rb->tag = 0;
	if (!bl)
		return;
#pragma unroll
	for (__u32 w = 0; w < FPT_WAYS; w++) {
		__u64 t1 = READ_ONCE(bl->w[w]), k0, k1;
		struct fp_line *s;

		if ((t1 & (FPT_ST_MASK | FPT_FP_MASK)) != want)
			continue;
		s = fpt_slot(t, bi * FPT_WAYS + w);
		if (!s || !fpt_key_if(bl, w, s, t1, &k0, &k1))
			continue;
		if (k0 == a0 && k1 == a1) {
			ra->idx = bi * FPT_WAYS + w;
			ra->tag = t1;
			ra->found = 1;
		} else if (k0 == b0 && k1 == b1) {
			rb->idx = bi * FPT_WAYS + w;
			rb->tag = t1;
			rb->found = 1;
		}
	}
}

/* Find one key (SharedTable::lookup). */
static __always_inline void fpt_lookup(const struct fpt *t, __u64 h, __u64 k0, __u64 k1,
				       struct fpt_ref *r)
{
	struct fpt_ref none = {};

	/* A pair lookup whose second key can never match: the all-ones words are no key
	 * this table holds (an IPv4 tuple's word 1 has 16 zero bits at the top). */
	fpt_lookup_pair(t, h, k0, k1, ~0ULL, ~0ULL, r, &none);
}

/* The value words and lifetime of a found slot, copied out under the seqlock: 0 if the
 * slot changed hands since it was found. `W` must be a constant (1..5). */
#define fpt_read(t, r, vals, W, life)                                                      \
	({                                                                                 \
		struct fp_line *__s = fpt_slot(t, (r)->idx);                               \
		struct fp_line *__b = fpt_bucket(t, (r)->idx / FPT_WAYS);                  \
		int __ok = 0;                                                              \
		if (__s && __b) {                                                          \
			_Pragma("unroll") for (int __i = 0; __i < (W); __i++)                   \
				(vals)[__i] = READ_ONCE(__s->w[2 + __i]);                          \
			*(life) = (__u32)READ_ONCE(__s->w[2 + (W)]);                       \
			fpt_barrier();                                                     \
			__ok = READ_ONCE(__b->w[(r)->idx % FPT_WAYS]) == (r)->tag;           \
		}                                                                          \
		__ok;                                                                      \
	})

/* OR `bits` into value word `i` (stamped with the slot's generation at insertion) if the
 * slot still belongs to the entry `r` found (SharedTable::fetch_or_stamped). 0 if it
 * changed hands (nothing written). */
static __always_inline int fpt_fetch_or_stamped(const struct fpt *t, const struct fpt_ref *r,
						__u32 i, __u32 bits)
{
	struct fp_line *s = fpt_slot(t, r->idx);
	__u64 gen = fpt_gen(r->tag), cur, next, seen;

	if (!s || i > 7)
		return 0;
	cur = READ_ONCE(s->w[2 + i]);
	for (int tries = 0; tries < 4; tries++) {
		if ((cur >> 32) != gen)
			return 0;
		next = cur | bits;
		if (next == cur)
			return 1;
		seen = __sync_val_compare_and_swap(&s->w[2 + i], cur, next);
		if (seen == cur)
			return 1;
		cur = seen;
	}
	return 0;
}

/* Push a found slot's lifetime (its word after `W` value words) to `lifetime` if the
 * slot still belongs to the entry found (SharedTable::set_lifetime); a write only when it
 * changes. */
static __always_inline int fpt_set_lifetime(const struct fpt *t, const struct fpt_ref *r,
					    __u32 W, __u32 lifetime)
{
	struct fp_line *s = fpt_slot(t, r->idx);
	__u64 want = fpt_gen(r->tag) << 32 | lifetime, cur, seen;

	if (!s || W > 5)
		return 0;
	cur = READ_ONCE(s->w[2 + W]);
	for (int tries = 0; tries < 4; tries++) {
		if ((cur >> 32) != fpt_gen(r->tag))
			return 0;
		if (cur == want)
			return 1;
		seen = __sync_val_compare_and_swap(&s->w[2 + W], cur, want);
		if (seen == cur)
			return 1;
		cur = seen;
	}
	return 0;
}

/* Write a claimed slot (tag busy, generation `g`): key, values (word `stamp_at` stamped
 * with `g` when < W), lifetime; then publish it valid with fingerprint `fp`. */
static __always_inline int fpt_fill(const struct fpt *t, __u32 idx, __u64 busy, __u64 g,
				    __u64 fp, __u64 k0, __u64 k1, const __u64 *vals, __u32 W,
				    __u32 stamp_at, __u32 lifetime, struct fpt_ref *out)
{
	struct fp_line *s = fpt_slot(t, idx);
	struct fp_line *b = fpt_bucket(t, idx / FPT_WAYS);
	__u64 tag = fpt_make_tag(FPT_ST_VALID, g, fp);

	if (!s || !b || W > 5)
		return 0;
	s->w[0] = k0;
	s->w[1] = k1;
#pragma unroll
	for (__u32 i = 0; i < 5; i++) {
		if (i < W)
			s->w[2 + i] = i == stamp_at ? (g << 32 | (__u32)vals[i]) : vals[i];
	}
	s->w[2 + W] = g << 32 | lifetime;
	/* The publishing CAS orders every store above before the valid tag. */
	if (__sync_val_compare_and_swap(&b->w[idx % FPT_WAYS], busy, tag) != busy)
		return 0;
	out->idx = idx;
	out->tag = tag;
	out->found = 1;
	return 1;
}

/* Create key (k0, k1) with hash `h`, or replace its entry if it is there
 * (SharedTable::insert_with): an empty slot first, then an expired one, then the one
 * that expires first (evicted, as a BPF LRU map would). 0 only when every try lost a
 * race with another writer of the bucket. */
static __always_inline int fpt_insert(const struct fpt *t, __u64 h, __u64 k0, __u64 k1,
				      const __u64 *vals, __u32 W, __u32 stamp_at,
				      __u32 lifetime, __u32 now, struct fpt_ref *out)
{
	__u32 bi = h & t->mask;
	__u64 fp = h >> 48;
	struct fp_line *bl = fpt_bucket(t, bi);
	struct fpt_ref cur = {};

	out->found = 0;
	if (!bl || W > 5)
		return 0;
	fpt_lookup(t, h, k0, k1, &cur);
	if (cur.found) {
		__u64 g = (fpt_gen(cur.tag) + 1) & FPT_GEN_MASK;
		__u64 busy = fpt_make_tag(FPT_ST_BUSY, g, 0);

		if (__sync_val_compare_and_swap(&bl->w[cur.idx % FPT_WAYS], cur.tag, busy) !=
		    cur.tag)
			return 0;
		return fpt_fill(t, cur.idx, busy, g, fp, k0, k1, vals, W, stamp_at, lifetime,
				out);
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		__u32 pick = FPT_WAYS, pick_class = 3, pick_life = 0;
		__u64 pick_tag = 0;

		for (__u32 w = 0; w < FPT_WAYS; w++) {
			__u64 tg = READ_ONCE(bl->w[w & 7]);
			__u32 class, l = 0;
			struct fp_line *s;

			if (pick_class == 0)
				break;
			if ((tg & FPT_ST_MASK) == FPT_ST_EMPTY) {
				class = 0;
			} else if ((tg & FPT_ST_MASK) == FPT_ST_VALID) {
				s = fpt_slot(t, bi * FPT_WAYS + w);
				if (!s)
					continue;
				l = (__u32)READ_ONCE(s->w[2 + W]);
				class = fpt_expired(l, now) ? 1 : 2;
			} else {
				continue;
			}
			if (class < pick_class ||
			    (class == 2 && pick_class == 2 && (__s32)(l - pick_life) < 0)) {
				pick = w;
				pick_class = class;
				pick_life = l;
				pick_tag = tg;
			}
		}
		if (pick >= FPT_WAYS)
			continue;
		{
			__u32 idx = bi * FPT_WAYS + pick;
			__u64 g = (fpt_gen(pick_tag) + 1) & FPT_GEN_MASK;
			__u64 busy = fpt_make_tag(FPT_ST_BUSY, g, 0);
			struct fp_line *cnt;

			if (__sync_val_compare_and_swap(&bl->w[pick], pick_tag, busy) != pick_tag)
				continue;
			if (!fpt_fill(t, idx, busy, g, fp, k0, k1, vals, W, stamp_at, lifetime,
				      out))
				return 0;
			cnt = fpt_line(t->map, FPT_COUNT_LINE);
			if (cnt && pick_class == 0)
				__sync_fetch_and_add(&cnt->w[0], 1);
			return 1;
		}
	}
	return 0;
}

#endif /* FP_TABLE_H */
