//! Next hops from the kernel: which device and layer-2 address reach a tunnel endpoint or a
//! native-routing gateway. The kernel's FIB and neighbour table stay the source of truth (as
//! for Cilium's `neighbor` subsystem): fastpath asks the route (`ip route get`), makes the
//! neighbour entry *managed* (`NTF_MANAGED`, Linux 5.16+: the kernel resolves it and keeps it
//! resolved even though fastpath's own frames never pass through the neighbour layer), and
//! reads the MAC back. The control thread re-reads every entry periodically and publishes
//! changes (a MAC move, a failover) to the workers.
//!
//! The periodic re-read is an `RTM_GETNEIGH` dump over one netlink socket held open
//! ([`NeighTable`]); the rarer steps use iproute2: the route lookup and address check at
//! start, and making an entry managed again when it is missing or FAILED (with a backoff,
//! so a peer that is down costs one `ip` run per up to 30 s, not one per second). All of it
//! runs on the control thread only, never per packet.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};
use control::maps::MacAddr;

/// How the kernel routes to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: String,
    /// The gateway, or `None` when the address is on-link.
    pub gateway: Option<Ipv4Addr>,
}

impl Route {
    /// The address whose MAC a frame to `dst` needs.
    pub fn neighbour(&self, dst: Ipv4Addr) -> Ipv4Addr {
        self.gateway.unwrap_or(dst)
    }
}

/// A neighbour entry as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Option<MacAddr>,
    /// `REACHABLE`, `STALE`, `INCOMPLETE`, `FAILED`, … (joined with `,`), or `none`.
    pub state: String,
}

impl Neighbour {
    /// A MAC the datapath may use: present and not in a failed state.
    pub fn usable(&self) -> Option<MacAddr> {
        self.mac
            .filter(|_| !self.state.contains("FAILED") && !self.state.contains("INCOMPLETE"))
    }
}

fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout).context("parsing `ip -j` output")
}

/// Is `ip` one of the addresses of `dev`?
pub fn has_address(dev: &str, ip: Ipv4Addr) -> anyhow::Result<bool> {
    let v = ip_json(&["-4", "addr", "show", "dev", dev])?;
    let want = ip.to_string();
    Ok(v.as_array().into_iter().flatten().any(|l| {
        l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["local"].as_str() == Some(&want))
    }))
}

/// `ip route get DST`.
pub fn route_get(dst: Ipv4Addr) -> anyhow::Result<Route> {
    let v = ip_json(&["route", "get", &dst.to_string()])
        .with_context(|| format!("no route to {dst}"))?;
    let r = &v[0];
    Ok(Route {
        dev: r["dev"]
            .as_str()
            .with_context(|| format!("route to {dst} has no device"))?
            .to_string(),
        gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
    })
}

/// Make the neighbour entry for `ip` on `dev` managed, so the kernel resolves it now and
/// keeps it fresh. An entry that already exists is left as it is (it may be permanent).
pub fn ensure_managed(ip: Ipv4Addr, dev: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["neigh", "add", &ip.to_string(), "dev", dev, "managed"])
        .output()
        .context("running `ip neigh add`")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("File exists") {
        return Ok(());
    }
    bail!("`ip neigh add {ip} dev {dev} managed`: {}", err.trim())
}

/// Start resolving `ip` afresh: a FAILED entry is only retried when traffic goes through the
/// kernel, and ours does not, so replace it with a new managed one (which probes at once).
pub fn reprobe(ip: Ipv4Addr, dev: &str) -> anyhow::Result<()> {
    let _ = Command::new("ip")
        .args(["neigh", "del", &ip.to_string(), "dev", dev])
        .output();
    ensure_managed(ip, dev)
}

/// The kernel's IPv4 neighbour table, read over a netlink socket held open
/// (`RTM_GETNEIGH` dump): what the control thread re-reads every second. No process is
/// forked, so the read costs one syscall round trip and no fds come and go.
#[derive(Debug)]
pub struct NeighTable {
    sock: crate::xsk::sys::RtNetlink,
    seq: u32,
    buf: Vec<u8>,
}

/// How long one dump may take before it is abandoned (the next refresh tries again).
const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Entries one dump may return before it is cut off (a bound on a hostile or huge table:
/// Linux's default `gc_thresh3` is 1024).
const DUMP_MAX_ENTRIES: usize = 65_536;

impl NeighTable {
    /// Open the socket in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<NeighTable> {
        let sock = crate::xsk::sys::RtNetlink::open(DUMP_TIMEOUT)
            .context("opening a NETLINK_ROUTE socket for the neighbour table")?;
        Ok(NeighTable {
            sock,
            seq: 0,
            buf: vec![0; 64 << 10],
        })
    }

    /// Every IPv4 neighbour on the device with `ifindex`. A dump that fails part-way (a
    /// timeout, a bound, a bad message) leaves the kernel's dump running on the socket and
    /// the next request would be refused (`EBUSY`), so the socket is replaced: closing it
    /// ends that dump.
    pub fn neighbours(&mut self, ifindex: u32) -> anyhow::Result<Vec<(Ipv4Addr, Neighbour)>> {
        let r = self.dump(ifindex);
        if r.is_err() {
            self.sock = crate::xsk::sys::RtNetlink::open(DUMP_TIMEOUT)
                .context("reopening the NETLINK_ROUTE socket after a failed dump")?;
        }
        r
    }

    fn dump(&mut self, ifindex: u32) -> anyhow::Result<Vec<(Ipv4Addr, Neighbour)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&nl::dump_request(seq))
            .context("sending the neighbour dump request")?;
        let mut out = Vec::new();
        let mut seen = 0usize;
        let deadline = std::time::Instant::now() + DUMP_TIMEOUT;
        loop {
            let n = self
                .sock
                .recv(&mut self.buf)
                .context("reading the neighbour dump")?;
            match nl::parse(&self.buf[..n], seq, ifindex, &mut out, &mut seen)? {
                nl::Parsed::Done => return Ok(out),
                nl::Parsed::More if seen > DUMP_MAX_ENTRIES => {
                    bail!("neighbour dump: more than {DUMP_MAX_ENTRIES} entries")
                }
                nl::Parsed::More if std::time::Instant::now() > deadline => {
                    bail!("neighbour dump: not complete within {DUMP_TIMEOUT:?}")
                }
                nl::Parsed::More => {}
            }
        }
    }
}

/// The `RTM_GETNEIGH` request and reply formats (linux/rtnetlink.h, linux/neighbour.h),
/// built and parsed on byte buffers.
pub mod nl {
    use super::Neighbour;
    use anyhow::bail;
    use control::maps::MacAddr;
    use std::net::Ipv4Addr;

    const NLMSG_HDR: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_GETNEIGH: u16 = 30;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NDMSG: usize = 12;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;
    const AF_INET: u8 = 2;
    const NUD_NOARP: u16 = 0x40;
    /// `NUD_*` bits in iproute2's order, with its names.
    const NUD: [(u16, &str); 8] = [
        (0x01, "INCOMPLETE"),
        (0x02, "REACHABLE"),
        (0x04, "STALE"),
        (0x08, "DELAY"),
        (0x10, "PROBE"),
        (0x20, "FAILED"),
        (0x40, "NOARP"),
        (0x80, "PERMANENT"),
    ];

    /// Where a dump stands after one datagram.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Parsed {
        More,
        Done,
    }

    /// nlmsghdr + ndmsg asking for every IPv4 neighbour.
    pub fn dump_request(seq: u32) -> [u8; NLMSG_HDR + NDMSG] {
        let mut m = [0u8; NLMSG_HDR + NDMSG];
        m[0..4].copy_from_slice(&((NLMSG_HDR + NDMSG) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
        m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[NLMSG_HDR] = AF_INET;
        m
    }

    /// The state names as `ip neigh` prints them, joined with `,` (`NONE` for 0).
    pub fn state_names(state: u16) -> String {
        let names: Vec<&str> = NUD
            .iter()
            .filter(|(b, _)| state & b != 0)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            "NONE".into()
        } else {
            names.join(",")
        }
    }

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    /// Parse one datagram of the dump answering `seq`: IPv4 entries on `ifindex` are added
    /// to `out`, every neighbour message of the dump counted in `seen` (the bound on a
    /// dump); messages of other requests are skipped. A malformed message is an error (the
    /// kernel does not send one; the bound checks keep a bad one from panicking).
    pub fn parse(
        b: &[u8],
        seq: u32,
        ifindex: u32,
        out: &mut Vec<(Ipv4Addr, Neighbour)>,
        seen: &mut usize,
    ) -> anyhow::Result<Parsed> {
        let mut off = 0;
        while off + NLMSG_HDR <= b.len() {
            let len = u32_at(b, off) as usize;
            if len < NLMSG_HDR || off + len > b.len() {
                bail!(
                    "netlink: message of {len} bytes at offset {off} of {}",
                    b.len()
                );
            }
            let ty = u16_at(b, off + 4);
            let mseq = u32_at(b, off + 8);
            let body = &b[off + NLMSG_HDR..off + len];
            off += (len + 3) & !3;
            if mseq != seq {
                continue;
            }
            match ty {
                NLMSG_DONE => return Ok(Parsed::Done),
                NLMSG_ERROR => {
                    if body.len() < 4 {
                        bail!("netlink: error message of {} bytes", body.len());
                    }
                    let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if code == 0 {
                        return Ok(Parsed::Done);
                    }
                    bail!(
                        "netlink: the neighbour dump failed: {}",
                        std::io::Error::from_raw_os_error(-code)
                    );
                }
                RTM_NEWNEIGH if body.len() >= NDMSG => {
                    *seen += 1;
                    if body[0] != AF_INET || u32_at(body, 4) != ifindex {
                        continue;
                    }
                    let state = u16_at(body, 8);
                    // NOARP entries (loopback, point-to-point) resolve nothing; `ip neigh`
                    // hides them too.
                    if state & NUD_NOARP != 0 {
                        continue;
                    }
                    let (mut dst, mut mac) = (None, None);
                    let mut a = NDMSG;
                    while a + 4 <= body.len() {
                        let alen = u16_at(body, a) as usize;
                        let aty = u16_at(body, a + 2) & 0x3fff;
                        if alen < 4 || a + alen > body.len() {
                            bail!(
                                "netlink: attribute of {alen} bytes at {a} of {}",
                                body.len()
                            );
                        }
                        let v = &body[a + 4..a + alen];
                        match aty {
                            NDA_DST if v.len() == 4 => {
                                dst = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
                            }
                            NDA_LLADDR if v.len() == 6 => {
                                mac = Some(MacAddr([v[0], v[1], v[2], v[3], v[4], v[5]]));
                            }
                            _ => {}
                        }
                        a += (alen + 3) & !3;
                    }
                    if let Some(ip) = dst {
                        out.push((
                            ip,
                            Neighbour {
                                mac,
                                state: state_names(state),
                            },
                        ));
                    }
                }
                RTM_NEWNEIGH => bail!("netlink: neighbour message of {} bytes", body.len()),
                _ => {}
            }
        }
        Ok(Parsed::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_only_when_resolved() {
        let m: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let n = |mac, state: &str| Neighbour {
            mac,
            state: state.into(),
        };
        assert_eq!(n(Some(m), "REACHABLE").usable(), Some(m));
        assert_eq!(n(Some(m), "STALE").usable(), Some(m));
        assert_eq!(n(Some(m), "PERMANENT").usable(), Some(m));
        assert_eq!(n(None, "INCOMPLETE").usable(), None);
        assert_eq!(n(Some(m), "FAILED").usable(), None);
        let r = Route {
            dev: "eth1".into(),
            gateway: None,
        };
        assert_eq!(
            r.neighbour(Ipv4Addr::new(1, 2, 3, 4)),
            Ipv4Addr::new(1, 2, 3, 4)
        );
    }

    fn nlmsg(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn ndmsg(family: u8, ifindex: u32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    /// A dump as the kernel sends it: entries of our device kept (address, MAC, state
    /// names as iproute2 prints them), others and other requests' messages skipped, done
    /// on NLMSG_DONE.
    #[test]
    fn a_neighbour_dump_is_parsed_from_its_bytes() {
        let mac = [2, 0, 0, 0, 0, 9];
        let mut d = nlmsg(
            28,
            5,
            &ndmsg(2, 7, 0x02, &[attr(1, &[192, 168, 1, 2]), attr(2, &mac)]),
        );
        d.extend(nlmsg(
            28,
            5,
            &ndmsg(2, 8, 0x02, &[attr(1, &[192, 168, 1, 3])]),
        ));
        d.extend(nlmsg(
            28,
            4,
            &ndmsg(2, 7, 0x02, &[attr(1, &[192, 168, 1, 4])]),
        ));
        // FAILED without a MAC, and an IPv6 entry on the same device.
        d.extend(nlmsg(
            28,
            5,
            &ndmsg(2, 7, 0x20, &[attr(1, &[192, 168, 1, 5])]),
        ));
        d.extend(nlmsg(28, 5, &ndmsg(10, 7, 0x02, &[attr(1, &[0xfe; 16])])));
        // A NOARP entry resolves nothing.
        d.extend(nlmsg(
            28,
            5,
            &ndmsg(2, 7, 0x40, &[attr(1, &[0, 0, 0, 0]), attr(2, &[0; 6])]),
        ));
        let mut out = Vec::new();
        let mut seen = 0;
        assert_eq!(
            nl::parse(&d, 5, 7, &mut out, &mut seen).unwrap(),
            nl::Parsed::More
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            seen, 5,
            "every neighbour message of the dump counts towards its bound"
        );
        assert_eq!(out[0].0, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(out[0].1.usable(), Some(MacAddr(mac)));
        assert_eq!(out[0].1.state, "REACHABLE");
        assert_eq!((out[1].1.mac, out[1].1.state.as_str()), (None, "FAILED"));
        let done = nlmsg(3, 5, &0i32.to_ne_bytes());
        assert_eq!(
            nl::parse(&done, 5, 7, &mut out, &mut 0).unwrap(),
            nl::Parsed::Done
        );
        assert_eq!(nl::state_names(0x02 | 0x80), "REACHABLE,PERMANENT");
        assert_eq!(nl::state_names(0), "NONE");
        let req = nl::dump_request(9);
        assert_eq!(req.len(), 28);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 9);
    }

    /// A bad length or an error answer is an error, never a panic or a silent empty table.
    #[test]
    fn a_malformed_or_failed_dump_is_an_error() {
        let mut out = Vec::new();
        let mut d = nlmsg(28, 1, &ndmsg(2, 7, 2, &[attr(1, &[10, 0, 0, 1])]));
        d[0] = 200; // longer than the datagram
        assert!(nl::parse(&d, 1, 7, &mut out, &mut 0).is_err());
        let mut bad_attr = ndmsg(2, 7, 2, &[attr(1, &[10, 0, 0, 1])]);
        bad_attr[12] = 60; // attribute longer than the message
        assert!(nl::parse(&nlmsg(28, 1, &bad_attr), 1, 7, &mut out, &mut 0).is_err());
        assert!(nl::parse(&nlmsg(28, 1, &[2, 0, 0]), 1, 7, &mut out, &mut 0).is_err());
        assert!(nl::parse(&nlmsg(2, 1, &[0, 0]), 1, 7, &mut out, &mut 0).is_err());
        let e = nl::parse(
            &nlmsg(2, 1, &(-libc::EPERM).to_ne_bytes()),
            1,
            7,
            &mut out,
            &mut 0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not permitted"), "{e}");
        assert!(out.is_empty());
    }

    /// The real round trip: a dump of loopback (which has only its NOARP entry) completes.
    #[test]
    fn the_kernel_answers_a_neighbour_dump() {
        let mut t = NeighTable::open().unwrap();
        assert!(t.neighbours(1).unwrap().is_empty());
        assert!(t.neighbours(1).unwrap().is_empty(), "the socket is reused");
    }
}
