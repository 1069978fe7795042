//! Running a sequence of frames through the pipeline the way a worker does, with the oracle
//! after every frame.

use control::tables::{PortId, Tables};
use fastpath::stage::{self, Scratch, Verdict};
use fastpath::wire::Buf;

use crate::fixture;
use crate::mutate::{Step, fix_checksums};
use crate::oracle;

/// XDP_PACKET_HEADROOM, as the kernel leaves it in front of a received frame.
const HEADROOM: usize = 256;

/// One frame through the pipeline in a 4 KiB chunk: the verdict and the frame after.
pub fn run(frame: &[u8], port: PortId, t: &Tables, s: &mut Scratch) -> (Verdict, Vec<u8>) {
    let mut chunk = vec![0u8; 4096];
    let len = frame.len().min(4096 - HEADROOM);
    chunk[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
    let mut b = Buf::new(&mut chunk, HEADROOM, len);
    let v = stage::process(&mut b, port, t, s);
    (v, b.data().to_vec())
}

/// The answer to a forwarded frame, from where it went: addresses, ports and MACs swapped
/// (an echo request answered, a SYN answered with SYN-ACK), and for a frame that left
/// through the tunnel, the peer's VXLAN around it.
pub fn reply_to(v: &Verdict, out: &[u8], t: &Tables) -> Option<(PortId, Vec<u8>)> {
    let (port, inner_at) = match *v {
        Verdict::Deliver { port } | Verdict::Decap { port } | Verdict::RoutedIn { port } => {
            (port, 0)
        }
        Verdict::Encap { .. } => (fixture::UNDERLAY, 50),
        Verdict::Route { .. } => (fixture::UNDERLAY, 0),
        _ => return None,
    };
    let f = out.get(inner_at..)?;
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let mut r = f.to_vec();
    // Ethernet: back to where it came from.
    let (dst, src) = (r[0..6].to_vec(), r[6..12].to_vec());
    r[0..6].copy_from_slice(&src);
    r[6..12].copy_from_slice(&dst);
    let ihl = (r[14] & 0x0f) as usize * 4;
    if r.len() < 14 + ihl {
        return None;
    }
    let (s4, d4) = (r[26..30].to_vec(), r[30..34].to_vec());
    r[26..30].copy_from_slice(&d4);
    r[30..34].copy_from_slice(&s4);
    r[22] = 64;
    let l4 = 14 + ihl;
    match r[23] {
        6 | 17 if r.len() >= l4 + 4 => {
            let (sp, dp) = (r[l4..l4 + 2].to_vec(), r[l4 + 2..l4 + 4].to_vec());
            r[l4..l4 + 2].copy_from_slice(&dp);
            r[l4 + 2..l4 + 4].copy_from_slice(&sp);
            if r[23] == 6 && r.len() >= l4 + 14 {
                r[l4 + 13] = if r[l4 + 13] & 0x02 != 0 { 0x12 } else { 0x10 };
            }
        }
        1 if r.len() > l4 && r[l4] == 8 => r[l4] = 0,
        _ => {}
    }
    fix_checksums(&mut r);
    if inner_at == 50 {
        let vni = fixture::remote_id();
        r = crate::seeds::vxlan_frame(fixture::PEER_IP, t.overlay.node_ip, vni, &r);
    }
    Some((port, r))
}

/// Run `steps` on fresh fixture tables; panics (a fuzz failure) if the oracle objects.
pub fn run_steps(native: bool, steps: &[Step]) {
    let t = fixture::fresh(native);
    let mut s = Scratch::seeded(7);
    let mut last: Option<(Verdict, Vec<u8>)> = None;
    // What ran so far, as a replayable sequence (`regression` lines in tests/regressions.txt).
    let mut trail = Vec::new();
    for step in steps {
        let (port, frame) = match step {
            Step::Frame { port, frame } => (*port, frame.clone()),
            Step::Reply => match last.as_ref().and_then(|(v, out)| reply_to(v, out, &t)) {
                Some(r) => r,
                None => continue,
            },
        };
        trail.push(format!("{port}:{}", hex(&frame)));
        s.now = s.now.wrapping_add(1);
        let (v, out) = run(&frame, port, &t, &mut s);
        if let Err(e) = oracle::check(&frame, port, &v, &out, &t) {
            panic!(
                "oracle: {e}\n  port {port}, native {native}\n  in:  {}\n  out: {}\n  replay: {} {}",
                hex(&frame),
                hex(&out),
                if native { "native" } else { "tunnel" },
                trail.join(" ")
            );
        }
        if !matches!(
            v,
            Verdict::Drop { .. } | Verdict::ArpReply { .. } | Verdict::IcmpReply { .. }
        ) {
            last = Some((v, out));
        }
    }
}

/// Bytes as hex, for failure messages and crash files.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Replay a sequence printed by a failure (`tunnel|native port:hex port:hex ...`).
pub fn replay(line: &str) {
    let mut it = line.split_whitespace();
    let native = it.next() == Some("native");
    let steps: Vec<Step> = it
        .map(|s| {
            let (p, h) = s.split_once(':').expect("port:hex");
            let frame = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            Step::Frame {
                port: p.parse().expect("port"),
                frame,
            }
        })
        .collect();
    run_steps(native, &steps);
}
