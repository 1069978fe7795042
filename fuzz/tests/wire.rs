//! One target per packet parser: fastpath's view against etherparse on the same bytes
//! (accepts the same inputs, reads the same fields), and the in-place rewrites (TTL, NAT,
//! ICMP errors, VXLAN headers, ARP replies) checked by etherparse afterwards.

use bolero::check;
use etherparse::{
    ArpPacketSlice, Ethernet2HeaderSlice, Icmpv4Slice, Ipv4HeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};
use fastpath::wire::{
    self, ArpPacket, EthernetFrame, Ipv4Packet, icmp, l4, nat,
    nat::Side,
    vxlan::{self, Outer},
};
use fastpath_fuzz::Executions;
use fastpath_fuzz::mutate::FrameGen;
use fastpath_fuzz::oracle::{header_checksum_ok, ipv4_of, l4_checksum_ok};

fn all_seeds() -> &'static [Vec<u8>] {
    static S: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let mut v = fastpath_fuzz::seeds::pod_seeds().to_vec();
        v.extend_from_slice(fastpath_fuzz::seeds::underlay_seeds());
        v
    })
}

const GEN: FrameGen = FrameGen { seeds: all_seeds };

/// The IPv4 packets in a frame: the outer one (at 14) and, for VXLAN, the inner one.
fn ip_offsets(f: &[u8]) -> Vec<usize> {
    let mut v = vec![14];
    if let Some(inner) = fastpath_fuzz::oracle::vxlan_inner(f) {
        v.push(inner + 14);
    }
    v.into_iter().filter(|&o| o <= f.len()).collect()
}

#[test]
fn ethernet() {
    let ex = Executions::new("ethernet");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        let ours = EthernetFrame::new_checked(&f[..]);
        let theirs = Ethernet2HeaderSlice::from_slice(f);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "{f:02x?}");
        if let (Ok(o), Ok(t)) = (ours, theirs) {
            assert_eq!(o.dst().0, t.destination());
            assert_eq!(o.src().0, t.source());
            assert_eq!(u16::from(o.ethertype()), t.ether_type().0);
        }
    });
}

#[test]
fn arp() {
    let ex = Executions::new("arp");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        let Some(b) = f.get(14..) else { return };
        let ours = ArpPacket::new_checked(b);
        let theirs = ArpPacketSlice::from_slice(b);
        let ipv4_eth = theirs.as_ref().is_ok_and(|a| {
            a.hw_addr_type() == etherparse::ArpHardwareId::ETHERNET
                && a.proto_addr_type() == etherparse::EtherType::IPV4
                && a.hw_addr_size() == 6
                && a.proto_addr_size() == 4
        });
        assert_eq!(ours.is_ok(), ipv4_eth, "{b:02x?}");
        let (Ok(o), Ok(t)) = (ours, theirs) else {
            return;
        };
        assert_eq!(o.operation(), t.operation().0);
        assert_eq!(o.sender_mac().0, t.sender_hw_addr());
        assert_eq!(&o.sender_ip()[..], t.sender_protocol_addr());
        assert_eq!(o.target_mac().0, t.target_hw_addr());
        assert_eq!(&o.target_ip()[..], t.target_protocol_addr());
        // The reply built in place.
        let mut r = b.to_vec();
        let mac = control::maps::MacAddr([0x3e, 1, 2, 3, 4, 5]);
        ArpPacket::new_checked(&mut r[..]).unwrap().make_reply(mac);
        let a = ArpPacketSlice::from_slice(&r).unwrap();
        assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
        assert_eq!(a.sender_hw_addr(), mac.0);
        assert_eq!(a.sender_protocol_addr(), t.target_protocol_addr());
        assert_eq!(a.target_hw_addr(), t.sender_hw_addr());
        assert_eq!(a.target_protocol_addr(), t.sender_protocol_addr());
    });
}

#[test]
fn ipv4() {
    let ex = Executions::new("ipv4");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        for off in ip_offsets(f) {
            let b = &f[off..];
            let ours = Ipv4Packet::new_checked(b);
            let theirs = Ipv4HeaderSlice::from_slice(b);
            let lengths_ok = |h: &Ipv4HeaderSlice| {
                let total = h.total_len() as usize;
                total >= h.slice().len() && total <= b.len()
            };
            match (&ours, &theirs) {
                (Ok(p), Ok(h)) => {
                    assert!(lengths_ok(h), "we accept total length {}", h.total_len());
                    assert_eq!(p.src(), h.source());
                    assert_eq!(p.dst(), h.destination());
                    assert_eq!(p.protocol(), h.protocol().0);
                    assert_eq!(p.ttl(), h.ttl());
                    assert_eq!(p.ident(), h.identification());
                    assert_eq!(p.total_len(), h.total_len() as usize);
                    assert_eq!(p.header_len(), h.slice().len());
                    assert_eq!(p.dont_frag(), h.dont_fragment());
                    assert_eq!(p.more_frags(), h.more_fragments());
                    assert_eq!(
                        p.frag_offset(),
                        u16::from(h.fragments_offset()) as usize * 8
                    );
                    assert_eq!(p.verify_checksum(), header_checksum_ok(h));
                    assert_eq!(p.payload().len(), p.total_len() - p.header_len());
                }
                (Ok(_), Err(e)) => panic!("we accept what etherparse refuses ({e}): {b:02x?}"),
                (Err(_), Ok(h)) => assert!(
                    !lengths_ok(h),
                    "we refuse a header etherparse accepts: {b:02x?}"
                ),
                (Err(_), Err(_)) => {}
            }
            let Ok(p) = ours else { continue };
            let (total, was_ok) = (p.total_len(), p.verify_checksum());
            // TTL − 1 and a full recompute keep the header right.
            let mut c = b[..total].to_vec();
            let mut q = Ipv4Packet::new_checked(&mut c[..]).unwrap();
            if q.ttl() > 1 {
                let t = q.ttl();
                assert_eq!(q.decrement_ttl(), t - 1);
                let h = Ipv4HeaderSlice::from_slice(&c).unwrap();
                assert_eq!(
                    header_checksum_ok(&h),
                    was_ok,
                    "TTL-1 changed checksum validity"
                );
            }
            let mut q = Ipv4Packet::new_checked(&mut c[..]).unwrap();
            q.fill_checksum();
            assert!(header_checksum_ok(
                &Ipv4HeaderSlice::from_slice(&c).unwrap()
            ));
        }
    });
}

/// The frame's first IPv4 packet with a complete L4 header of protocol `proto` (for the
/// TCP, UDP and ICMP targets): (offset of the IP header, the IP packet).
fn with_l4(f: &[u8], proto: u8) -> Vec<(usize, Vec<u8>)> {
    ip_offsets(f)
        .into_iter()
        .filter_map(|off| {
            let p = Ipv4Packet::new_checked(&f[off..]).ok()?;
            (p.protocol() == proto && p.frag_offset() == 0)
                .then(|| (off, f[off..off + p.total_len()].to_vec()))
        })
        .collect()
}

/// NAT both sides of a (checked) packet with addresses and ports from the fuzzed bytes
/// themselves; the header checksum and the L4 checksum keep their validity.
fn nat_keeps_checksums(pkt: &[u8]) {
    let frame = [&[0u8; 12][..], &[0x08, 0x00], pkt].concat();
    let before = ipv4_of(&frame).map(|ip| (header_checksum_ok(&ip.header()), l4_checksum_ok(&ip)));
    let Some((h_ok, l4_ok)) = before else { return };
    let mut c = pkt.to_vec();
    let salt = pkt.iter().fold(0u32, |a, b| a.rotate_left(5) ^ *b as u32);
    nat::rewrite(&mut c, Side::Dst, salt.to_be_bytes(), salt as u16);
    nat::rewrite(
        &mut c,
        Side::Src,
        (!salt).to_be_bytes(),
        (salt >> 16) as u16,
    );
    let frame = [&[0u8; 12][..], &[0x08, 0x00], &c].concat();
    let ip = ipv4_of(&frame).expect("still IPv4");
    assert_eq!(
        header_checksum_ok(&ip.header()),
        h_ok,
        "NAT and the IP checksum"
    );
    if l4_ok == Some(true) {
        assert_ne!(
            l4_checksum_ok(&ip),
            Some(false),
            "NAT broke a right L4 checksum"
        );
    }
    assert_eq!(ip.header().destination(), salt.to_be_bytes());
}

#[test]
fn tcp() {
    let ex = Executions::new("tcp");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        for (_, pkt) in with_l4(f, 6) {
            let p = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            let b = p.payload();
            let ours = l4::parse(6, b);
            let theirs = TcpHeaderSlice::from_slice(b);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{b:02x?}");
            if let (
                Ok(l4::L4::Tcp {
                    sport,
                    dport,
                    flags,
                }),
                Ok(t),
            ) = (ours, theirs)
            {
                assert_eq!((sport, dport), (t.source_port(), t.destination_port()));
                assert_eq!(flags, t.slice()[13]);
                nat_keeps_checksums(&pkt);
            }
        }
    });
}

#[test]
fn udp() {
    let ex = Executions::new("udp");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        for (_, pkt) in with_l4(f, 17) {
            let p = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            let b = p.payload();
            let ours = l4::parse(17, b);
            let theirs = UdpHeaderSlice::from_slice(b);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{b:02x?}");
            let (Ok(l4::L4::Udp { sport, dport }), Ok(u)) = (ours, theirs) else {
                continue;
            };
            assert_eq!((sport, dport), (u.source_port(), u.destination_port()));
            let ulen = u.length() as usize;
            let fits = (8..=b.len()).contains(&ulen);
            assert_eq!(l4::udp_length(b), fits.then_some(ulen));
            if fits {
                let frame = [&[0u8; 12][..], &[0x08, 0x00], &pkt[..]].concat();
                let theirs_ok = l4_checksum_ok(&ipv4_of(&frame).unwrap());
                let ours_ok = l4::udp_checksum_ok(p.src(), p.dst(), &b[..ulen]);
                // (The oracle does not judge a first fragment: the datagram is not all there.)
                if !p.more_frags() {
                    assert_eq!(Some(ours_ok), theirs_ok, "UDP checksum verdicts differ");
                }
                nat_keeps_checksums(&pkt);
                // A UDP checksum of 0 ("none") stays 0 through NAT.
                if u.checksum() == 0 {
                    let mut c = pkt.clone();
                    nat::rewrite(&mut c, Side::Dst, [1, 2, 3, 4], 9);
                    let hl = p.header_len();
                    assert_eq!(&c[hl + 6..hl + 8], &[0, 0]);
                }
            }
        }
    });
}

#[test]
fn icmp() {
    let ex = Executions::new("icmp");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        for (_, pkt) in with_l4(f, 1) {
            let p = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            let b = p.payload();
            let ours = l4::parse(1, b);
            let theirs = Icmpv4Slice::from_slice(b);
            if b.len() >= 8 {
                // Any 8 bytes are an ICMP header to us; etherparse may want more for some
                // types (timestamps), never less.
                assert!(ours.is_ok());
            } else {
                assert!(ours.is_err() && theirs.is_err());
            }
            if let (Ok(l4::L4::Icmp { ty, code, id }), Ok(m)) = (ours, theirs) {
                assert_eq!((ty, code), (m.type_u8(), m.code_u8()));
                if ty == 0 || ty == 8 {
                    assert_eq!(id, u16::from_be_bytes([b[4], b[5]]));
                }
            }
            // An ICMP error about this packet, as the node sends one back to a pod.
            let mut buf = pkt.clone();
            buf.resize(buf.len().max(28 + 576), 0);
            let n = icmp::make_error(&mut buf, pkt.len(), [10, 1, 0, 1], 3, 4, 1450);
            let frame = [&[0u8; 12][..], &[0x08, 0x00], &buf[..n]].concat();
            let ip = ipv4_of(&frame).expect("the error is IPv4");
            assert!(header_checksum_ok(&ip.header()));
            assert_eq!(ip.header().destination(), p.src());
            assert_eq!(l4_checksum_ok(&ip), Some(true), "ICMP checksum");
            let m = Icmpv4Slice::from_slice(ip.payload()).unwrap();
            assert_eq!((m.type_u8(), m.code_u8()), (3, 4));
            assert!(pkt.starts_with(m.payload()), "quotes the original");
            assert!(n <= 576);
        }
    });
}

#[test]
fn vxlan() {
    let ex = Executions::new("vxlan");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        // The header parser against RFC 7348 as Linux reads it: exactly the I flag, zero
        // reserved bytes.
        for at in [42usize, 46, 50] {
            let Some(b) = f.get(at..) else { continue };
            let want = (b.len() >= 8 && b[0] == 0x08 && b[1..4] == [0, 0, 0] && b[7] == 0)
                .then(|| u32::from_be_bytes([0, b[4], b[5], b[6]]));
            assert_eq!(vxlan::parse(b).ok().map(|h| h.vni), want, "{b:02x?}");
        }
        // The outer headers built around this frame as the inner one.
        let seed = f
            .iter()
            .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
        let o = Outer {
            dst_mac: control::maps::MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: control::maps::MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: (seed as u32).to_be_bytes(),
            dst_ip: ((seed >> 32) as u32).to_be_bytes(),
            ip_id: seed as u16,
            sport: vxlan::flow_src_port(seed as u32),
            dport: 8472,
            vni: (seed as u32) & vxlan::MAX_VNI,
        };
        assert!((32768..61000).contains(&o.sport));
        let mut out = vec![0u8; vxlan::ENCAP_LEN];
        vxlan::emit(&mut out, &o, f.len());
        out.extend_from_slice(f);
        let ip = ipv4_of(&out).expect("outer IPv4");
        let h = ip.header();
        assert!(header_checksum_ok(&h));
        assert_eq!(h.total_len() as usize, out.len() - 14);
        let u = UdpHeaderSlice::from_slice(ip.payload()).unwrap();
        assert_eq!(u.length() as usize, out.len() - 34);
        assert_eq!((u.destination_port(), u.checksum()), (8472, 0));
        assert_eq!(vxlan::parse(&out[42..]).unwrap().vni, o.vni);
        assert_eq!(&out[50..], &f[..]);
    });
}

/// The checksum helpers against etherparse's on arbitrary bytes.
#[test]
fn checksum() {
    let ex = Executions::new("checksum");
    check!().with_generator(GEN).for_each(|f| {
        ex.tick();
        let mut s = etherparse::checksum::Sum16BitWords::new();
        s = s.add_slice(f);
        // etherparse sums native-endian words: its result is the wire bytes in native order.
        assert_eq!(
            wire::checksum(f).to_be_bytes(),
            s.ones_complement().to_ne_bytes()
        );
    });
}
