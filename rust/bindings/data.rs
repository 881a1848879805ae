//! Python classes of the training-db data path: `KvIndex` and `LmdbReader`.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArray4, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

use crate::jpeg;
use crate::kv_index::KvIndex;
use crate::lmdb_reader::LmdbReader;
use crate::parallel;

/// A path (str / os.PathLike) or a sequence of them → paths.
fn extract_paths(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<PathBuf>> {
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(vec![obj.extract::<PathBuf>()?]);
    }
    let err = || PyTypeError::new_err(format!("{what} must be a path or a sequence of paths"));
    let mut paths = Vec::new();
    for item in obj.try_iter().map_err(|_| err())? {
        paths.push(item?.extract::<PathBuf>().map_err(|_| err())?);
    }
    Ok(paths)
}

fn path_strings(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

pub(super) fn readonly<'py, T: numpy::Element>(
    array: Bound<'py, PyArray1<T>>,
) -> PyResult<Py<PyArray1<T>>> {
    let kwargs = PyDict::new(array.py());
    kwargs.set_item("write", false)?;
    array.call_method("setflags", (), Some(&kwargs))?;
    Ok(array.unbind())
}

/// `np.asarray(obj)` as a 1-D array of `kind` ("rows": integers, "flip": booleans) → Vec.
pub(super) fn numpy_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    boolean: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let np = obj.py().import("numpy")?;
    let array = np.call_method1("asarray", (obj,))?;
    let ndim: usize = array.getattr("ndim")?.extract()?;
    let kind: String = array.getattr("dtype")?.getattr("kind")?.extract()?;
    let size: usize = array.getattr("size")?.extract()?;
    let ok_kind = if boolean {
        kind == "b" || kind == "i" || kind == "u"
    } else {
        kind == "i" || kind == "u"
    };
    if ndim != 1 || !(ok_kind || size == 0) {
        let want = if boolean { "booleans" } else { "integer rows" };
        return Err(PyValueError::new_err(format!(
            "{name} must be a 1-D array of {want}, got ndim={ndim} dtype kind {kind:?}"
        )));
    }
    array.call_method1("astype", (if boolean { "bool" } else { "int64" },))
}

fn checked_rows(index: &KvIndex, rows: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let rows = numpy_vector(rows, "rows", false)?;
    let rows = rows.cast_into::<PyArray1<i64>>()?;
    let rows = rows.readonly();
    rows.as_slice()?
        .iter()
        .map(|&r| Ok(index.check_row(r)?))
        .collect()
}

/// Checks that `data` is a complete, uncorrupted JPEG of at most `max_side` pixels per side
/// (the reader's strict check plus a full decode); returns its (height, width).
#[pyfunction]
#[pyo3(signature = (data, max_side = jpeg::MAX_SIDE))]
pub fn validate_jpeg(py: Python<'_>, data: &[u8], max_side: usize) -> PyResult<(usize, usize)> {
    py.detach(|| jpeg::validate(data, max_side))
        .map_err(PyValueError::new_err)
}

/// A zeroed uint8 array of `shape` from numpy itself, so that a size numpy cannot
/// allocate is a `MemoryError` (PyArray4::zeros would panic).
/// A new uint8 array of `shape` from `numpy.empty`: the caller fills every byte before it is
/// returned (a batch that fails is dropped), so zeroing it first would only cost a serial pass
/// over the whole batch before the parallel decode.
fn empty_u8<'py>(py: Python<'py>, shape: [usize; 4]) -> PyResult<Bound<'py, PyArray4<u8>>> {
    let np = py.import("numpy")?;
    let array = np.call_method1("empty", (shape.to_vec(), "uint8"))?;
    Ok(array.cast_into::<PyArray4<u8>>()?)
}

/// `flip` (None: no flips) as one boolean per row.
pub(super) fn flips_for(rows: usize, flip: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<bool>> {
    let Some(flip) = flip else {
        return Ok(vec![false; rows]);
    };
    let flip = numpy_vector(flip, "flip", true)?.cast_into::<PyArray1<bool>>()?;
    let flip = flip.readonly();
    let flip = flip.as_slice()?.to_vec();
    if flip.len() != rows {
        return Err(PyValueError::new_err(format!(
            "flip has {} entries for {rows} rows",
            flip.len()
        )));
    }
    Ok(flip)
}

/// A new uint8 `[n, height, width, 3]` array filled by `read_into` with the GIL released.
pub(super) fn read_batch<'py>(
    py: Python<'py>,
    n: usize,
    (height, width): (usize, usize),
    out: Option<&Bound<'py, PyAny>>,
    read_into: impl FnOnce(&mut [u8]) -> crate::error::Result<()> + Send,
) -> PyResult<Bound<'py, PyArray4<u8>>> {
    let shape = [n, height, width, 3];
    let batch = match out {
        None => empty_u8(py, shape)?,
        Some(out) => {
            let wrong = || {
                PyValueError::new_err(format!(
                    "out must be a C-contiguous, writeable uint8 array of shape {shape:?}"
                ))
            };
            let array = out.cast::<PyArray4<u8>>().map_err(|_| wrong())?;
            if array.shape() != shape || !array.is_c_contiguous() {
                return Err(wrong());
            }
            array.clone()
        }
    };
    {
        let mut view = batch
            .try_readwrite()
            .map_err(|e| PyValueError::new_err(format!("out cannot be written: {e}")))?;
        let out = view.as_slice_mut()?;
        py.detach(|| read_into(out))?;
    }
    Ok(batch)
}

/// Index of a training db's kv files (see `f2c.KvIndex`).
#[pyclass(name = "KvIndex", module = "f2c._native", frozen)]
pub struct PyKvIndex {
    inner: Arc<KvIndex>,
    labels: Py<PyArray1<i64>>,
    identity_offsets: Py<PyArray1<i64>>,
    identity_rows: Py<PyArray1<i64>>,
}

#[pymethods]
impl PyKvIndex {
    #[new]
    fn new(py: Python<'_>, paths: &Bound<'_, PyAny>) -> PyResult<Self> {
        let paths = extract_paths(paths, "paths")?;
        let mut index = py.detach(|| KvIndex::open(&paths))?;
        let (labels, offsets, rows) = index.take_arrays();
        Ok(Self {
            inner: Arc::new(index),
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
    fn paths(&self) -> Vec<String> {
        path_strings(self.inner.paths())
    }

    #[getter]
    fn label_offsets(&self) -> Vec<i64> {
        self.inner.label_offsets().to_vec()
    }

    fn key<'py>(&self, py: Python<'py>, row: i64) -> PyResult<Bound<'py, PyBytes>> {
        let row = self.inner.check_row(row)?;
        Ok(PyBytes::new(py, self.inner.key(row)))
    }

    fn file_of_row(&self, row: i64) -> PyResult<usize> {
        Ok(self.inner.file_of_row(self.inner.check_row(row)?))
    }

    fn __repr__(&self) -> String {
        format!(
            "KvIndex(rows={}, num_classes={}, files={:?})",
            self.inner.len(),
            self.inner.num_classes(),
            self.paths()
        )
    }

    /// Pickles as its paths: a spawned process re-reads the files.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        let paths = PyList::new(slf.py(), slf.get().paths())?;
        Ok((slf.get_type(), PyTuple::new(slf.py(), [paths])?))
    }
}

/// Parallel JPEG reader over LMDB training dbs (see `f2c.LmdbReader`).
#[pyclass(name = "LmdbReader", module = "f2c._native", frozen)]
pub struct PyLmdbReader {
    inner: LmdbReader,
    index: Py<PyKvIndex>,
}

#[pymethods]
impl PyLmdbReader {
    #[new]
    #[pyo3(signature = (lmdb_paths, index, num_threads = None))]
    fn new(
        lmdb_paths: &Bound<'_, PyAny>,
        index: Bound<'_, PyKvIndex>,
        num_threads: Option<usize>,
    ) -> PyResult<Self> {
        let paths = extract_paths(lmdb_paths, "lmdb_paths")?;
        let threads = num_threads.unwrap_or_else(parallel::default_threads);
        let inner = LmdbReader::new(&paths, index.get().inner.clone(), threads)?;
        Ok(Self {
            inner,
            index: index.unbind(),
        })
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
    fn paths(&self) -> Vec<String> {
        self.inner.names().to_vec()
    }

    #[getter]
    fn index(&self, py: Python<'_>) -> Py<PyKvIndex> {
        self.index.clone_ref(py)
    }

    #[pyo3(signature = (rows, flip = None, out = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        flip: Option<&Bound<'py, PyAny>>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray4<u8>>> {
        let rows = checked_rows(self.inner.index(), rows)?;
        let flips = flips_for(rows.len(), flip)?;
        let size = py.detach(|| self.inner.image_size())?;
        read_batch(py, rows.len(), size, out, |out| {
            self.inner.read_into(&rows, &flips, out)
        })
    }

    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = checked_rows(self.inner.index(), rows)?;
        let list = PyList::empty(py);
        let mut result = Ok(());
        self.inner.for_each_value(&rows, |_, value| {
            if result.is_ok() {
                result = list.append(PyBytes::new(py, value));
            }
        })?;
        result?;
        Ok(list)
    }

    fn __repr__(&self) -> String {
        format!(
            "LmdbReader(paths={:?}, num_threads={})",
            self.inner.names(),
            self.inner.num_threads()
        )
    }

    /// Pickles as (paths, index, num_threads): a spawned process opens its own environments.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let me = slf.get();
        let args =
            (me.paths(), me.index.clone_ref(py), me.inner.num_threads()).into_pyobject(py)?;
        Ok((slf.get_type(), args))
    }
}
