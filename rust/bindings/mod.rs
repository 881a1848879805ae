//! PyO3 wrappers: thin classes that validate arguments, call the pure-Rust core and convert
//! results to numpy arrays. No logic lives here.

pub mod data;
pub mod pool;
pub mod recordio;
pub mod writer;

use pyo3::exceptions::{
    PyIndexError, PyKeyError, PyMemoryError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::PyErr;

use crate::error::F2cError;

impl From<F2cError> for PyErr {
    fn from(err: F2cError) -> PyErr {
        let msg = err.to_string();
        match err {
            F2cError::NothingToUndo => PyRuntimeError::new_err(msg),
            F2cError::Io { .. } => PyOSError::new_err(msg),
            F2cError::MissingKey { .. } => PyKeyError::new_err(msg),
            F2cError::IndexOutOfRange { .. } => PyIndexError::new_err(msg),
            F2cError::RecordIo { .. } => PyValueError::new_err(msg),
            F2cError::OutOfMemory { .. } => PyMemoryError::new_err(msg),
            F2cError::InvalidInput(_)
            | F2cError::CapacityExceeded { .. }
            | F2cError::CorruptState(_)
            | F2cError::Parse { .. }
            | F2cError::BadRecord { .. } => PyValueError::new_err(msg),
        }
    }
}
