//! Writes the LMDB environment of a training db: batches of (key, value) records, one write
//! transaction per batch, the map grown on demand, and one sync when the writer is closed.
//!
//! Commits do not wait for the disk (`NO_SYNC`): a db is written into a staging folder that is
//! renamed into place only after [`LmdbWriter::close`] has synced it, so a crash leaves no
//! half-written db where a reader could find it. Each commit starts the disk write-back of what
//! it wrote (without waiting), so the final sync has little left to do.

use std::fs::File;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, PutFlags, WithoutTls};

use crate::error::{F2cError, Result};

/// How a batch failed: LMDB's map was full (grow it and write the batch again), or for good.
enum Failure {
    MapFull,
    Error(F2cError),
}

impl From<F2cError> for Failure {
    fn from(e: F2cError) -> Self {
        Failure::Error(e)
    }
}

/// A key as error messages quote it.
fn quoted(key: &[u8]) -> String {
    format!("'{}'", String::from_utf8_lossy(key))
}

pub struct LmdbWriter {
    path: PathBuf,
    /// `None` once closed.
    env: Option<Env<WithoutTls>>,
    db: Database<Bytes, Bytes>,
    /// `data.mdb`, opened a second time only to start its write-back after each commit.
    data: File,
    /// Keys must arrive in increasing byte order (LMDB's `MDB_APPEND`: no B-tree search).
    append: bool,
    /// The last key committed, to say why an appended key was refused.
    last_key: Vec<u8>,
    count: u64,
}

impl std::fmt::Debug for LmdbWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbWriter")
            .field("path", &self.path)
            .field("count", &self.count)
            .field("append", &self.append)
            .finish()
    }
}

impl LmdbWriter {
    /// Creates the environment in the folder `dir` (made if missing; it must not hold one yet).
    pub fn create(dir: &Path, initial_map_size: usize, append: bool) -> Result<Self> {
        let io = |e: &dyn std::fmt::Display| F2cError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        if dir.join("data.mdb").exists() {
            return Err(io(&"already holds an LMDB environment (data.mdb)"));
        }
        let page = page_size();
        let map_size = initial_map_size.max(page).div_ceil(page) * page;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(0);
        // SAFETY (flags): NO_SYNC and NO_META_SYNC only drop the per-commit fsync; `close` syncs
        // once before the db is published, and a db not closed is never published (staging).
        // NO_MEM_INIT skips zeroing the unused tail of pages before they are written: those
        // bytes are never read back (LMDB reads only what its page headers delimit).
        unsafe {
            options.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC | EnvFlags::NO_MEM_INIT)
        };
        // SAFETY (open): the folder was just checked to hold no environment, so no other
        // process or handle maps this file; this writer is its only user until closed.
        let env = unsafe { options.open(dir) }.map_err(|e| io(&e))?;
        let mut wtxn = env.write_txn().map_err(|e| io(&e))?;
        let db = env
            .create_database::<Bytes, Bytes>(&mut wtxn, None)
            .map_err(|e| io(&e))?;
        wtxn.commit().map_err(|e| io(&e))?;
        let data = File::open(dir.join("data.mdb")).map_err(|e| io(&e))?;
        Ok(Self {
            path: dir.to_path_buf(),
            env: Some(env),
            db,
            data,
            append,
            last_key: Vec::new(),
            count: 0,
        })
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn io_error(&self, e: impl std::fmt::Display) -> F2cError {
        F2cError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn env(&self) -> Result<&Env<WithoutTls>> {
        self.env
            .as_ref()
            .ok_or_else(|| F2cError::InvalidInput("the LMDB writer is closed".into()))
    }

    /// Writes the records that `records` hands to its sink, as one transaction: all of them
    /// or, on an error, none. `records` may be called more than once (the map is grown and the
    /// batch written again when it does not fit), and must hand over the same records each time.
    pub fn write_batch<F>(&mut self, mut records: F) -> Result<usize>
    where
        F: FnMut(&mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()>,
    {
        loop {
            match self.try_batch(&mut records) {
                Ok(written) => return Ok(written),
                Err(Failure::Error(e)) => return Err(e),
                Err(Failure::MapFull) => self.grow()?,
            }
        }
    }

    fn try_batch<F>(&mut self, records: &mut F) -> std::result::Result<usize, Failure>
    where
        F: FnMut(&mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()>,
    {
        let env = self.env()?;
        let mut wtxn = env.write_txn().map_err(|e| self.io_error(e))?;
        let flags = if self.append {
            PutFlags::APPEND
        } else {
            PutFlags::NO_OVERWRITE
        };
        let mut previous = self.last_key.clone();
        let mut written = 0usize;
        let mut full = false;
        let db = self.db;
        let outcome = records(&mut |key: &[u8], value: &[u8]| match db
            .put_with_flags(&mut wtxn, flags, key, value)
        {
            Ok(()) => {
                previous.clear();
                previous.extend_from_slice(key);
                written += 1;
                Ok(())
            }
            Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => Err(F2cError::InvalidInput(
                if self.append && key < previous.as_slice() {
                    format!(
                        "record key {} is not after {} (keys must increase when appending)",
                        quoted(key),
                        quoted(&previous)
                    )
                } else {
                    format!("duplicate record key {}", quoted(key))
                },
            )),
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                full = true;
                Err(F2cError::InvalidInput("map full".into()))
            }
            Err(heed::Error::Mdb(heed::MdbError::BadValSize)) => Err(F2cError::InvalidInput(
                format!("record key {} is empty or too long for LMDB", quoted(key)),
            )),
            Err(e) => Err(F2cError::Io {
                path: self.path.display().to_string(),
                message: e.to_string(),
            }),
        });
        if full {
            return Err(Failure::MapFull); // dropping `wtxn` aborts the transaction
        }
        outcome?;
        match wtxn.commit() {
            Ok(()) => {}
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => return Err(Failure::MapFull),
            Err(e) => return Err(self.io_error(e).into()),
        }
        self.last_key = previous;
        self.count += written as u64;
        start_write_back(&self.data);
        Ok(written)
    }

    /// Doubles the map (no transaction is open: the failed one was aborted).
    fn grow(&mut self) -> Result<()> {
        let env = self.env()?;
        let size = env.info().map_size;
        let next = size
            .checked_mul(2)
            .ok_or_else(|| self.io_error("the LMDB map cannot grow further"))?;
        // SAFETY: `resize` requires that no transaction of this environment is active. Only this
        // writer uses the environment, its transactions never outlive `try_batch`, and the one
        // that failed was dropped (aborted) before this call.
        unsafe { env.resize(next) }.map_err(|e| self.io_error(e))
    }

    /// Closes the environment without syncing it (the db is being discarded); idempotent.
    pub fn abort(&mut self) {
        if let Some(env) = self.env.take() {
            env.prepare_for_closing().wait();
        }
    }

    /// Syncs everything to disk and closes the environment; idempotent.
    pub fn close(&mut self) -> Result<()> {
        let Some(env) = self.env.take() else {
            return Ok(());
        };
        let synced = env.force_sync().map_err(|e| self.io_error(e));
        env.prepare_for_closing().wait();
        synced
    }
}

impl Drop for LmdbWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Asks the kernel to start writing `file`'s dirty pages to disk, without waiting for them.
fn start_write_back(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `file` is an open descriptor for the life of this call; the call only
        // schedules write-back of the file's pages and touches no memory of ours. A failure
        // merely leaves the work to the final sync, so its result is ignored.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 only for unknown names.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heed::EnvOpenOptions;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("f2c-lmdb-writer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn read_all(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        // SAFETY: the writer of this folder was closed; nothing else maps it.
        unsafe { options.flags(EnvFlags::READ_ONLY) };
        // SAFETY: as above, the file is not modified while this test maps it.
        let env = unsafe { options.open(dir) }.unwrap();
        let rtxn = env.read_txn().unwrap();
        let db: Database<Bytes, Bytes> = env.open_database(&rtxn, None).unwrap().unwrap();
        let all = db
            .iter(&rtxn)
            .unwrap()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        drop(rtxn);
        env.prepare_for_closing().wait();
        all
    }

    fn put_all(writer: &mut LmdbWriter, records: &[(Vec<u8>, Vec<u8>)]) -> Result<usize> {
        writer.write_batch(|sink| {
            for (k, v) in records {
                sink(k, v)?;
            }
            Ok(())
        })
    }

    #[test]
    fn batches_grow_the_map_and_read_back() {
        let dir = temp_dir("grow");
        // A 16-page map cannot hold 64 values of 5 KB: it grows several times.
        let mut writer = LmdbWriter::create(&dir, 16 * 4096, true).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..64u32)
            .map(|i| (format!("{i:04}").into_bytes(), vec![i as u8; 5000]))
            .collect();
        assert_eq!(put_all(&mut writer, &records[..40]).unwrap(), 40);
        assert_eq!(put_all(&mut writer, &records[40..]).unwrap(), 24);
        assert_eq!(writer.count(), 64);
        writer.close().unwrap();
        writer.close().unwrap();
        assert_eq!(read_all(&dir), records);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refused_keys_abort_the_whole_batch() {
        let dir = temp_dir("refused");
        let mut writer = LmdbWriter::create(&dir, 1 << 20, true).unwrap();
        let rec = |k: &str| (k.as_bytes().to_vec(), b"v".to_vec());
        put_all(&mut writer, &[rec("b")]).unwrap();
        let err = put_all(&mut writer, &[rec("c"), rec("a")]).unwrap_err();
        assert!(err.to_string().contains("'a' is not after 'c'"), "{err}");
        let err = put_all(&mut writer, &[rec("b")]).unwrap_err();
        assert!(
            err.to_string().contains("duplicate record key 'b'"),
            "{err}"
        );
        let err = put_all(&mut writer, &[rec("")]).unwrap_err();
        assert!(err.to_string().contains("empty or too long"), "{err}");
        writer.close().unwrap();
        // Only the first batch went in.
        assert_eq!(read_all(&dir), vec![rec("b")]);

        let mut unordered = LmdbWriter::create(&dir.join("any"), 1 << 20, false).unwrap();
        put_all(&mut unordered, &[rec("b"), rec("a")]).unwrap();
        let err = put_all(&mut unordered, &[rec("a")]).unwrap_err();
        assert!(
            err.to_string().contains("duplicate record key 'a'"),
            "{err}"
        );
        unordered.close().unwrap();
        assert_eq!(read_all(&dir.join("any")), vec![rec("a"), rec("b")]);
        assert!(LmdbWriter::create(&dir, 1 << 20, false).is_err()); // holds one already
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
