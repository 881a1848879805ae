//! Reads training-db records (LMDB values addressed by a [`KvIndex`]) and decodes batches of
//! them in parallel into one caller-provided RGB buffer.
//!
//! Environments are opened lazily, read-only, without the lock file and without readahead, and
//! belong to the process that opened them: a forked child (a DataLoader worker) closes its
//! inherited copies and opens its own. No read transaction outlives one call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RoTxn, WithoutTls};

use crate::batch::{self, JpegFetch};
use crate::error::{F2cError, Result};
use crate::jpeg;
use crate::kv_index::KvIndex;

/// One open LMDB environment and its unnamed database.
struct OpenDb {
    env: Env<WithoutTls>,
    db: Database<Bytes, Bytes>,
}

/// The environments this process has open, shared by every reader of the same path (heed
/// refuses to open one path twice in a process). `users` counts the readers registered in it.
struct Registry {
    pid: u32,
    open: HashMap<PathBuf, (Arc<OpenDb>, usize)>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn lock_registry() -> std::sync::MutexGuard<'static, Option<Registry>> {
    let mut guard = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if guard.as_ref().map(|r| r.pid) != Some(pid) {
        let mut fresh = Registry {
            pid,
            open: HashMap::new(),
        };
        if let Some(inherited) = guard.take() {
            for (path, (db, _)) in inherited.open {
                match Arc::try_unwrap(db) {
                    // Closing the inherited copy only unmaps this process's view and closes
                    // its duplicated descriptors; with NO_LOCK there is no lock-table state.
                    Ok(db) => drop(db),
                    // A clone held by a thread of the parent that does not exist here (a fork
                    // in the middle of a read) can never be released, so heed cannot reopen
                    // the path. Keep using the inherited environment: it is a read-only map of
                    // the same file and, without a lock file, carries no per-process state.
                    // One phantom user keeps it registered for good.
                    Err(db) => {
                        fresh.open.insert(path, (db, 1));
                    }
                }
            }
        }
        *guard = Some(fresh);
    }
    guard
}

fn open_env(path: &Path) -> Result<OpenDb> {
    let io = |e: heed::Error| F2cError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    let mut flags = EnvFlags::READ_ONLY | EnvFlags::NO_LOCK | EnvFlags::NO_READ_AHEAD;
    if path.is_file() {
        flags |= EnvFlags::NO_SUB_DIR; // the path names data.mdb itself
    }
    // SAFETY (flags): READ_ONLY and NO_READ_AHEAD only restrict what LMDB does. NO_LOCK drops the
    // reader lock table, which exists to coordinate readers with writers; f2c never writes
    // through this environment, and a training db must not be written while it is read (the
    // documented contract of LmdbReader), so there is no concurrent access to manage.
    unsafe { options.flags(flags) };
    // SAFETY (open): the map is read-only and, per the same contract, the file is not modified
    // while mapped. Each path is opened at most once per process (the registry above).
    let env = unsafe { options.open(path) }.map_err(io)?;
    let rtxn = env.read_txn().map_err(io)?;
    let db = env
        .open_database::<Bytes, Bytes>(&rtxn, None)
        .map_err(io)?
        .ok_or_else(|| F2cError::Io {
            path: path.display().to_string(),
            message: "the LMDB environment has no main database".into(),
        })?;
    rtxn.commit().map_err(io)?; // makes the database handle usable by later transactions
    Ok(OpenDb { env, db })
}

pub struct LmdbReader {
    /// Canonical paths, one per kv file of the index, in the same order.
    paths: Vec<PathBuf>,
    names: Vec<String>,
    index: Arc<KvIndex>,
    num_threads: usize,
    /// The process in which this reader registered its paths (0: none yet).
    registered_pid: Mutex<u32>,
    image_size: OnceLock<(usize, usize)>,
}

impl LmdbReader {
    pub fn new<P: AsRef<Path>>(
        paths: &[P],
        index: Arc<KvIndex>,
        num_threads: usize,
    ) -> Result<Self> {
        if paths.len() != index.paths().len() {
            return Err(F2cError::InvalidInput(format!(
                "{} lmdb paths given for an index of {} kv files (one lmdb per kv file, in order)",
                paths.len(),
                index.paths().len()
            )));
        }
        if num_threads == 0 {
            return Err(F2cError::InvalidInput(
                "num_threads must be at least 1".into(),
            ));
        }
        let mut canonical = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let c = path.canonicalize().map_err(|e| F2cError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let data = if c.is_dir() {
                c.join("data.mdb")
            } else {
                c.clone()
            };
            if !data.is_file() {
                return Err(F2cError::Io {
                    path: path.display().to_string(),
                    message: "not an LMDB environment (no data.mdb)".into(),
                });
            }
            canonical.push(c);
        }
        Ok(Self {
            names: paths
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect(),
            paths: canonical,
            index,
            num_threads,
            registered_pid: Mutex::new(0),
            image_size: OnceLock::new(),
        })
    }

    pub fn index(&self) -> &Arc<KvIndex> {
        &self.index
    }

    pub fn num_threads(&self) -> usize {
        self.num_threads
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// This process's environments for this reader's paths, opening them on first use.
    fn handles(&self) -> Result<Vec<Arc<OpenDb>>> {
        let mut registry = lock_registry();
        let registry = registry.as_mut().expect("lock_registry initialises it");
        let mut registered = self
            .registered_pid
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for path in &self.paths {
            if !registry.open.contains_key(path) {
                match open_env(path) {
                    Ok(db) => registry.open.insert(path.clone(), (Arc::new(db), 0)),
                    Err(err) => {
                        // Close what this call opened for nobody.
                        registry.open.retain(|_, (_, users)| *users > 0);
                        return Err(err);
                    }
                };
            }
        }
        let first_use = *registered != registry.pid;
        let mut handles = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let entry = registry.open.get_mut(path).expect("opened above");
            if first_use {
                entry.1 += 1;
            }
            handles.push(entry.0.clone());
        }
        *registered = registry.pid;
        Ok(handles)
    }

    fn bad_record(&self, row: usize, file: usize, message: String) -> F2cError {
        F2cError::BadRecord {
            key: String::from_utf8_lossy(self.index.key(row)).into_owned(),
            db: self.names[file].clone(),
            message,
        }
    }

    fn get<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        db: &OpenDb,
        row: usize,
        file: usize,
    ) -> Result<&'t [u8]> {
        let key = self.index.key(row);
        match db.db.get(txn, key) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(F2cError::MissingKey {
                key: String::from_utf8_lossy(key).into_owned(),
                db: self.names[file].clone(),
            }),
            Err(e) => Err(self.bad_record(row, file, format!("LMDB read failed: {e}"))),
        }
    }

    /// Calls `f(row, value)` for each row with its raw stored value, in order.
    pub fn for_each_value(&self, rows: &[usize], mut f: impl FnMut(usize, &[u8])) -> Result<()> {
        let handles = self.handles()?;
        let mut txns: Vec<Option<RoTxn<'_, WithoutTls>>> = handles.iter().map(|_| None).collect();
        for &row in rows {
            let file = self.index.file_of_row(row);
            let txn = match &mut txns[file] {
                Some(t) => t,
                slot => slot.insert(self.read_txn(&handles[file], file)?),
            };
            f(row, self.get(txn, &handles[file], row, file)?);
        }
        Ok(())
    }

    fn read_txn<'e>(&self, db: &'e OpenDb, file: usize) -> Result<RoTxn<'e, WithoutTls>> {
        db.env.read_txn().map_err(|e| F2cError::Io {
            path: self.names[file].clone(),
            message: format!("cannot begin a read transaction: {e}"),
        })
    }

    /// (height, width) of the images: that of the index's first record.
    pub fn image_size(&self) -> Result<(usize, usize)> {
        if let Some(&size) = self.image_size.get() {
            return Ok(size);
        }
        if self.index.is_empty() {
            return Err(F2cError::InvalidInput("the index holds no rows".into()));
        }
        let mut size: std::result::Result<(usize, usize), String> = Err(String::new());
        self.for_each_value(&[0], |_, value| {
            size = jpeg::jpeg_payload(value).and_then(jpeg::jpeg_size);
        })?;
        let size = size.map_err(|msg| self.bad_record(0, 0, msg))?;
        Ok(*self.image_size.get_or_init(|| size))
    }

    /// Decodes `rows` (checked index rows) into `out` (`rows.len()` RGB images of
    /// [`Self::image_size`], back to back), mirroring image `i` when `flips[i]`.
    pub fn read_into(&self, rows: &[usize], flips: &[bool], out: &mut [u8]) -> Result<()> {
        let size = self.image_size()?;
        batch::check_batch(rows.len(), flips.len(), out.len(), size)?;
        if rows.is_empty() {
            return Ok(());
        }
        let handles = self.handles()?;
        // Each chunk opens its own transactions (an LMDB read transaction is used by one thread
        // at a time).
        batch::decode_batch(rows, flips, out, size, self.num_threads, || {
            Ok(ChunkTxns {
                reader: self,
                handles: &handles,
                txns: handles.iter().map(|_| None).collect(),
            })
        })
    }
}

/// One decode chunk's read transactions, opened on first use per db.
struct ChunkTxns<'r> {
    reader: &'r LmdbReader,
    handles: &'r [Arc<OpenDb>],
    txns: Vec<Option<RoTxn<'r, WithoutTls>>>,
}

impl JpegFetch for ChunkTxns<'_> {
    fn with_jpeg(
        &mut self,
        row: usize,
        decode: &mut dyn FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let reader = self.reader;
        let file = reader.index.file_of_row(row);
        let db = &self.handles[file];
        let txn = match &mut self.txns[file] {
            Some(t) => t,
            slot => slot.insert(reader.read_txn(db, file)?),
        };
        let value = reader.get(txn, db, row, file)?;
        jpeg::jpeg_payload(value)
            .and_then(decode)
            .map_err(|msg| reader.bad_record(row, file, msg))
    }
}

impl Drop for LmdbReader {
    fn drop(&mut self) {
        let registered = *self
            .registered_pid
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if registered != std::process::id() {
            return; // never used in this process: nothing registered here
        }
        let mut registry = lock_registry();
        let registry = registry.as_mut().expect("lock_registry initialises it");
        for path in &self.paths {
            if let Some(entry) = registry.open.get_mut(path) {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    registry.open.remove(path); // closes the environment once reads finish
                }
            }
        }
    }
}
