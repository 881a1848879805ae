//! Rust core of f2c. Pure-Rust modules hold the logic and their own `cargo test`s;
//! `bindings` wraps them for Python; the `#[pymodule]` below only wires classes.

pub mod batch;
pub mod bigvec;
pub mod error;
pub mod jpeg;
pub mod kv_index;
pub mod lmdb_reader;
pub mod lmdb_writer;
pub mod parallel;
pub mod pool_index;
pub mod recordio;

mod bindings;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<bindings::pool::PyClassPoolIndex>()?;
    m.add_class::<bindings::data::PyKvIndex>()?;
    m.add_class::<bindings::data::PyLmdbReader>()?;
    m.add_function(wrap_pyfunction!(bindings::data::validate_jpeg, m)?)?;
    m.add_class::<bindings::recordio::PyRecordIoReader>()?;
    m.add_class::<bindings::writer::PyLmdbWriter>()?;
    Ok(())
}
