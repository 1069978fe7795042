//! The whole pipeline from every port role, on a realistic table set, with output oracles.

use bolero::check;
use fastpath_fuzz::Executions;
use fastpath_fuzz::mutate::SequenceGen;
use fastpath_fuzz::pipeline::run_steps;

/// Sequences of 1-6 frames (pod frames on the lxc ports, underlay frames on the NIC, frames
/// on the wrong role or a port that does not exist, and replies to what was forwarded) on
/// fresh tables, in tunnel and in native routing mode. Every frame the pipeline lets out is
/// checked by `oracle::check`.
#[test]
fn pipeline() {
    let ex = Executions::new("pipeline");
    check!()
        .with_generator(SequenceGen)
        .for_each(|(native, steps)| {
            ex.tick();
            run_steps(*native, steps);
        });
}

/// Every sequence a fuzz run once failed on, replayed (the file says what each one found).
#[test]
fn regressions() {
    for line in include_str!("regressions.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        fastpath_fuzz::pipeline::replay(line);
    }
}
