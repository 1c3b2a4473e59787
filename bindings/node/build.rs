//! Builds the C++ shim against the headers of the Node that runs the build (the node on PATH,
//! or `PYROSCOPE_NODE`), and records that Node's module ABI so the addon refuses to load into
//! another one. Without headers or a C++ compiler (or with `PYROSCOPE_NODE_NO_SHIM` set) the
//! addon builds without the shim.

use std::path::PathBuf;
use std::process::Command;

fn node_eval(node: &str, script: &str) -> String {
    let out = Command::new(node)
        .args(["-p", script])
        .output()
        .unwrap_or_else(|e| panic!("pyroscope-node: cannot run `{node}` ({e}): Node.js 20 or later must be on PATH"));
    assert!(out.status.success(), "pyroscope-node: `{node} -p` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main() {
    napi_build::setup();
    let node = std::env::var("PYROSCOPE_NODE").unwrap_or_else(|_| "node".to_owned());
    println!("cargo:rerun-if-env-changed=PYROSCOPE_NODE");
    println!("cargo:rerun-if-env-changed=PYROSCOPE_NODE_NO_SHIM");
    println!("cargo:rerun-if-changed=src/shim.cc");
    println!("cargo::rustc-check-cfg=cfg(pyroscope_node_shim)");
    let abi = node_eval(&node, "process.versions.modules");
    let version = node_eval(&node, "process.version");
    println!("cargo:rustc-env=PYROSCOPE_NODE_MODULES_ABI={abi}");
    println!("cargo:rustc-env=PYROSCOPE_NODE_BUILT_FOR={version}");
    // The shim needs Node's C++ headers and a C++ compiler. Without them the addon still
    // builds, and the package falls back to V8's own sampling profiler for JavaScript names
    // (docs/node.md, "Fallback").
    if std::env::var_os("PYROSCOPE_NODE_NO_SHIM").is_some() {
        println!("cargo:warning=PYROSCOPE_NODE_NO_SHIM is set: building without V8's JIT code names (fallback mode)");
        return;
    }
    let include = PathBuf::from(node_eval(&node, "require('path').resolve(process.execPath, '../../include/node')"));
    if !include.join("v8.h").exists() {
        println!(
            "cargo:warning=Node's C++ headers are not at {}: building without V8's JIT code names (fallback mode)",
            include.display()
        );
        return;
    }
    let built = cc::Build::new()
        .cpp(true)
        .file("src/shim.cc")
        .include(&include)
        .flag("-std=c++17")
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .flag_if_supported("-Wno-unused-parameter")
        .try_compile("pyroscope_node_shim");
    match built {
        Ok(()) => println!("cargo:rustc-cfg=pyroscope_node_shim"),
        Err(e) => println!(
            "cargo:warning=the C++ shim did not build ({e}): building without V8's JIT code names (fallback mode)"
        ),
    }
}
