//! Compiles the C workload twice: linked in (static) and as a shared object to dlopen.
use std::process::Command;

fn main() {
    let flags = ["-O2", "-g", "-fomit-frame-pointer", "-fno-inline"];
    let mut b = cc::Build::new();
    b.file("c/cwork.c");
    for f in flags {
        b.flag(f);
    }
    b.compile("cwork");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let so = format!("{out}/libcwork_dl.so");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(flags)
        .args(["-shared", "-fPIC", "-DPREFIX=d_", "-o", &so, "c/cwork.c"])
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "building {so}");
    println!("cargo:rustc-env=CWORK_SO={so}");
    println!("cargo:rerun-if-changed=c/cwork.c");
}
