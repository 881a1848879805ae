//! The one error type of the Rust core, mapped onto Python exception classes in `bindings`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum F2cError {
    /// An argument the caller can fix (bad shape, bad value, bad capacity). → `ValueError`
    InvalidInput(String),
    /// One assign call names more distinct classes than the pool can hold. → `ValueError`
    CapacityExceeded { distinct: usize, capacity: usize },
    /// `undo()` was called with no undoable assign on the stack. → `RuntimeError`
    NothingToUndo,
    /// A state dict that does not describe a valid index. → `ValueError`
    CorruptState(String),
    /// A file that could not be opened or read. → `OSError`
    Io { path: String, message: String },
    /// A text file with a malformed line (1-based line number). → `ValueError`
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    /// A record missing from, or unreadable in, a database. → `KeyError` / `ValueError`
    MissingKey { key: String, db: String },
    BadRecord {
        key: String,
        db: String,
        message: String,
    },
    /// A row or position outside a container. → `IndexError`
    IndexOutOfRange { index: i64, len: usize },
    /// A malformed record of a RecordIO file, by record index (when known) and byte offset.
    /// → `ValueError`
    RecordIo {
        path: String,
        record: Option<u64>,
        offset: u64,
        message: String,
    },
    /// An allocation the system refused; `what` names the input that asked for it.
    /// → `MemoryError`
    OutOfMemory { what: String, bytes: usize },
}

pub type Result<T> = std::result::Result<T, F2cError>;

/// Grows `v` to room for `additional` more elements, or says which input asked for too much.
/// Sizes that come from input are reserved through this (never `Vec::reserve`, which aborts the
/// process when the allocation fails).
pub fn try_reserve<T>(
    v: &mut Vec<T>,
    additional: usize,
    what: impl FnOnce() -> String,
) -> Result<()> {
    v.try_reserve(additional)
        .map_err(|_| F2cError::OutOfMemory {
            what: what(),
            bytes: additional.saturating_mul(std::mem::size_of::<T>()),
        })
}

impl fmt::Display for F2cError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            F2cError::InvalidInput(msg) => write!(f, "{msg}"),
            F2cError::CapacityExceeded { distinct, capacity } => write!(
                f,
                "one assign call holds {distinct} distinct classes but the pool capacity is \
                 {capacity}; classes of the same call would evict each other (raise the pool \
                 size to at least {distinct})"
            ),
            F2cError::NothingToUndo => write!(f, "undo() called with no undoable assign to revert"),
            F2cError::CorruptState(msg) => write!(f, "corrupt ClassPoolIndex state: {msg}"),
            F2cError::Io { path, message } => write!(f, "{path}: {message}"),
            F2cError::Parse {
                path,
                line,
                message,
            } => write!(f, "{path}:{line}: {message}"),
            F2cError::MissingKey { key, db } => write!(f, "key {key:?} not found in {db}"),
            F2cError::BadRecord { key, db, message } => {
                write!(f, "record {key:?} in {db}: {message}")
            }
            F2cError::IndexOutOfRange { index, len } => {
                write!(f, "row {index} out of range for an index of {len} rows")
            }
            F2cError::RecordIo {
                path,
                record,
                offset,
                message,
            } => match record {
                Some(record) => write!(f, "{path}: record {record} at byte {offset}: {message}"),
                None => write!(f, "{path}: at byte {offset}: {message}"),
            },
            F2cError::OutOfMemory { what, bytes } => {
                write!(f, "{what}: cannot allocate {bytes} bytes")
            }
        }
    }
}

impl std::error::Error for F2cError {}
