//! `include/pyroscope.h` must be what cbindgen generates from the current source.
//! `UPDATE_HEADER=1 cargo test -p pyroscope-ffi` rewrites it.

#[test]
fn header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new().with_crate(dir).with_config(config).generate().expect("generate header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = format!("{dir}/include/pyroscope.h");
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/pyroscope.h is stale: run `UPDATE_HEADER=1 cargo test -p pyroscope-ffi --test header` and commit it"
    );
}
