//! Fuzz targets for fastpath's inputs (docs/fuzzing.md).
//!
//! Every target is a `#[test]` written with bolero, so one definition runs under two engines:
//! - **stable** (`cargo test`, CI): bolero's random engine feeds the generators below for a
//!   bounded time (`BOLERO_RANDOM_TEST_TIME_MS`, 1 s by default) or count
//!   (`BOLERO_RANDOM_ITERATIONS`), after the files under the target's `corpus/` and
//!   `crashes/` directories;
//! - **coverage-guided** where cargo-bolero and a nightly toolchain exist (`cargo bolero
//!   test --engine libfuzzer|afl`): the same generators then draw their choices from the
//!   fuzzer's input, so libFuzzer's coverage feedback steers the mutations.
//!
//! Inputs are not random bytes: [`mutate::FrameGen`] starts from real frames (captured from
//! the demo cluster, `fuzz/seeds/*.pcap`, plus built ones for what a capture cannot show) and
//! applies structure-aware mutations (fields set to boundary values and to addresses/ports
//! the tables know, truncation at layer boundaries, options, fragments, VXLAN flags/VNIs),
//! re-fixing checksums most of the time so that deeper stages are reached. Outputs are
//! checked by [`oracle`] with an independent parser (etherparse).

pub mod fixture;
pub mod mutate;
pub mod oracle;
pub mod pipeline;
pub mod seeds;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the inputs a target ran and prints the count when dropped (at the end of the
/// target), so a long run can state how many executions it made. With [`Executions::input`]
/// it is also a watchdog: an input that runs longer than [`HANG`] is printed and the process
/// aborted, so a hang is a reported failure, not a stuck run.
#[derive(Debug)]
pub struct Executions {
    name: &'static str,
    n: AtomicU64,
    start: std::time::Instant,
    current: std::sync::Arc<std::sync::Mutex<(u64, std::time::Instant, Vec<u8>)>>,
}

/// How long one input may take before the watchdog calls it a hang.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(10);

impl Executions {
    pub fn new(name: &'static str) -> Executions {
        let current = std::sync::Arc::new(std::sync::Mutex::new((
            0u64,
            std::time::Instant::now(),
            Vec::new(),
        )));
        let watched = std::sync::Arc::downgrade(&current);
        std::thread::spawn(move || {
            let mut last = 0;
            while let Some(c) = watched.upgrade() {
                {
                    let g = c.lock().unwrap_or_else(|e| e.into_inner());
                    if g.0 != 0 && g.0 == last && g.1.elapsed() > HANG {
                        eprintln!(
                            "fuzz target {name}: input {} has run for {:?}: a hang. The input (hex):\n{}",
                            g.0,
                            g.1.elapsed(),
                            g.2.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        );
                        std::process::abort();
                    }
                    last = g.0;
                }
                drop(c);
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
        Executions {
            name,
            n: AtomicU64::new(0),
            start: std::time::Instant::now(),
            current,
        }
    }

    /// One more input.
    #[inline]
    pub fn tick(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
    }

    /// One more input, watched for hangs (for the slower targets: it copies the input).
    pub fn input(&self, bytes: &[u8]) {
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *g = (n, std::time::Instant::now(), bytes.to_vec());
    }
}

impl Drop for Executions {
    fn drop(&mut self) {
        let n = self.n.load(Ordering::Relaxed);
        let s = self.start.elapsed().as_secs_f64();
        eprintln!(
            "fuzz target {}: {n} executions in {s:.1} s ({:.0}/s), {}",
            self.name,
            n as f64 / s.max(1e-9),
            if std::thread::panicking() {
                "FAILED (see above)"
            } else {
                "0 crashes"
            }
        );
    }
}
