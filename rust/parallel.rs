//! Rayon thread pools owned by the current process.
//!
//! A forked child (a DataLoader worker) inherits the parent's pool objects but none of their
//! threads, so pools are keyed by process id and built lazily in each process. The global rayon
//! pool is never used for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{F2cError, Result};

type Pools = (u32, HashMap<usize, Arc<ThreadPool>>);

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

/// This process's pool of `threads` workers, built on first use.
pub fn pool(threads: usize) -> Result<Arc<ThreadPool>> {
    let pid = std::process::id();
    let mut guard = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.as_ref().map(|(owner, _)| *owner) != Some(pid) {
        if let Some(inherited) = guard.take() {
            // Pools of the parent: their threads do not exist here, and dropping them would
            // signal workers that will never answer. Leak them (a few bytes per fork).
            std::mem::forget(inherited);
        }
        *guard = Some((pid, HashMap::new()));
    }
    let (_, pools) = guard.as_mut().expect("initialised above");
    if let Some(pool) = pools.get(&threads) {
        return Ok(pool.clone());
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("f2c-decode-{i}"))
        .build()
        .map_err(|e| {
            F2cError::InvalidInput(format!("cannot start {threads} decode threads: {e}"))
        })?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(pool)
}

/// Default worker count: the CPUs this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_cached_per_size() {
        let a = pool(2).unwrap();
        let b = pool(2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
        assert_eq!(pool(1).unwrap().current_num_threads(), 1);
    }
}
