//! The conntrack clock: whole seconds of CLOCK_MONOTONIC, the clock Cilium's datapath uses
//! for lifetimes ("bpf mono", `ktime_get_ns() / NSEC_PER_SEC`), so `expires=` values read
//! the same way as on a Cilium node.

/// Seconds of CLOCK_MONOTONIC (wraps after 136 years of uptime).
#[inline]
pub fn now() -> u32 {
    rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_sec as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_and_close_to_instant() {
        let a = super::now();
        let b = super::now();
        assert!(b >= a && b - a <= 1);
    }
}
