//! Builds the kernel programs with clang (`-target bpf`, with BTF) into `$OUT_DIR`:
//! `src/bpf/fp_xdp.c` (the XDP steering program) into `fp_xdp.o` and `src/bpf/fp_tc.c` (the
//! tc datapath) into `fp_tc.o`. Both include `src/bpf/fp_maps.h`, the one header of map
//! layouts. The objects are embedded into the crate with `include_bytes_aligned!`, so the
//! `fastpath` binary carries its own programs and needs no files at run time.
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=FASTPATH_CLANG");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = env::var("FASTPATH_CLANG").unwrap_or_else(|_| "clang".into());
    // <asm/types.h> for -target bpf resolves through /usr/include/asm, which only gcc-multilib
    // installs; pass the multiarch include dir as well so either setup works (lab report §1).
    let multiarch = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "x86_64-linux-gnu".into());
    // The tc datapath updates the shared conntrack table with 64-bit compare-and-swap, an
    // instruction of BPF ISA v3 (Linux 5.12+).
    for (src, obj, extra) in [
        ("src/bpf/fp_xdp.c", "fp_xdp.o", &[][..]),
        ("src/bpf/fp_tc.c", "fp_tc.o", &["-mcpu=v3"][..]),
    ] {
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .args(extra)
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(out.join(obj))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{clang}` to build {src} ({e}); run scripts/setup.sh")
            });
        assert!(status.success(), "clang failed to build {src}");
    }
}
