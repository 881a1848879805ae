//! Python class `RecordIOReader`: an insightface RecordIO pack read in place.

use std::ffi::CString;
use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1, PyArray4, PyArrayMethods};
use pyo3::exceptions::{PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple, PyType};

use super::data::{flips_for, numpy_vector, read_batch, readonly};
use crate::parallel;
use crate::recordio::{IdxSource, LabelSource, RecordIoReader};

fn checked_rows(reader: &RecordIoReader, rows: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let rows = numpy_vector(rows, "rows", false)?.cast_into::<PyArray1<i64>>()?;
    let rows = rows.readonly();
    rows.as_slice()?
        .iter()
        .map(|&r| Ok(reader.check_row(r)?))
        .collect()
}

/// Parallel JPEG reader over an insightface RecordIO pack (see `f2c.RecordIOReader`).
#[pyclass(name = "RecordIOReader", module = "f2c._native", frozen)]
pub struct PyRecordIoReader {
    inner: RecordIoReader,
    rec_path: PathBuf,
    /// The `.idx` as given (None: the one beside the `.rec`, or a scan).
    idx_arg: Option<PathBuf>,
    label_source: LabelSource,
    labels: Py<PyArray1<i64>>,
    identity_offsets: Py<PyArray1<i64>>,
    identity_rows: Py<PyArray1<i64>>,
}

impl PyRecordIoReader {
    /// The pure-Rust reader (for the LMDB writer's RecordIO copy).
    pub(super) fn inner(&self) -> &RecordIoReader {
        &self.inner
    }

    /// The labels of the rows (moved out of the pure-Rust reader into this array at open).
    pub(super) fn labels_array(&self) -> &Py<PyArray1<i64>> {
        &self.labels
    }
}

#[pymethods]
impl PyRecordIoReader {
    #[new]
    #[pyo3(signature = (rec_path, idx_path = None, num_threads = None, label_source = "auto"))]
    fn new(
        py: Python<'_>,
        rec_path: PathBuf,
        idx_path: Option<PathBuf>,
        num_threads: Option<usize>,
        label_source: &str,
    ) -> PyResult<Self> {
        let labels_from = match label_source {
            "auto" => LabelSource::Auto,
            "records" => LabelSource::Records,
            other => {
                return Err(PyValueError::new_err(format!(
                    "label_source must be \"auto\" or \"records\", got {other:?}"
                )))
            }
        };
        let idx = match &idx_path {
            Some(path) => IdxSource::File(path.clone()),
            None => IdxSource::beside(&rec_path),
        };
        if idx == IdxSource::Scan && rec_path.is_file() {
            let message = format!(
                "{}: no .idx beside it; scanning the whole .rec for record offsets (slow on a \
                 large pack; keep its .idx next to it)",
                rec_path.display()
            );
            let category = py.get_type::<PyUserWarning>();
            PyErr::warn(py, &category, &CString::new(message)?, 1)?;
        }
        let threads = num_threads.unwrap_or_else(parallel::default_threads);
        let mut inner = py.detach(|| RecordIoReader::open(&rec_path, idx, labels_from, threads))?;
        let (labels, offsets, rows) = inner.take_arrays();
        Ok(Self {
            inner,
            rec_path,
            idx_arg: idx_path,
            label_source: labels_from,
            labels: readonly(labels.into_pyarray(py))?,
            identity_offsets: readonly(offsets.into_pyarray(py))?,
            identity_rows: readonly(rows.into_pyarray(py))?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn labels(&self, py: Python<'_>) -> Py<PyArray1<i64>> {
        self.labels.clone_ref(py)
    }

    #[getter]
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    #[getter]
    fn identity_offsets(&self, py: Python<'_>) -> Py<PyArray1<i64>> {
        self.identity_offsets.clone_ref(py)
    }

    #[getter]
    fn identity_rows(&self, py: Python<'_>) -> Py<PyArray1<i64>> {
        self.identity_rows.clone_ref(py)
    }

    #[getter]
    fn image_size(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        Ok(py.detach(|| self.inner.image_size())?)
    }

    #[getter]
    fn num_threads(&self) -> usize {
        self.inner.num_threads()
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.name().to_string()
    }

    /// The `.idx` the offsets came from, or None when the `.rec` was scanned.
    #[getter]
    fn idx_path(&self) -> Option<String> {
        match self.inner.idx_source() {
            IdxSource::File(path) => Some(path.display().to_string()),
            IdxSource::Scan => None,
        }
    }

    /// `[first identity record, end)` of header record 0, or None for a pack without one.
    #[getter]
    fn header(&self) -> Option<(u64, u64)> {
        self.inner.header()
    }

    /// "identity records" or "records": where the labels came from.
    #[getter]
    fn label_source(&self) -> &'static str {
        if self.inner.labels_from_identities() {
            "identity records"
        } else {
            "records"
        }
    }

    /// The record index (`.idx` key) of every row.
    fn keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let keys: Vec<i64> = (0..self.inner.len())
            .map(|row| self.inner.key(row) as i64)
            .collect();
        keys.into_pyarray(py)
    }

    fn key(&self, row: i64) -> PyResult<u64> {
        Ok(self.inner.key(self.inner.check_row(row)?))
    }

    fn offset(&self, row: i64) -> PyResult<u64> {
        Ok(self.inner.offset(self.inner.check_row(row)?))
    }

    #[pyo3(signature = (rows, flip = None, out = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        flip: Option<&Bound<'py, PyAny>>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray4<u8>>> {
        let rows = checked_rows(&self.inner, rows)?;
        let flips = flips_for(rows.len(), flip)?;
        let size = py.detach(|| self.inner.image_size())?;
        read_batch(py, rows.len(), size, out, |out| {
            self.inner.read_into(&rows, &flips, out)
        })
    }

    /// Asks the kernel to read the records of `rows` ahead (for reads in file order).
    fn prefetch(&self, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = checked_rows(&self.inner, rows)?;
        self.inner.prefetch(&rows);
        Ok(())
    }

    /// The image bytes (after the IRHeader and its labels) of each row, as stored.
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = checked_rows(&self.inner, rows)?;
        let list = PyList::empty(py);
        let mut result = Ok(());
        self.inner.for_each_image(&rows, |_, image| {
            if result.is_ok() {
                result = list.append(PyBytes::new(py, image));
            }
        })?;
        result?;
        Ok(list)
    }

    fn __repr__(&self) -> String {
        format!(
            "RecordIOReader(path={:?}, rows={}, num_classes={}, idx={:?}, num_threads={})",
            self.inner.name(),
            self.inner.len(),
            self.inner.num_classes(),
            self.idx_path(),
            self.inner.num_threads()
        )
    }

    /// Pickles as its arguments: a spawned process maps the file and reads the index again.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let me = slf.get();
        let label_source = match me.label_source {
            LabelSource::Auto => "auto",
            LabelSource::Records => "records",
        };
        let args = (
            me.rec_path.clone(),
            me.idx_arg.clone(),
            me.inner.num_threads(),
            label_source,
        )
            .into_pyobject(py)?;
        Ok((slf.get_type(), args))
    }
}
