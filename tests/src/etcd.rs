//! A real etcd server (Debian's `etcd-server`) for the kvstore tests, run inside a network
//! namespace the test made (the cluster's fabric, where every node's underlay is), on an
//! address of the test's own; killed on drop. Its data directory survives a
//! [`Etcd::restart`] (the store must lose nothing) and is removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Etcd {
    pub netns: String,
    pub ip: String,
    pub data: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Start etcd in `netns` on `ip:2379` (the address must be on one of its devices) and
    /// wait until it answers.
    pub fn start(netns: &str, ip: &str) -> Etcd {
        let data = std::env::temp_dir().join(format!("{netns}-etcd"));
        let _ = std::fs::remove_dir_all(&data);
        let mut e = Etcd {
            netns: netns.into(),
            ip: ip.into(),
            data,
            child: None,
        };
        e.launch();
        e
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Start it (again, on the same data).
    pub fn launch(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let c = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcd"])
            .args(["--name", "t", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (apt install etcd-server; scripts/setup.sh does)");
        self.child = Some(c);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).0
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL etcd (a crash) and start it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGKILL etcd.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs etcd: the child is etcd itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl` against this server: (success, stdout).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcdctl"])
            .arg(format!("--endpoints={}", self.url()))
            .args(["--command-timeout=3s", "--dial-timeout=2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (ok, out) = self.ctl(&["get", "--prefix", "--keys-only", prefix]);
        assert!(ok, "etcdctl get {prefix}");
        out.lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}
