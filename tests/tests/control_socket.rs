//! The control socket under hostile or careless clients (issue #11 defect 7): idle
//! connections, a client that asks for a large answer and never reads it, an endless request
//! line, a request that never ends, more clients than the server serves, garbage — none of
//! them may stall the control loop (status, GC, SIGTERM) or grow its memory without bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use fastpath::server::{MAX_CLIENTS, MAX_REQUEST_BYTES};
use fastpath_tests::{TestNode, node_yaml, require_root, unique};

/// A node with enough services that `bpf lb list` answers with more than a socket buffer
/// holds (so a client that does not read it leaves the server with a full socket).
fn node_with_big_listing() -> TestNode {
    let name = unique("s");
    let mut y = node_yaml(&name, 2, 1, "");
    let backend = y
        .lines()
        .find_map(|l| l.trim().strip_prefix("ip: "))
        .unwrap()
        .to_string();
    y += "services:\n";
    for i in 0..3000u32 {
        y += &format!(
            "  - {{ name: s{i}, cluster_ip: 10.97.{}.{}, ports: [{{ port: 80 }}], backends: [{{ ip: {backend} }}] }}\n",
            i / 250,
            i % 250 + 1
        );
    }
    TestNode::start(&y, 1, &[])
}

fn connect(n: &TestNode) -> UnixStream {
    let s = UnixStream::connect(&n.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn answer(s: &UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// `fastpath status` answers within `within`, whatever else is connected.
fn status_answers(n: &TestNode, within: Duration) -> fastpath::api::Status {
    let t = Instant::now();
    let s = n.status();
    assert!(t.elapsed() < within, "status took {:?}", t.elapsed());
    s
}

#[test]
fn slow_idle_and_greedy_clients_do_not_stall_the_node() {
    if !require_root() {
        return;
    }
    let mut n = node_with_big_listing();

    // Idle connections (three made `status` fail with EAGAIN before).
    let idle: Vec<UnixStream> = (0..10).map(|_| connect(&n)).collect();
    status_answers(&n, Duration::from_secs(2));

    // A client asks for a listing far larger than a socket buffer and never reads it.
    let mut greedy = connect(&n);
    greedy
        .write_all(b"{\"cmd\":\"lb_list\",\"view\":\"services\"}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    status_answers(&n, Duration::from_secs(2));
    // ... and it is all there once it does read.
    let mut got = Vec::new();
    greedy.read_to_end(&mut got).unwrap();
    assert!(got.len() > 400_000, "{} bytes", got.len());
    assert!(String::from_utf8_lossy(&got).contains("10.97.11.250:80"));

    // An endless request line: refused at the bound, without reading the rest.
    let mut endless = connect(&n);
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent <= MAX_REQUEST_BYTES {
        match endless.write(&chunk) {
            Ok(k) => sent += k,
            Err(_) => break, // the server closed its side after answering
        }
    }
    let a = answer(&endless);
    assert!(a.contains("request longer than 8388608 bytes"), "{a:.200}");

    // A request that never ends: dropped with an error after 5 s.
    let mut slow = connect(&n);
    slow.write_all(b"{\"cmd\":").unwrap();
    let t = Instant::now();
    let a = answer(&slow);
    assert!(a.contains("request not complete within 5 s"), "{a}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // Garbage is an error answer.
    let mut g = connect(&n);
    g.write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
    assert!(answer(&g).contains("bad request"));

    // More clients than the server serves at once: the rest are told so.
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    let many: Vec<UnixStream> = (0..MAX_CLIENTS + 5).map(|_| connect(&n)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let busy = many
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut l = String::new();
            BufReader::new(*s).read_line(&mut l).is_ok() && l.contains("busy")
        })
        .count();
    assert!(busy >= 5, "{busy} clients told busy");
    drop(many);
    std::thread::sleep(Duration::from_millis(200));
    let st = status_answers(&n, Duration::from_secs(2));
    let c = st.control_socket;
    assert_eq!(c.too_large, 1, "{c:?}");
    // The slow one, and the ten idle ones that sent nothing for 5 s.
    assert!(c.timed_out >= 11, "{c:?}");
    assert!(c.refused_busy >= 5, "{c:?}");
    assert!(
        fastpath::views::status(&st).contains("Control:   "),
        "{}",
        fastpath::views::status(&st)
    );

    // SIGTERM while a client holds an unread answer: fastpath stops at once.
    let mut stuck = connect(&n);
    stuck
        .write_all(b"{\"cmd\":\"lb_list\",\"view\":\"frontends\"}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    n.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?}",
        t.elapsed()
    );
    drop(stuck);
}
