use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::error::F2cError;
use crate::pool_index::ClassPoolIndex;

const STATE_VERSION: i64 = 1;

type Int64Array<'py> = Bound<'py, PyArray1<i64>>;

/// LRU index of the dynamic class pool (see `f2c.ClassPoolIndex` for the documented API).
#[pyclass(name = "ClassPoolIndex", module = "f2c._native", subclass)]
pub struct PyClassPoolIndex {
    inner: ClassPoolIndex,
}

fn corrupt(msg: &str) -> PyErr {
    F2cError::CorruptState(msg.to_string()).into()
}

fn state_array<'py>(state: &Bound<'py, PyDict>, key: &str) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let value = state
        .get_item(key)?
        .ok_or_else(|| corrupt(&format!("missing entry {key:?}")))?;
    value
        .extract::<PyReadonlyArray1<'py, i64>>()
        .map_err(|_| corrupt(&format!("entry {key:?} must be a 1-D int64 array")))
}

fn index_from_state(state: &Bound<'_, PyDict>) -> PyResult<ClassPoolIndex> {
    let version: i64 = state
        .get_item("version")?
        .ok_or_else(|| corrupt("missing entry \"version\""))?
        .extract()
        .map_err(|_| corrupt("entry \"version\" must be an int"))?;
    if version != STATE_VERSION {
        return Err(corrupt(&format!("unsupported state version {version}")));
    }
    let capacity: i64 = state
        .get_item("capacity")?
        .ok_or_else(|| corrupt("missing entry \"capacity\""))?
        .extract()
        .map_err(|_| corrupt("entry \"capacity\" must be an int"))?;
    if capacity < 1 {
        return Err(corrupt(&format!(
            "capacity must be at least 1, got {capacity}"
        )));
    }
    let keys = state_array(state, "keys")?;
    let slots = state_array(state, "slots")?;
    Ok(ClassPoolIndex::from_entries(
        capacity as usize,
        keys.as_slice()?,
        slots.as_slice()?,
    )?)
}

#[pymethods]
impl PyClassPoolIndex {
    #[new]
    fn new(capacity: i64) -> PyResult<Self> {
        if capacity < 1 {
            return Err(PyValueError::new_err(format!(
                "capacity must be at least 1, got {capacity}"
            )));
        }
        Ok(Self {
            inner: ClassPoolIndex::new(capacity as usize)?,
        })
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    #[getter]
    fn undo_depth(&self) -> usize {
        self.inner.undo_depth()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, label: i64) -> bool {
        self.inner.contains(label)
    }

    fn __repr__(&self) -> String {
        format!(
            "ClassPoolIndex(capacity={}, len={})",
            self.inner.capacity(),
            self.inner.len()
        )
    }

    #[pyo3(signature = (labels, undoable = false))]
    fn assign<'py>(
        &mut self,
        py: Python<'py>,
        labels: PyReadonlyArray1<'py, i64>,
        undoable: bool,
    ) -> PyResult<(Int64Array<'py>, Bound<'py, PyArray1<bool>>, Int64Array<'py>)> {
        let (slots, hit, evicted) = self.inner.assign(labels.as_slice()?, undoable)?;
        Ok((
            slots.into_pyarray(py),
            hit.into_pyarray(py),
            evicted.into_pyarray(py),
        ))
    }

    fn undo(&mut self) -> PyResult<()> {
        Ok(self.inner.undo()?)
    }

    fn lookup<'py>(
        &self,
        py: Python<'py>,
        labels: PyReadonlyArray1<'py, i64>,
    ) -> PyResult<Int64Array<'py>> {
        Ok(self.inner.lookup(labels.as_slice()?)?.into_pyarray(py))
    }

    fn keys<'py>(&self, py: Python<'py>) -> Int64Array<'py> {
        self.inner.entries().0.into_pyarray(py)
    }

    fn slots<'py>(&self, py: Python<'py>) -> Int64Array<'py> {
        self.inner.entries().1.into_pyarray(py)
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.inner.undo_depth() > 0 {
            return Err(PyValueError::new_err(format!(
                "state_dict() with {} undoable assign(s) pending: undo them first (the undo \
                 history is not part of the state)",
                self.inner.undo_depth()
            )));
        }
        let (keys, slots) = self.inner.entries();
        let state = PyDict::new(py);
        state.set_item("version", STATE_VERSION)?;
        state.set_item("capacity", self.inner.capacity())?;
        state.set_item("keys", keys.into_pyarray(py))?;
        state.set_item("slots", slots.into_pyarray(py))?;
        Ok(state)
    }

    /// Replace this index's state with `state` (validated first; on error nothing changes).
    fn load_state_dict(&mut self, state: &Bound<'_, PyDict>) -> PyResult<()> {
        self.inner = index_from_state(state)?;
        Ok(())
    }

    #[classmethod]
    fn from_state_dict<'py>(
        cls: &Bound<'py, PyType>,
        state: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = index_from_state(state)?;
        let obj = cls.call1((inner.capacity(),))?;
        obj.cast::<PyClassPoolIndex>()?.borrow_mut().inner = inner;
        Ok(obj)
    }
}
