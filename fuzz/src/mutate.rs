//! Structure-aware mutations of seed frames, as bolero generators: every choice comes from
//! the driver, so the random engine explores them on stable and a coverage-guided engine
//! (libFuzzer/AFL through cargo-bolero) steers them.

use core::ops::Bound::{Excluded, Included};

use bolero::{Driver, ValueGenerator};
use fastpath::wire::{self, vxlan};

use crate::fixture;

/// Largest frame a worker can hold (a 4096-byte chunk less the 256 bytes of headroom).
pub const MAX_FRAME: usize = 4096 - 256;

/// A number in `0..n` (0 when `n` is 0).
fn pick<D: Driver>(d: &mut D, n: usize) -> Option<usize> {
    if n <= 1 {
        return Some(0);
    }
    d.gen_usize(Included(&0), Excluded(&n))
}

fn one_of<D: Driver, T: Copy>(d: &mut D, xs: &[T]) -> Option<T> {
    Some(xs[pick(d, xs.len())?])
}

/// Addresses the tables know, and some no one should send.
pub const ADDRS: &[[u8; 4]] = &[
    fixture::POD_IPS[0],
    fixture::POD_IPS[1],
    fixture::POD_IPS[2],
    fixture::ROUTER,
    fixture::NODE_IP,
    fixture::PEER_IP,
    fixture::OUTSIDE,
    fixture::EXTERNAL_IP,
    fixture::REMOTE_POD,
    [10, 2, 0, 99],
    [10, 96, 0, 10],
    [10, 96, 0, 20],
    [10, 96, 0, 30],
    [10, 96, 0, 40],
    [10, 96, 0, 50],
    [10, 96, 0, 60],
    [10, 96, 0, 70],
    [8, 8, 8, 8],
    [8, 8, 4, 4],
    [0, 0, 0, 0],
    [255, 255, 255, 255],
    [127, 0, 0, 1],
    [224, 0, 0, 1],
];

/// Ports the tables know (service ports, target ports, NodePorts, the tunnel port).
pub const PORTS: &[u16] = &[
    80, 8080, 443, 53, 5353, 30080, 30053, 8472, 5000, 5050, 5100, 7, 22, 0, 65535, 32768, 61000,
];

/// MACs: the node's own, the pods', broadcast, multicast, zero.
const MACS: &[[u8; 6]] = &[
    fixture::NODE_MAC.0,
    fixture::PEER_MAC.0,
    fixture::LXC_MACS[0].0,
    fixture::POD_MACS[0].0,
    [0xff; 6],
    [0x01, 0x00, 0x5e, 0, 0, 1],
    [0x33, 0x33, 0, 0, 0, 1],
    [0; 6],
];

/// Where the IPv4 header of the (outer or inner) frame starting at `base` sits, and its
/// header length, if it looks like one.
fn ipv4_at(f: &[u8], base: usize) -> Option<(usize, usize)> {
    let ip = base + 14;
    if f.len() < ip + 20 || f[base + 12..base + 14] != [0x08, 0x00] {
        return None;
    }
    let ihl = (f[ip] & 0x0f) as usize * 4;
    (ihl >= 20 && f.len() >= ip + ihl).then_some((ip, ihl))
}

/// Is the frame at `base` VXLAN (IPv4/UDP to 8472)? The inner frame's offset.
fn inner_of(f: &[u8], base: usize) -> Option<usize> {
    let (ip, ihl) = ipv4_at(f, base)?;
    let udp = ip + ihl;
    (f[ip + 9] == 17 && f.len() >= udp + 16 + 14 && f[udp + 2..udp + 4] == 8472u16.to_be_bytes())
        .then_some(udp + 16)
}

/// Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum of the frame at
/// `base` (the inner frame of a VXLAN frame first), wherever the lengths allow. A UDP
/// checksum of 0 ("none") stays 0.
pub fn fix_at(f: &mut [u8], base: usize) {
    if let Some(inner) = inner_of(f, base) {
        fix_at(f, inner);
    }
    let Some((ip, ihl)) = ipv4_at(f, base) else {
        return;
    };
    let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) as usize;
    f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = wire::checksum(&f[ip..ip + ihl]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let frag = u16::from_be_bytes([f[ip + 6], f[ip + 7]]) & 0x3fff != 0;
    if frag || total < ihl || ip + total > f.len() {
        return;
    }
    let (proto, l4) = (f[ip + 9], ip + ihl);
    let end = ip + total;
    let at = match proto {
        6 if end >= l4 + 20 => l4 + 16,
        17 if end >= l4 + 8 => {
            if f[l4 + 6..l4 + 8] == [0, 0] {
                return;
            }
            l4 + 6
        }
        1 if end >= l4 + 8 => l4 + 2,
        _ => return,
    };
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum = wire::ones_sum(&f[l4..end]) as u32;
    if proto != 1 {
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[ip + 12..ip + 20]);
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&((end - l4) as u16).to_be_bytes());
        sum += wire::ones_sum(&pseudo) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// [`fix_at`] for a whole frame.
pub fn fix_checksums(f: &mut [u8]) {
    fix_at(f, 0);
}

/// One structure-aware mutation of `f`, at the outer or (for VXLAN) the inner frame.
fn mutate_once<D: Driver>(d: &mut D, f: &mut Vec<u8>, seeds: &[Vec<u8>]) -> Option<()> {
    let base = match inner_of(f, 0) {
        Some(inner) if d.gen_bool(Some(0.5))? => inner,
        _ => 0,
    };
    let ip = ipv4_at(f, base);
    let set16 = |f: &mut Vec<u8>, at: usize, v: u16| {
        if f.len() >= at + 2 {
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    };
    match pick(d, 17)? {
        0 if !f.is_empty() => {
            let i = pick(d, f.len())?;
            f[i] ^= 1 << pick(d, 8)?;
        }
        1 if !f.is_empty() => {
            let i = pick(d, f.len())?;
            f[i] = one_of(d, &[0u8, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x40, 0x45, 0x08])?;
        }
        2 => {
            let n = pick(d, f.len() + 1)?;
            f.truncate(n);
        }
        3 => {
            let at = base
                + one_of(
                    d,
                    &[
                        0usize, 6, 13, 14, 20, 33, 34, 37, 38, 41, 42, 49, 50, 53, 54, 63, 64,
                    ],
                )?;
            f.truncate(at.min(f.len()));
        }
        4 => {
            let n = one_of(d, &[1usize, 2, 4, 7, 60, 200, 1500, 3000])?;
            let b = one_of(d, &[0u8, 0xff, 0xa5])?;
            let keep = MAX_FRAME.saturating_sub(f.len()).min(n);
            f.extend(std::iter::repeat_n(b, keep));
        }
        5 if ip.is_some() => {
            let (ip, _) = ip?;
            match pick(d, 6)? {
                0 => f[ip] = one_of(d, &[0x45u8, 0x44, 0x40, 0x46, 0x4f, 0x55, 0x65, 0x05])?,
                1 => {
                    let cur = u16::from_be_bytes([f[ip + 2], f[ip + 3]]);
                    let v = one_of(d, &[0u16, 1, 19, 20, 21, 28, 1450, 1451, 1500, 1501, 65535])?;
                    let v = if d.gen_bool(Some(0.5))? {
                        cur.wrapping_add(v % 9).wrapping_sub(4)
                    } else {
                        v
                    };
                    set16(f, ip + 2, v);
                }
                2 => {
                    let v = one_of(
                        d,
                        &[
                            0x4000u16, 0x2000, 0x0000, 0x0001, 0x2001, 0x1fff, 0x8000, 0x6000,
                        ],
                    )?;
                    set16(f, ip + 6, v);
                }
                3 => f[ip + 8] = one_of(d, &[0u8, 1, 2, 64, 255])?,
                4 => f[ip + 9] = one_of(d, &[1u8, 6, 17, 47, 50, 51, 132, 0, 255])?,
                _ => f[ip + 1] = one_of(d, &[0u8, 0xff, 0x03])?,
            }
        }
        6 if ip.is_some() => {
            let (ip, _) = ip?;
            let a = one_of(d, ADDRS)?;
            let at = ip + if d.gen_bool(Some(0.5))? { 12 } else { 16 };
            f[at..at + 4].copy_from_slice(&a);
        }
        7 if ip.is_some() => {
            let (ip, ihl) = ip?;
            let p = one_of(d, PORTS)?;
            let at = ip + ihl + if d.gen_bool(Some(0.5))? { 0 } else { 2 };
            set16(f, at, p);
        }
        8 if ip.is_some() => {
            let (ip, ihl) = ip?;
            if f.len() >= ip + ihl + 14 {
                f[ip + ihl + 13] =
                    one_of(d, &[0x02u8, 0x12, 0x10, 0x11, 0x04, 0x14, 0x01, 0xff, 0])?;
                if d.gen_bool(Some(0.3))? {
                    f[ip + ihl + 12] = one_of(d, &[0x50u8, 0x40, 0x60, 0xf0, 0x00])?;
                }
            }
        }
        9 if ip.is_some() => {
            let (ip, ihl) = ip?;
            let v = one_of(d, &[0u16, 7, 8, 9, 16, 100, 1480, 65535])?;
            set16(f, ip + ihl + 4, v);
        }
        10 if ip.is_some() => {
            let (ip, ihl) = ip?;
            if f.len() >= ip + ihl + 2 {
                f[ip + ihl] = one_of(d, &[0u8, 3, 5, 8, 11, 12, 13, 255])?;
                f[ip + ihl + 1] = one_of(d, &[0u8, 1, 3, 4, 255])?;
            }
        }
        11 if f.len() >= base + 14 => match pick(d, 3)? {
            0 => f[base..base + 6].copy_from_slice(&one_of(d, MACS)?),
            1 => f[base + 6..base + 12].copy_from_slice(&one_of(d, MACS)?),
            _ => {
                let t = one_of(
                    d,
                    &[0x0800u16, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x0000, 0xffff],
                )?;
                set16(f, base + 12, t);
            }
        },
        12 => {
            if let Some(inner) = inner_of(f, 0) {
                let vx = inner - 8;
                match pick(d, 3)? {
                    0 => f[vx] = one_of(d, &[0x08u8, 0x00, 0x88, 0x0c, 0xff])?,
                    1 => f[vx + pick(d, 3)? + 1] = 0xff,
                    _ => {
                        let vni =
                            one_of(d, &[fixture::remote_id(), 1, 0, 2, 6, 7, 0xff_ffff, 54321])?;
                        f[vx + 4..vx + 7].copy_from_slice(&vni.to_be_bytes()[1..]);
                    }
                }
            }
        }
        13 => {
            // Nest the frame in VXLAN from the peer, or take out what a VXLAN frame carries.
            if let Some(inner) = inner_of(f, 0).filter(|_| d.gen_bool(Some(0.5)).unwrap_or(false)) {
                *f = f[inner..].to_vec();
            } else if f.len() + vxlan::ENCAP_LEN <= MAX_FRAME {
                let vni = one_of(d, &[fixture::remote_id(), 6, 2])?;
                *f = crate::seeds::vxlan_frame(fixture::PEER_IP, fixture::NODE_IP, vni, f);
            }
        }
        14 if ip.is_some() => {
            let (ip, ihl) = ip?;
            let words = one_of(d, &[1usize, 2, 10])?;
            if ihl + words * 4 <= 60 {
                let opt = one_of(
                    d,
                    &[[1u8, 1, 1, 1], [0, 0, 0, 0], [7, 4, 4, 0], [0x94, 4, 0, 0]],
                )?;
                let at = ip + ihl;
                for _ in 0..words {
                    f.splice(at..at, opt);
                }
                f[ip] = 0x40 | ((ihl / 4 + words) as u8);
                let total =
                    u16::from_be_bytes([f[ip + 2], f[ip + 3]]).wrapping_add(words as u16 * 4);
                set16(f, ip + 2, total);
            }
        }
        15 if f.len() >= base + 42 && f[base + 12..base + 14] == [0x08, 0x06] => {
            let a = base + 14;
            match pick(d, 4)? {
                0 => set16(f, a + 6, one_of(d, &[1u16, 2, 3, 0, 0xffff])?),
                1 => f[a + 4] = one_of(d, &[6u8, 0, 16, 255])?,
                2 => f[a + 14..a + 18].copy_from_slice(&one_of(d, ADDRS)?),
                _ => f[a + 24..a + 28].copy_from_slice(&one_of(d, ADDRS)?),
            }
        }
        _ if !seeds.is_empty() => {
            // Splice: the head of another seed and the tail of this frame.
            let other = &seeds[pick(d, seeds.len())?];
            let cut = pick(d, other.len().min(f.len()) + 1)?;
            let mut g = other[..cut].to_vec();
            g.extend_from_slice(&f[cut.min(f.len())..]);
            *f = g;
        }
        _ => {}
    }
    f.truncate(MAX_FRAME);
    Some(())
}

/// Where a generator's seed frames come from.
pub type Seeds = fn() -> &'static [Vec<u8>];

/// A seed frame with up to 6 mutations; checksums re-fixed four times out of five.
#[derive(Debug, Clone, Copy)]
pub struct FrameGen {
    pub seeds: Seeds,
}

impl FrameGen {
    /// Generate one frame (also used inside [`SequenceGen`]).
    pub fn frame<D: Driver>(&self, d: &mut D) -> Option<Vec<u8>> {
        let seeds = (self.seeds)();
        let mut f = seeds[pick(d, seeds.len())?].clone();
        for _ in 0..pick(d, 7)? {
            mutate_once(d, &mut f, seeds)?;
        }
        if d.gen_bool(Some(0.8))? {
            fix_checksums(&mut f);
        }
        Some(f)
    }
}

impl ValueGenerator for FrameGen {
    type Output = Vec<u8>;
    fn generate<D: Driver>(&self, d: &mut D) -> Option<Vec<u8>> {
        self.frame(d)
    }
}

/// One step of a pipeline input.
#[derive(Debug, Clone)]
pub enum Step {
    /// A frame arriving on port `port` (an lxc port 0-2, the underlay 3, or a port that does
    /// not exist).
    Frame { port: u16, frame: Vec<u8> },
    /// The answer of whoever received the last forwarded frame (addresses and ports
    /// swapped, from where it went), to walk reply, reverse-NAT and conntrack paths.
    Reply,
}

/// Give `f` the MACs (and, with `src_ip`, the source address) of a frame that really
/// arrived on `port`: from the pod behind an lxc port, or from the peer node on the
/// underlay.
fn own(f: &mut [u8], port: u16, src_ip: bool) {
    if f.len() < 14 {
        return;
    }
    let (dst, src, ip) = match port as usize {
        p @ 0..=2 => (
            fixture::LXC_MACS[p].0,
            fixture::POD_MACS[p].0,
            Some(fixture::POD_IPS[p]),
        ),
        p if p == fixture::UNDERLAY as usize => (fixture::NODE_MAC.0, fixture::PEER_MAC.0, None),
        _ => return,
    };
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    if let (Some(a), true) = (ip, src_ip)
        && ipv4_at(f, 0).is_some()
    {
        f[26..30].copy_from_slice(&a);
        fix_checksums(f);
    }
}

/// A short sequence of frames on fresh tables: 1-6 steps.
#[derive(Debug, Clone, Copy)]
pub struct SequenceGen;

impl ValueGenerator for SequenceGen {
    type Output = (bool, Vec<Step>);
    fn generate<D: Driver>(&self, d: &mut D) -> Option<(bool, Vec<Step>)> {
        let native = d.gen_bool(Some(0.25))?;
        let n = pick(d, 6)? + 1;
        let mut steps = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 && d.gen_bool(Some(0.3))? {
                steps.push(Step::Reply);
                continue;
            }
            let (port, seeds): (u16, Seeds) = match pick(d, 16)? {
                0..=8 => (pick(d, 3)? as u16, crate::seeds::pod_seeds),
                9..=13 => (fixture::UNDERLAY, crate::seeds::underlay_seeds),
                // Seeds of the other role, and a port nobody has.
                14 => (pick(d, 3)? as u16, crate::seeds::underlay_seeds),
                _ => (
                    one_of(d, &[fixture::UNDERLAY, 7, u16::MAX])?,
                    crate::seeds::pod_seeds,
                ),
            };
            let mut frame = FrameGen { seeds }.frame(d)?;
            // Most of the time the frame comes from where it claims to: the port's own MACs
            // (and, from a pod, its own address), so that it gets past anti-spoofing.
            if d.gen_bool(Some(0.85))? {
                own(&mut frame, port, d.gen_bool(Some(0.8))?);
            }
            steps.push(Step::Frame { port, frame });
        }
        Some((native, steps))
    }
}

/// A UTF-8 text from `seeds` with up to 8 text-level mutations (line drops and
/// duplications, digits changed, YAML-significant characters, long or deep insertions).
#[derive(Debug, Clone, Copy)]
pub struct TextGen {
    pub seeds: fn() -> &'static [String],
}

impl ValueGenerator for TextGen {
    type Output = String;
    fn generate<D: Driver>(&self, d: &mut D) -> Option<String> {
        let seeds = (self.seeds)();
        let mut t = seeds[pick(d, seeds.len())?].clone();
        for _ in 0..pick(d, 9)? {
            let lines: Vec<&str> = t.lines().collect();
            if lines.is_empty() {
                break;
            }
            let i = pick(d, lines.len())?;
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            match pick(d, 9)? {
                0 => {
                    out.remove(i);
                }
                1 => out.insert(i, out[i].clone()),
                2 => {
                    // A digit becomes another number.
                    let l = &out[i];
                    if let Some(p) = l.find(|c: char| c.is_ascii_digit()) {
                        let n = one_of(
                            d,
                            &[
                                "0",
                                "9",
                                "65535",
                                "65536",
                                "4095",
                                "4096",
                                "-1",
                                "99999999999",
                                "255",
                                "256",
                                "33",
                            ],
                        )?;
                        out[i] = format!("{}{}{}", &l[..p], n, &l[p + 1..]);
                    }
                }
                3 => {
                    let ch = one_of(
                        d,
                        &[
                            ":", "{", "[", "]", "}", "- ", "&a ", "*a", "'", "\"", "#", "!!str ",
                            "\t", ",", "~", "null", "yes", "0x1f",
                        ],
                    )?;
                    let l = &out[i];
                    let p = pick(d, l.len() + 1)?;
                    let p = (0..=p).rev().find(|&q| l.is_char_boundary(q)).unwrap_or(0);
                    out[i] = format!("{}{}{}", &l[..p], ch, &l[p..]);
                }
                4 => {
                    let depth = one_of(d, &[5usize, 40, 200])?;
                    out.insert(i, format!("x: {}{}", "[".repeat(depth), "]".repeat(depth)));
                }
                5 => {
                    let n = one_of(d, &[100usize, 5000])?;
                    out[i].push_str(&"a".repeat(n));
                }
                6 => {
                    // Swap two lines.
                    let j = pick(d, out.len())?;
                    out.swap(i, j);
                }
                7 => {
                    // Indent or dedent.
                    if d.gen_bool(Some(0.5))? {
                        out[i] = format!("  {}", out[i]);
                    } else {
                        out[i] = out[i].trim_start().to_string();
                    }
                }
                _ => {
                    // Borrow a line of another seed.
                    let other = &seeds[pick(d, seeds.len())?];
                    let ol: Vec<&str> = other.lines().collect();
                    if !ol.is_empty() {
                        out.insert(i, ol[pick(d, ol.len())?].to_string());
                    }
                }
            }
            t = out.join("\n");
            t.push('\n');
        }
        Some(t)
    }
}
