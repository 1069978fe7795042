//! A real container runtime for the CNI tests: Debian's podman on its CNI backend, set up
//! as docs/cni.md tells an operator to — a `containers.conf` of our own (runc, no default
//! ulimits, cgroupfs, CNI with our network directory and plugin directory), conflists that
//! use `fastpath-cni`, and a busybox root filesystem (no image can be pulled here).
//!
//! Everything lives under one temporary directory; dropping the [`Podman`] removes every
//! container it started (`podman rm -f`), libcni's cached results for its networks, and the
//! directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built `fastpath-cni` binary next to the test executable.
pub fn cni_bin() -> PathBuf {
    let bin = crate::fastpath_bin().with_file_name("fastpath-cni");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// podman and its pieces are installed (scripts/setup.sh installs them).
pub fn podman_available() -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new("/bin/busybox").exists()
        && Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: podman, runc and busybox-static are needed (scripts/setup.sh)");
    }
    ok
}

#[derive(Debug)]
pub struct Podman {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub rootfs: PathBuf,
    netd: PathBuf,
    networks: Vec<String>,
    containers: Vec<String>,
}

impl Podman {
    /// A podman set up for CNI networks in `dir`, with the fastpath-cni plugin.
    pub fn new(tag: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("{tag}-podman"));
        let _ = std::fs::remove_dir_all(&dir);
        let (netd, plugins, rootfs) = (dir.join("net.d"), dir.join("plugins"), dir.join("rootfs"));
        for d in [&netd, &plugins, &rootfs.join("bin")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for d in ["proc", "sys", "dev", "etc", "tmp", "www"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in [
            "sh", "ip", "ping", "sleep", "cat", "nc", "echo", "wget", "httpd", "ls", "ifconfig",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::os::unix::fs::symlink(cni_bin(), plugins.join("fastpath-cni")).unwrap();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = []\n[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
                netd.display(),
                plugins.display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            conf,
            rootfs,
            netd,
            networks: Vec::new(),
            containers: Vec::new(),
        }
    }

    /// Write the conflist of network `name` with one plugin object (JSON, without
    /// `type`, which is `fastpath-cni`): e.g. `"node":"n1","labels":{"app":"web"}`.
    pub fn network(&mut self, name: &str, cni_version: &str, plugin_fields: &str) {
        let sep = if plugin_fields.is_empty() { "" } else { "," };
        std::fs::write(
            self.netd.join(format!("{name}.conflist")),
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"name\":\"{name}\",\"plugins\":[{{\"type\":\"fastpath-cni\"{sep}{plugin_fields}}}]}}\n"
            ),
        )
        .unwrap();
        self.networks.push(name.into());
    }

    /// `podman args` with our containers.conf.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(args)
            .output()
            .unwrap()
    }

    /// Start container `name` on `network` running `sleep` (detached); the output of
    /// `podman run`.
    pub fn try_run(&mut self, name: &str, network: &str) -> Output {
        self.containers.push(name.into());
        let rootfs = self.rootfs.display().to_string();
        self.cmd(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--rootfs",
            &rootfs,
            "sleep",
            "100000",
        ])
    }

    /// Start container `name` on `network`; panics with podman's words if it fails.
    pub fn run(&mut self, name: &str, network: &str) {
        let o = self.try_run(name, network);
        assert!(
            o.status.success(),
            "podman run {name} on {network}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `podman exec name args`.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        let mut a = vec!["exec", name];
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    /// Does `name` ping `ip` (every one of `count` replies)?
    pub fn ping(&self, name: &str, ip: &str, count: u32) -> bool {
        let c = count.to_string();
        self.exec(name, &["ping", "-c", &c, "-W", "1", "-i", "0.2", ip])
            .status
            .success()
    }

    /// The container's address on its eth0.
    pub fn ip(&self, name: &str) -> String {
        let o = self.exec(name, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        let s = String::from_utf8_lossy(&o.stdout);
        s.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address in {name}: {s}"))
            .to_string()
    }

    /// The container's network namespace (a name under /run/netns, for `ip netns exec`).
    pub fn netns(&self, name: &str) -> String {
        let o = self.cmd(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name]);
        let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
        Path::new(&p)
            .file_name()
            .unwrap_or_else(|| panic!("no netns for {name}: {p}"))
            .to_string_lossy()
            .into_owned()
    }

    /// The container's full ID.
    pub fn id(&self, name: &str) -> String {
        let o = self.cmd(&["inspect", "-f", "{{.Id}}", name]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `podman rm -f -t 0 name` (CNI DEL runs); true if podman succeeded.
    pub fn rm(&mut self, name: &str) -> bool {
        self.containers.retain(|c| c != name);
        self.cmd(&["rm", "-f", "-t", "0", name]).status.success()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.containers);
        for c in names {
            let _ = self.cmd(&["rm", "-f", "-t", "0", &c]);
        }
        // libcni keeps each ADD's result until the DEL; a failed test must not leave them.
        if let Ok(rd) = std::fs::read_dir("/var/lib/cni/results") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if self
                    .networks
                    .iter()
                    .any(|net| n.starts_with(&format!("{net}-")))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one plugin run printed: its exit code and stdout (JSON, or `Null` when empty).
#[derive(Debug)]
pub struct CniOut {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl CniOut {
    /// The CNI error code of a failed run.
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure: {self:?}");
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {self:?}"))
    }

    pub fn details(&self) -> String {
        self.json["details"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Run `fastpath-cni` as a runtime does: the `CNI_*` variables (and nothing else of ours)
/// in its environment, the network configuration on stdin.
pub fn cni_call(env: &[(&str, &str)], stdin: &str) -> CniOut {
    use std::io::Write;
    let mut c = Command::new(cni_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    CniOut {
        code: o.status.code().unwrap_or(-1),
        json: if out.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}"))
        },
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}
