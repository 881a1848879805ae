//! Python class `LmdbWriter`: the LMDB part of a training-db writer (see `f2c.data.db`).

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::data::numpy_vector;
use super::recordio::PyRecordIoReader;
use crate::error::F2cError;
use crate::lmdb_writer::LmdbWriter;

/// Writes batches of records into a new LMDB environment, one transaction per batch.
#[pyclass(name = "LmdbWriter", module = "f2c._native")]
pub struct PyLmdbWriter {
    inner: LmdbWriter,
}

#[pymethods]
impl PyLmdbWriter {
    #[new]
    #[pyo3(signature = (path, initial_map_size = 1 << 30, append = false))]
    fn new(py: Python<'_>, path: PathBuf, initial_map_size: usize, append: bool) -> PyResult<Self> {
        let inner = py.detach(|| LmdbWriter::create(&path, initial_map_size, append))?;
        Ok(Self { inner })
    }

    /// Records written so far.
    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }

    /// Writes `keys[i] → values[i]` (bytes) as one transaction; all or, on an error, none.
    fn put_many(
        &mut self,
        py: Python<'_>,
        keys: &Bound<'_, PyList>,
        values: &Bound<'_, PyList>,
    ) -> PyResult<usize> {
        if keys.len() != values.len() {
            return Err(PyValueError::new_err(format!(
                "{} keys and {} values differ in number",
                keys.len(),
                values.len()
            )));
        }
        let keys: Vec<Bound<'_, PyBytes>> = keys
            .iter()
            .map(|k| k.cast_into())
            .collect::<Result<_, _>>()?;
        let values: Vec<Bound<'_, PyBytes>> = values
            .iter()
            .map(|v| v.cast_into())
            .collect::<Result<_, _>>()?;
        // The lists' bytes objects are immutable and stay alive (borrowed above) while the
        // records are copied, so their buffers can be read without the GIL.
        let pairs: Vec<(&[u8], &[u8])> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let inner = &mut self.inner;
        Ok(py.detach(|| {
            inner.write_batch(|sink| {
                for (key, value) in &pairs {
                    sink(key, value)?;
                }
                Ok(())
            })
        })?)
    }

    /// Copies the JPEGs of `rows` of a RecordIO pack as one transaction, keyed by their record
    /// index zero-padded to `key_width` digits; returns their kv lines (`key label\n`).
    fn put_recordio<'py>(
        &mut self,
        py: Python<'py>,
        reader: PyRef<'py, PyRecordIoReader>,
        rows: &Bound<'py, PyAny>,
        key_width: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let source = reader.inner();
        let rows = numpy_vector(rows, "rows", false)?.cast_into::<PyArray1<i64>>()?;
        let rows: Vec<usize> = rows
            .readonly()
            .as_slice()?
            .iter()
            .map(|&r| source.check_row(r))
            .collect::<Result<_, _>>()?;
        let labels = reader.labels_array().bind(py).readonly();
        let labels = labels.as_slice()?;
        let inner = &mut self.inner;
        let lines = py.detach(|| -> Result<Vec<u8>, F2cError> {
            let keys: Vec<String> = rows
                .iter()
                .map(|&row| format!("{:0key_width$}", source.key(row)))
                .collect();
            inner.write_batch(|sink| {
                for (&row, key) in rows.iter().zip(&keys) {
                    source.with_jpeg(row, |jpeg| sink(key.as_bytes(), jpeg))??;
                }
                Ok(())
            })?;
            let mut lines = Vec::with_capacity(rows.len() * (key_width + 8));
            for (&row, key) in rows.iter().zip(&keys) {
                lines.extend_from_slice(format!("{key} {}\n", labels[row]).as_bytes());
            }
            Ok(lines)
        })?;
        Ok(PyBytes::new(py, &lines))
    }

    /// Syncs the environment to disk and closes it (idempotent).
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        Ok(py.detach(|| inner.close())?)
    }

    /// Closes the environment without syncing it (the db is being discarded; idempotent).
    fn abort(&mut self, py: Python<'_>) {
        let inner = &mut self.inner;
        py.detach(|| inner.abort());
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
