//! Builds the C++ shim against the headers of the Node that runs the build (the node on PATH,
//! or `PYROSCOPE_NODE`), and records that Node's module ABI so the addon refuses to load into
//! another one.

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
    println!("cargo:rerun-if-changed=src/shim.cc");
    let include = PathBuf::from(node_eval(&node, "require('path').resolve(process.execPath, '../../include/node')"));
    assert!(
        include.join("v8.h").exists(),
        "pyroscope-node: Node's C++ headers are not at {} (install the Node.js headers that match `{node}`)",
        include.display()
    );
    let abi = node_eval(&node, "process.versions.modules");
    let version = node_eval(&node, "process.version");
    println!("cargo:rustc-env=PYROSCOPE_NODE_MODULES_ABI={abi}");
    println!("cargo:rustc-env=PYROSCOPE_NODE_BUILT_FOR={version}");
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cc")
        .include(&include)
        .flag("-std=c++17")
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("pyroscope_node_shim");
}
