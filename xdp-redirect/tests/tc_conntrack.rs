//! The tc datapath's conntrack (`src/bpf/fp_ct.h`, the C twin of the workers' shared
//! table) against the workers' own (`control::ct::Conntrack`) on one pinned table: what one
//! side creates the other finds, with the same values, TCP state and entry count. The C
//! side runs in the kernel through BPF_PROG_TEST_RUN (`fp_ct_probe`), over the very pinned
//! arrays `fastpath run` makes. Needs root and bpffs (as CI runs).
use std::path::PathBuf;

use aya::programs::{TestRun, TestRunOptions};
use control::ct::{Conntrack, CtSizes, CtState};
use control::maps::ct::{
    CT_RX_CLOSING, CT_SEEN_NON_SYN, CT_TX_CLOSING, CtTuple4, TUPLE_F_IN, TUPLE_F_OUT,
};
use xdp_redirect::TcPrograms;

const REPLY: u32 = 1;
const ESTABLISHED: u32 = 2;
const CREATED: u32 = 3;
const NO_TABLE: u32 = 5;

/// A pin directory of its own under bpffs, removed at the end.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> PinDir {
        let d = PathBuf::from(format!("/sys/fs/bpf/fp-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("bpffs at /sys/fs/bpf (run as root)");
        PinDir(d)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lock_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fp-test-locks-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Ethernet + IPv4 + TCP (with `flags`) or UDP, `src:sport → dst:dport`.
fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tcp: bool, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let l4 = if tcp { 20 } else { 8 };
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = if tcp { 6 } else { 17 };
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!((folded & 0xffff) + (folded >> 16)) as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut h = vec![0u8; l4];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    if tcp {
        h[12] = 0x50;
        h[13] = flags;
    } else {
        h[4..6].copy_from_slice(&8u16.to_be_bytes());
    }
    f.extend_from_slice(&h);
    f
}

/// Run `fp_ct_probe` on `f` with skb->mark = `mark`: (return value, cb[0], cb[1]).
fn probe(tc: &mut TcPrograms, f: &[u8], mark: u32) -> (u32, u32, u32) {
    let prog = tc
        .program("fp_ct_probe")
        .expect("the verifier takes fp_ct_probe");
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; 192];
    let mut out = vec![0u8; f.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(f),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    let cb = |i: usize| u32::from_ne_bytes(ctx_out[48 + 4 * i..52 + 4 * i].try_into().unwrap());
    (r.return_value, cb(0), cb(1))
}

fn now() -> u32 {
    control::clock::now()
}

const A: [u8; 4] = [10, 200, 0, 1];
const B: [u8; 4] = [10, 200, 0, 2];
const C: [u8; 4] = [10, 201, 0, 3];

/// The workers' entries, the kernel finds: an OUT entry as the packet's own
/// (established), an IN entry as the reply of the connection it belongs to — with the
/// identity the worker recorded — and their TCP state moves as the workers' would.
#[test]
fn entries_the_workers_made_are_found_by_the_tc_datapath() {
    let pins = PinDir::new("w2k");
    let (ct, _) = Conntrack::open_pinned(
        &pins.0,
        &lock_dir("w2k"),
        CtSizes {
            tcp: 1024,
            any: 512,
        },
    )
    .unwrap();
    let mut tc = TcPrograms::open(&pins.0).unwrap();
    let t = now();
    let st = |id| CtState {
        src_sec_id: id,
        ..Default::default()
    };
    // A → B: this node's pod A opened it (OUT); C → A: pod A accepted it (IN).
    let out = CtTuple4::connection(A, B, 40000, 80, 6, TUPLE_F_OUT);
    ct.create(&out, &st(4242), t + 60, t).unwrap();
    let inn = CtTuple4::connection(C, A, 50000, 8080, 6, TUPLE_F_IN);
    ct.create(&inn, &st(777), t + 60, t).unwrap();

    // A's next packet (ACK) on its own connection.
    let (r, flags, id) = probe(&mut tc, &frame(A, B, 40000, 80, true, 0x10), 0);
    assert_eq!((r, id), (ESTABLISHED, 4242));
    assert_eq!(flags as u16 & CT_SEEN_NON_SYN, CT_SEEN_NON_SYN);
    // A answers C: the reply of C's connection.
    let (r, _, id) = probe(&mut tc, &frame(A, C, 8080, 50000, true, 0x12), 0);
    assert_eq!((r, id), (REPLY, 777));
    // What the kernel wrote, the workers read: the ACK's flags and a TCP lifetime.
    let hit = ct.lookup(&out, now()).unwrap();
    assert_eq!(hit.state.flags & CT_SEEN_NON_SYN, CT_SEEN_NON_SYN);
    assert_eq!(hit.state.tx_flags_seen, 0x10);
    assert!(
        hit.lifetime >= t + 7990,
        "lifetime {} pushed to TCP's 8000 s",
        hit.lifetime
    );
    let hit = ct.lookup(&inn, now()).unwrap();
    assert_eq!(
        hit.state.rx_flags_seen, 0x12,
        "the reply's SYN-ACK, as rx flags"
    );
    // A FIN from A on its connection closes its direction (tx); on C's, the reply
    // direction (rx).
    let (r, flags, _) = probe(&mut tc, &frame(A, B, 40000, 80, true, 0x11), 0);
    assert_eq!(r, ESTABLISHED);
    assert_eq!(
        flags as u16 & (CT_RX_CLOSING | CT_TX_CLOSING),
        CT_TX_CLOSING
    );
    let (r, flags, _) = probe(&mut tc, &frame(A, C, 8080, 50000, true, 0x11), 0);
    assert_eq!(r, REPLY);
    assert_eq!(
        flags as u16 & (CT_RX_CLOSING | CT_TX_CLOSING),
        CT_RX_CLOSING
    );
    // The workers see both; B's FIN (the workers' touch of a reply, as on
    // delivery to A) finishes A's connection: closing both ways, short lifetime.
    let hit = ct.lookup(&out, now()).unwrap();
    assert_eq!(hit.state.flags & CT_TX_CLOSING, CT_TX_CLOSING);
    ct.touch(&hit, true, 0x11, now(), false);
    let (r, flags, _) = probe(&mut tc, &frame(A, B, 40000, 80, true, 0x10), 0);
    assert_eq!(r, ESTABLISHED);
    assert_eq!(
        flags as u16 & (CT_RX_CLOSING | CT_TX_CLOSING),
        CT_RX_CLOSING | CT_TX_CLOSING
    );
    let hit = ct.lookup(&out, now()).unwrap();
    assert!(hit.state.closing());
    assert!(hit.lifetime <= now() + 10, "closing: 10 s");
    assert_eq!(ct.tcp.len(), 2, "no entry was added by the lookups");
}

/// New connections the kernel creates, the workers find — key, identity, lifetime,
/// TCP flags — and count; hundreds of keys land in the buckets the Rust hash puts them
/// in (the two hashes agree), in both directions.
#[test]
fn entries_the_tc_datapath_made_are_found_by_the_workers() {
    let pins = PinDir::new("k2w");
    let (ct, _) = Conntrack::open_pinned(
        &pins.0,
        &lock_dir("k2w"),
        CtSizes {
            tcp: 4096,
            any: 4096,
        },
    )
    .unwrap();
    let mut tc = TcPrograms::open(&pins.0).unwrap();
    let (r, flags, id) = probe(&mut tc, &frame(A, B, 33000, 53, false, 0), 9001);
    assert_eq!((r, id), (CREATED, 9001));
    assert_eq!(flags, 0);
    let t = now();
    let key = CtTuple4::connection(A, B, 33000, 53, 17, TUPLE_F_OUT);
    let hit = ct.lookup(&key, t).expect("the kernel's entry");
    assert_eq!(hit.state.src_sec_id, 9001);
    assert!(
        (t + 59..=t + 61).contains(&hit.lifetime),
        "UDP lifetime 60 s: {}",
        hit.lifetime
    );
    assert_eq!(
        ct.any.len(),
        1,
        "the kernel counted its insertion where the workers count"
    );
    // The workers touch the kernel's entry: its stamped flags word takes the update.
    let f = ct.touch(&hit, false, 0, t, false);
    assert_eq!(f, 0);
    // A TCP SYN: created with the SYN lifetime and the SYN seen.
    assert_eq!(
        probe(&mut tc, &frame(A, C, 33001, 443, true, 0x02), 5).0,
        CREATED
    );
    let hit = ct
        .lookup(
            &CtTuple4::connection(A, C, 33001, 443, 6, TUPLE_F_OUT),
            now(),
        )
        .unwrap();
    assert_eq!((hit.state.tx_flags_seen, hit.state.flags), (0x02, 0));
    assert!(hit.lifetime <= now() + 60);
    // The workers' reply lookup finds the kernel's entry in the same probe.
    let (reply, fwd) = ct.lookup_flow(
        &CtTuple4::connection(C, A, 443, 33001, 6, TUPLE_F_IN),
        now(),
    );
    assert!(reply.is_some() && fwd.is_none());

    // Many keys, both ways.
    for i in 0..600u16 {
        let src = [10, 1, (i >> 8) as u8, i as u8];
        assert_eq!(
            probe(&mut tc, &frame(src, B, 1000 + i, 80, true, 0x02), i.into()).0,
            CREATED
        );
        let k = CtTuple4::connection(src, B, 1000 + i, 80, 6, TUPLE_F_OUT);
        assert_eq!(
            ct.lookup(&k, now()).map(|h| h.state.src_sec_id),
            Some(i.into()),
            "key {i}"
        );
        let theirs = [10, 2, (i >> 8) as u8, i as u8];
        let k = CtTuple4::connection(theirs, C, 2000 + i, 53, 17, TUPLE_F_OUT);
        ct.create(
            &k,
            &CtState {
                src_sec_id: 70000 + i as u32,
                ..Default::default()
            },
            now() + 60,
            now(),
        )
        .unwrap();
        let (r, _, id) = probe(&mut tc, &frame(theirs, C, 2000 + i, 53, false, 0), 0);
        assert_eq!((r, id), (ESTABLISHED, 70000 + i as u32), "key {i}");
    }
    assert_eq!(ct.tcp.len(), 601);
    assert_eq!(ct.any.len(), 601);
}

/// A pinned map that is not a conntrack table of this layout (here: an affinity-shaped
/// table where the UDP conntrack map belongs) is refused by the kernel side, not read.
#[test]
fn a_table_of_another_layout_is_refused() {
    let pins = PinDir::new("shape");
    let locks = lock_dir("shape");
    let (_ct, _): (Conntrack, _) =
        Conntrack::open_pinned(&pins.0, &locks, CtSizes { tcp: 64, any: 64 }).unwrap();
    // Replace the UDP map by a one-value-word table under its name.
    let _ = std::fs::remove_file(pins.0.join("cilium_ct_any4_global"));
    let (_other, _) = control::tables::AffinityMap::open_kept(
        control::shared_table::Keep::Pinned {
            pin: &pins.0.join("cilium_ct_any4_global"),
            lock: &locks.join("other.lock"),
        },
        "cilium_ct_any4_global",
        64,
    )
    .unwrap();
    let mut tc = TcPrograms::open(&pins.0).unwrap();
    assert_eq!(probe(&mut tc, &frame(A, B, 1, 2, false, 0), 0).0, NO_TABLE);
    assert_eq!(probe(&mut tc, &frame(A, B, 1, 2, true, 2), 0).0, CREATED);
}

/// The datapath's programs load: the verifier takes them over the pinned maps.
#[test]
fn the_tc_programs_pass_the_verifier() {
    let pins = PinDir::new("verify");
    let (_ct, _): (Conntrack, _) =
        Conntrack::open_pinned(&pins.0, &lock_dir("verify"), CtSizes { tcp: 64, any: 64 }).unwrap();
    let mut tc = TcPrograms::open(&pins.0).unwrap();
    for p in ["cil_from_container", "cil_from_netdev"] {
        if let Err(e) = tc.program(p) {
            panic!("{p}: {}", xdp_redirect::error_chain(&e));
        }
    }
}
