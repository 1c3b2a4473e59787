//! `pyroscope._native`: the part of the `pyroscope` Python package written in Rust.

use pyo3::prelude::*;

mod memory;

/// The module `pyroscope._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    memory::register(m)?;
    Ok(())
}
