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
/// target), so a long run can state how many executions it made.
#[derive(Debug)]
pub struct Executions {
    name: &'static str,
    n: AtomicU64,
    start: std::time::Instant,
}

impl Executions {
    pub fn new(name: &'static str) -> Executions {
        Executions {
            name,
            n: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    /// One more input.
    #[inline]
    pub fn tick(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
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
