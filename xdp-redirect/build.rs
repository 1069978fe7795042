//! Builds `src/bpf/fp_xdp.c` with clang (`-target bpf`, with BTF) into `$OUT_DIR/fp_xdp.o`.
//! The object is embedded into the crate with `include_bytes_aligned!`, so the `fastpath`
//! binary carries its own XDP program and needs no files at run time.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let src = PathBuf::from("src/bpf/fp_xdp.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=FASTPATH_CLANG");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("fp_xdp.o");
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
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `{clang}` to build the XDP program ({e}); run scripts/setup.sh")
        });
    assert!(status.success(), "clang failed to build {}", src.display());
}
