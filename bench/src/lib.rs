//! What the benchmark binaries share: starting a `fastpath run` next to them and stopping
//! it, and reading /proc/stat.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `fastpath run`, stopped (SIGTERM, waited for) on drop, which then removes its
/// state directory and the other files given to [`start_fastpath`].
#[derive(Debug)]
pub struct Fastpath {
    child: Child,
    cleanup: Vec<PathBuf>,
}

impl Fastpath {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        for p in &self.cleanup {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

/// Start the `fastpath` binary beside the running one on `cfg` with one worker per core of
/// `cores` (`--bare`: no pipeline), and wait (at most 10 s) until node `node`'s control
/// socket answers. `cleanup` is removed when it stops, with its state directory.
pub fn start_fastpath(
    cfg: &Path,
    node: &str,
    cores: &[usize],
    bare: bool,
    mut cleanup: Vec<PathBuf>,
) -> anyhow::Result<Fastpath> {
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("fastpath");
    let state = std::env::temp_dir().join(format!("fastpath-bench-{node}-state"));
    let cores: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(&state)
        .args(["--queues", &cores.len().to_string()])
        .args(["--cores", &cores.join(",")]);
    if bare {
        cmd.arg("--bare");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{}", bin.display()))?;
    cleanup.push(state);
    let fp = Fastpath { child, cleanup };
    let sock = fastpath::api::socket_path(node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fastpath::api::status(&sock).is_err() {
        if Instant::now() > deadline {
            bail!("fastpath did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(fp)
}

/// The jiffy counters of the /proc/stat line `name` (`cpu` for all CPUs, `cpu0`, …): user,
/// nice, system, idle, iowait, irq, softirq, steal, …; `None` if there is no such line.
pub fn cpu_ticks(name: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let l = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    Some(
        l.split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect(),
    )
}

/// Jiffies per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
