//! The LRU index of F²C's dynamic class pool: class id → pool slot.
//!
//! Recency is a touch log, not a linked list. Each touch of a slot appends the slot to `queue`
//! and records that queue position as the slot's `pos`; an older queue entry of the same slot is
//! then stale. The least-recently-used slot is the first live entry from `front` on, so an
//! eviction reads the queue in order instead of chasing list links through memory, and the
//! random accesses of an eviction (slot records, id-table entries) have addresses known several
//! queue entries ahead, which lets them be prefetched. At the start of a call the queue drops
//! its spent entries, or compacts to its live ones, once it outgrows a few entries per slot.
//!
//! Class ids below `DENSE_LIMIT` map through a flat table (the fast path for dense labels
//! 0..C); larger ids go through a hash map. A call that may have to be reverted (an undoable
//! one, or one with more labels than slots, which may overflow) journals what it changes.
//!
//! Memory follows what the index holds, not its capacity: slot records exist for the slots
//! used so far plus those one call may fill, and every growth is reserved fallibly before a
//! call changes anything, so a huge
//! capacity (a hostile state dict) costs nothing until classes fill it, and a refused
//! allocation is an error, never an abort.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{try_reserve, F2cError, Result};

const NIL: u32 = u32::MAX;
/// Ids below this go through the dense table (at most 256 MiB of u32 entries).
const DENSE_LIMIT: u64 = 1 << 26;
const EMPTY_LABEL: u64 = u64::MAX;
/// `pos` of a slot that holds no class.
const NO_POS: u64 = u64::MAX;
/// Labels ahead whose id-table entry `assign` prefetches.
const TABLE_PREFETCH_DISTANCE: usize = 32;
/// Queue entries past the eviction front whose slot record it prefetches.
const QUEUE_PREFETCH_DISTANCE: usize = 16;
/// Queue entries past the eviction front whose class's id-table entry it prefetches.
const VICTIM_PREFETCH_DISTANCE: usize = 6;
/// Queue entries per slot before spent entries are dropped or stale ones compacted away: a
/// cleanup pass costs about one entry read per touch divided by (this - 1).
const QUEUE_SLOTS_FACTOR: usize = 4;
/// Slack over that before cleanup (keeps tiny pools from cleaning up every call).
const QUEUE_SLACK: usize = 256;

/// A multiplicative hasher for u64 keys (class ids are not attacker-chosen).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Ask the CPU to start loading the cache line of `value` (a hint; no effect on results).
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs only SSE, part of the x86_64 baseline that every x86_64
        // CPU has; a prefetch never faults and reads nothing architecturally, and the pointer
        // comes from a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[derive(Default, Clone)]
struct LabelMap {
    dense: Vec<u32>,
    sparse: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
}

impl LabelMap {
    #[inline]
    fn get(&self, label: u64) -> Option<u32> {
        if label < DENSE_LIMIT {
            match self.dense.get(label as usize) {
                Some(&s) if s != NIL => Some(s),
                _ => None,
            }
        } else {
            self.sparse.get(&label).copied()
        }
    }

    /// Room for the ids of one call (largest dense id, count of sparse ids) before it starts,
    /// so that `insert` never allocates.
    fn reserve(&mut self, max_dense: Option<u64>, sparse: usize) -> Result<()> {
        if let Some(max) = max_dense {
            let i = max as usize;
            if i >= self.dense.len() {
                let new_len = (i + 1)
                    .max(self.dense.len() * 3 / 2)
                    .min(DENSE_LIMIT as usize);
                let additional = new_len - self.dense.len();
                try_reserve(&mut self.dense, additional, || {
                    format!("ClassPoolIndex id table up to class id {max}")
                })?;
                self.dense.resize(new_len, NIL);
            }
        }
        self.sparse
            .try_reserve(sparse)
            .map_err(|_| F2cError::OutOfMemory {
                what: format!("ClassPoolIndex hash map for {sparse} more class ids"),
                bytes: sparse.saturating_mul(12),
            })
    }

    /// Hint the CPU to load the table entry of `label`: the table is larger than L2 for big
    /// label spaces, and ids arrive in random order.
    #[inline]
    fn prefetch(&self, label: u64) {
        if let Some(entry) = self.dense.get(label as usize) {
            prefetch(entry);
        }
    }

    #[inline]
    fn insert(&mut self, label: u64, slot: u32) {
        if label < DENSE_LIMIT {
            let i = label as usize;
            if i >= self.dense.len() {
                let new_len = (i + 1)
                    .max(self.dense.len() * 3 / 2)
                    .min(DENSE_LIMIT as usize);
                self.dense.resize(new_len, NIL);
            }
            self.dense[i] = slot;
        } else {
            self.sparse.insert(label, slot);
        }
    }

    #[inline]
    fn remove(&mut self, label: u64) {
        if label < DENSE_LIMIT {
            if let Some(s) = self.dense.get_mut(label as usize) {
                *s = NIL;
            }
        } else {
            self.sparse.remove(&label);
        }
    }
}

/// A slot's class and the queue position of its latest touch.
#[derive(Clone, Copy, Debug)]
struct SlotRecord {
    label: u64,
    pos: u64,
}

const EMPTY_SLOT: SlotRecord = SlotRecord {
    label: EMPTY_LABEL,
    pos: NO_POS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// The class was present and was touched again.
    Hit,
    /// The class took a never-used slot.
    Fill,
    /// The class took the least-recently-used slot from `old_label`.
    Evict,
}

/// One change to a slot, with what is needed to reverse it.
#[derive(Clone, Copy, Debug)]
struct JournalEntry {
    op: Op,
    slot: u32,
    old_pos: u64,
    old_label: u64,
    new_label: u64,
}

/// What reverting a run of calls needs: the queue as it was before them, and their changes.
#[derive(Clone, Debug)]
struct Journal {
    queue_len: usize,
    front: usize,
    entries: Vec<JournalEntry>,
}

/// What one `assign` call reports, besides the per-label outputs written in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssignSummary {
    pub evicted: Vec<i64>,
}

/// Where `assign_loop` writes its per-label results.
struct Outputs<'a> {
    slots: &'a mut [i64],
    hit: &'a mut [bool],
    evicted: &'a mut Vec<i64>,
}

/// The labels of one call, scanned before it changes anything.
struct LabelScan {
    /// Largest id that goes through the dense table.
    max_dense: Option<u64>,
    /// Ids that go through the hash map (an upper bound on its new entries).
    sparse: usize,
}

/// Record a touch of slot `s` at the end of the queue: it becomes the most recent.
#[inline(always)]
fn touch(records: &mut [SlotRecord], queue: &mut Vec<u32>, base: u64, s: u32) {
    records[s as usize].pos = base + queue.len() as u64;
    queue.push(s);
}

/// Whether queue entry `index` (holding slot `s`) is that slot's latest touch; earlier
/// entries of the slot are stale.
#[inline(always)]
fn is_live(records: &[SlotRecord], base: u64, s: u32, index: usize) -> bool {
    records[s as usize].pos == base + index as u64
}

/// Take the least-recently-used slot: the first live queue entry from `front` on.
#[inline(always)]
fn pop_lru(
    records: &[SlotRecord],
    queue: &[u32],
    front: &mut usize,
    base: u64,
    map: &LabelMap,
) -> u32 {
    loop {
        let p = *front;
        let s = queue[p];
        *front = p + 1;
        // Warm what the next evictions read: slot records further on, and (their records
        // being cached by then) the id-table entries of the classes they hold.
        if let Some(&ahead) = queue.get(p + QUEUE_PREFETCH_DISTANCE) {
            prefetch(&records[ahead as usize]);
        }
        if let Some(&near) = queue.get(p + VICTIM_PREFETCH_DISTANCE) {
            map.prefetch(records[near as usize].label);
        }
        if is_live(records, base, s, p) {
            return s;
        }
    }
}

/// The per-label loop of `ClassPoolIndex::assign_into`, over the index's parts borrowed
/// separately and compiled twice: with the journal (undoable calls, calls that may overflow)
/// and without it (the common plain call, which then tests no flag per label). Returns
/// `Err(())` when a label would evict a slot touched by this call (the caller rolls back).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn assign_loop<const JOURNALED: bool>(
    out: Outputs<'_>,
    labels: &[i64],
    records: &mut [SlotRecord],
    queue: &mut Vec<u32>,
    front: &mut usize,
    base: u64,
    map: &mut LabelMap,
    used: &mut u32,
    capacity: u32,
    call_start: u64,
    journal: &mut Vec<JournalEntry>,
) -> std::result::Result<(), ()> {
    let Outputs {
        slots,
        hit,
        evicted,
    } = out;
    // Same lengths as `labels`, stated so that the per-label writes need no bounds checks.
    let slots = &mut slots[..labels.len()];
    let hit = &mut hit[..labels.len()];
    // The caller made room in `records` (every slot this call may fill), `queue`, `evicted`
    // and `journal`.
    for (i, &raw) in labels.iter().enumerate() {
        if let Some(&ahead) = labels.get(i + TABLE_PREFETCH_DISTANCE) {
            map.prefetch(ahead as u64);
        }
        let label = raw as u64;
        let (s, was_hit) = if let Some(s) = map.get(label) {
            if JOURNALED {
                journal.push(JournalEntry {
                    op: Op::Hit,
                    slot: s,
                    old_pos: records[s as usize].pos,
                    old_label: label,
                    new_label: label,
                });
            }
            (s, true)
        } else if *used < capacity {
            let s = *used;
            *used += 1;
            if JOURNALED {
                journal.push(JournalEntry {
                    op: Op::Fill,
                    slot: s,
                    old_pos: NO_POS,
                    old_label: EMPTY_LABEL,
                    new_label: label,
                });
            }
            records[s as usize].label = label;
            map.insert(label, s);
            (s, false)
        } else {
            let s = pop_lru(records, queue, front, base, map);
            let old = records[s as usize];
            if old.pos >= call_start {
                return Err(());
            }
            if JOURNALED {
                journal.push(JournalEntry {
                    op: Op::Evict,
                    slot: s,
                    old_pos: old.pos,
                    old_label: old.label,
                    new_label: label,
                });
            }
            map.remove(old.label);
            map.insert(label, s);
            records[s as usize].label = label;
            evicted.push(old.label as i64);
            (s, false)
        };
        touch(records, queue, base, s);
        slots[i] = i64::from(s);
        hit[i] = was_hit;
    }
    Ok(())
}

#[derive(Clone)]
pub struct ClassPoolIndex {
    capacity: u32,
    used: u32,
    /// Records of slots `0..used` (slots fill lowest first and are only freed by undo, the
    /// latest first), followed by empty records for slots a call may still fill.
    slots: Vec<SlotRecord>,
    /// Touch log: slot numbers in touch order; entries before `front` are spent.
    queue: Vec<u32>,
    front: usize,
    /// Absolute touch position of `queue[0]` (slot `pos` values are absolute, so dropping
    /// spent entries from the start of the queue leaves them valid).
    base: u64,
    map: LabelMap,
    undo_stack: Vec<Journal>,
    /// Reused allocation for the journal of the current call.
    journal: Vec<JournalEntry>,
}

impl ClassPoolIndex {
    pub fn new(capacity: usize) -> Result<Self> {
        if capacity < 1 || capacity >= NIL as usize {
            return Err(F2cError::InvalidInput(format!(
                "capacity must be between 1 and {}, got {capacity}",
                NIL - 1
            )));
        }
        Ok(ClassPoolIndex {
            capacity: capacity as u32,
            used: 0,
            slots: Vec::new(),
            queue: Vec::new(),
            front: 0,
            base: 0,
            map: LabelMap::default(),
            undo_stack: Vec::new(),
            journal: Vec::new(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    pub fn len(&self) -> usize {
        self.used as usize
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Number of undoable assigns that `undo` can still revert.
    pub fn undo_depth(&self) -> usize {
        self.undo_stack.len()
    }

    pub fn contains(&self, label: i64) -> bool {
        label >= 0 && self.map.get(label as u64).is_some()
    }

    fn check_labels(labels: &[i64]) -> Result<LabelScan> {
        // Min and max in one pass the compiler vectorises; the rarer sparse ids cost a
        // second pass only when present.
        let (min, max) = labels
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        if min < 0 {
            let pos = labels.iter().position(|&l| l < 0).unwrap_or(0);
            return Err(F2cError::InvalidInput(format!(
                "class ids must be non-negative, got {} at position {pos}",
                labels[pos]
            )));
        }
        if labels.is_empty() || (max as u64) < DENSE_LIMIT {
            return Ok(LabelScan {
                max_dense: (!labels.is_empty()).then_some(max as u64),
                sparse: 0,
            });
        }
        let dense = labels.iter().filter(|&&l| (l as u64) < DENSE_LIMIT);
        Ok(LabelScan {
            max_dense: dense.map(|&l| l as u64).max(),
            sparse: labels
                .iter()
                .filter(|&&l| (l as u64) >= DENSE_LIMIT)
                .count(),
        })
    }

    /// Room for everything one call of `n` labels may add, reserved before it changes
    /// anything (a refused allocation then leaves the index as it was).
    fn reserve_for_call(
        &mut self,
        n: usize,
        scan: &LabelScan,
        journaled: bool,
        evicted: &mut Vec<i64>,
    ) -> Result<()> {
        let what = || format!("ClassPoolIndex.assign of {n} labels");
        let fills = n.min((self.capacity - self.used) as usize);
        let needed = self.used as usize + fills;
        if self.slots.len() < needed {
            let missing = needed - self.slots.len();
            try_reserve(&mut self.slots, missing, what)?;
            self.slots.resize(needed, EMPTY_SLOT);
        }
        try_reserve(&mut self.queue, n, what)?;
        try_reserve(evicted, n, what)?;
        if journaled {
            try_reserve(&mut self.journal, n, what)?;
            if let Some(top) = self.undo_stack.last_mut() {
                try_reserve(&mut top.entries, n, what)?;
            }
            try_reserve(&mut self.undo_stack, 1, what)?;
        }
        self.map.reserve(scan.max_dense, scan.sparse)
    }

    /// Keep the queue within a few entries per slot. Only between calls with no undo
    /// pending: journals refer to queue indices.
    fn clean_queue(&mut self) {
        // Live entries are at most the used slots (not the capacity, which may be huge).
        let limit = QUEUE_SLOTS_FACTOR * self.used as usize + QUEUE_SLACK;
        if self.queue.len() - self.front > limit {
            self.compact();
        } else if self.front > limit {
            // Spent entries only: a sequential move, no slot record changes.
            self.queue.drain(..self.front);
            self.base += self.front as u64;
            self.front = 0;
        }
    }

    /// Drop spent and stale queue entries, keeping the live ones in order.
    fn compact(&mut self) {
        let mut write = 0usize;
        for read in self.front..self.queue.len() {
            if let Some(&ahead) = self.queue.get(read + QUEUE_PREFETCH_DISTANCE) {
                prefetch(&self.slots[ahead as usize]);
            }
            let s = self.queue[read];
            if is_live(&self.slots, self.base, s, read) {
                self.queue[write] = s;
                self.slots[s as usize].pos = self.base + write as u64;
                write += 1;
            }
        }
        self.queue.truncate(write);
        self.front = 0;
    }

    fn revert(&mut self, journal: &Journal) {
        for e in journal.entries.iter().rev() {
            match e.op {
                Op::Hit => self.slots[e.slot as usize].pos = e.old_pos,
                Op::Fill => {
                    // Fills are reverted latest first, so this is the last used slot.
                    debug_assert_eq!(e.slot + 1, self.used);
                    self.used -= 1;
                    self.slots[e.slot as usize] = EMPTY_SLOT;
                    self.map.remove(e.new_label);
                }
                Op::Evict => {
                    let record = &mut self.slots[e.slot as usize];
                    record.label = e.old_label;
                    record.pos = e.old_pos;
                    self.map.remove(e.new_label);
                    self.map.insert(e.old_label, e.slot);
                }
            }
        }
        self.queue.truncate(journal.queue_len);
        self.front = journal.front;
    }

    /// Map `labels` to slots exactly as an LRU consulted one label at a time would, writing
    /// the slot and hit flag of every label into `slots` / `hit` (same length as `labels`).
    /// With `undoable`, the call can later be reverted by `undo`. On error nothing changes.
    pub fn assign_into(
        &mut self,
        labels: &[i64],
        slots: &mut [i64],
        hit: &mut [bool],
        undoable: bool,
    ) -> Result<AssignSummary> {
        if slots.len() != labels.len() || hit.len() != labels.len() {
            return Err(F2cError::InvalidInput(
                "output buffers must match labels".into(),
            ));
        }
        let scan = Self::check_labels(labels)?;
        if self.undo_stack.is_empty() {
            self.clean_queue();
        }
        // Touches of this call sit at queue positions from here on: evicting one of them means
        // the call holds more distinct classes than the capacity.
        let call_start_index = self.queue.len();
        let call_start = self.base + call_start_index as u64;
        let start_front = self.front;
        // The journal serves undo and the rollback of an overflowing call; a plain call with
        // no more labels than slots cannot overflow, so it needs none.
        let journaled =
            undoable || !self.undo_stack.is_empty() || labels.len() > self.capacity as usize;
        let mut summary = AssignSummary::default();
        self.journal.clear();
        self.reserve_for_call(labels.len(), &scan, journaled, &mut summary.evicted)?;
        let mut journal = std::mem::take(&mut self.journal);

        let run = if journaled {
            assign_loop::<true>
        } else {
            assign_loop::<false>
        };
        let outcome = run(
            Outputs {
                slots,
                hit,
                evicted: &mut summary.evicted,
            },
            labels,
            &mut self.slots,
            &mut self.queue,
            &mut self.front,
            self.base,
            &mut self.map,
            &mut self.used,
            self.capacity,
            call_start,
            &mut journal,
        );
        if outcome.is_err() {
            // Every slot already holds a class of this call: roll back and report.
            self.revert(&Journal {
                queue_len: call_start_index,
                front: start_front,
                entries: journal,
            });
            let mut distinct: Vec<i64> = labels.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            return Err(F2cError::CapacityExceeded {
                distinct: distinct.len(),
                capacity: self.capacity as usize,
            });
        }

        if undoable {
            self.undo_stack.push(Journal {
                queue_len: call_start_index,
                front: start_front,
                entries: journal,
            });
        } else if let Some(top) = self.undo_stack.last_mut() {
            // A plain assign made on top of an undoable one is reverted with it: `undo` always
            // returns to the exact state from before the most recent undoable assign.
            top.entries.extend_from_slice(&journal);
            self.journal = journal;
        } else {
            self.journal = journal;
        }
        Ok(summary)
    }

    /// Convenience form of `assign_into` that allocates its outputs.
    pub fn assign(
        &mut self,
        labels: &[i64],
        undoable: bool,
    ) -> Result<(Vec<i64>, Vec<bool>, Vec<i64>)> {
        let mut slots = vec![0i64; labels.len()];
        let mut hit = vec![false; labels.len()];
        let summary = self.assign_into(labels, &mut slots, &mut hit, undoable)?;
        Ok((slots, hit, summary.evicted))
    }

    /// Return to the exact state (residency, slots and recency order) from just before the most
    /// recent undoable assign, reverting any plain assigns made after it as well.
    pub fn undo(&mut self) -> Result<()> {
        let journal = self.undo_stack.pop().ok_or(F2cError::NothingToUndo)?;
        self.revert(&journal);
        // Keep the allocation for the next call.
        if journal.entries.capacity() > self.journal.capacity() {
            self.journal = journal.entries;
        }
        Ok(())
    }

    /// Slots of `labels` (-1 where absent). Changes nothing.
    pub fn lookup_into(&self, labels: &[i64], slots: &mut [i64]) -> Result<()> {
        if slots.len() != labels.len() {
            return Err(F2cError::InvalidInput(
                "output buffer must match labels".into(),
            ));
        }
        Self::check_labels(labels)?; // lookups never grow the table
        for (out, &l) in slots.iter_mut().zip(labels) {
            *out = self.map.get(l as u64).map_or(-1, i64::from);
        }
        Ok(())
    }

    pub fn lookup(&self, labels: &[i64]) -> Result<Vec<i64>> {
        let mut slots = vec![0i64; labels.len()];
        self.lookup_into(labels, &mut slots)?;
        Ok(slots)
    }

    /// (class ids, slots), most recent first.
    pub fn entries(&self) -> (Vec<i64>, Vec<i64>) {
        let n = self.used as usize;
        let mut keys = Vec::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for p in (self.front..self.queue.len()).rev() {
            if keys.len() == n {
                break;
            }
            let s = self.queue[p];
            if is_live(&self.slots, self.base, s, p) {
                keys.push(self.slots[s as usize].label as i64);
                slots.push(i64::from(s));
            }
        }
        (keys, slots)
    }

    /// Rebuild an index from `entries()` output. Validates everything: a state is only
    /// accepted if some sequence of assigns could have produced it. Memory follows the
    /// entries, not `capacity` (a state's capacity is input too).
    pub fn from_entries(capacity: usize, keys: &[i64], slots: &[i64]) -> Result<Self> {
        let mut index =
            ClassPoolIndex::new(capacity).map_err(|e| F2cError::CorruptState(e.to_string()))?;
        if keys.len() != slots.len() {
            return Err(F2cError::CorruptState(format!(
                "{} keys but {} slots",
                keys.len(),
                slots.len()
            )));
        }
        if keys.len() > capacity {
            return Err(F2cError::CorruptState(format!(
                "{} entries exceed capacity {capacity}",
                keys.len()
            )));
        }
        let n = keys.len();
        let what = || format!("ClassPoolIndex state of {n} entries");
        let mut seen_slot = Vec::new();
        try_reserve(&mut seen_slot, n, what)?;
        seen_slot.resize(n, false);
        try_reserve(&mut index.slots, n, what)?;
        index.slots.resize(n, EMPTY_SLOT);
        try_reserve(&mut index.queue, n, what)?;
        if let Some(&k) = keys.iter().find(|&&k| k < 0) {
            return Err(F2cError::CorruptState(format!("negative class id {k}")));
        }
        let scan = Self::check_labels(keys)?;
        index.map.reserve(scan.max_dense, scan.sparse)?;
        for (&k, &s) in keys.iter().zip(slots) {
            // Slots are handed out lowest-first and never freed, so n entries use 0..n.
            if s < 0 || s as usize >= n || seen_slot[s as usize] {
                return Err(F2cError::CorruptState(format!(
                    "slot {s} is out of range 0..{n} or repeated"
                )));
            }
            seen_slot[s as usize] = true;
            if index.map.get(k as u64).is_some() {
                return Err(F2cError::CorruptState(format!(
                    "class id {k} appears twice"
                )));
            }
            index.map.insert(k as u64, s as u32);
            index.slots[s as usize].label = k as u64;
        }
        // keys are most recent first: touch them least recent first.
        for &s in slots.iter().rev() {
            touch(&mut index.slots, &mut index.queue, index.base, s as u32);
        }
        index.used = n as u32;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(index: &ClassPoolIndex) -> Vec<i64> {
        index.entries().0
    }

    #[test]
    fn fills_lowest_slot_then_evicts_lru() {
        let mut idx = ClassPoolIndex::new(3).unwrap();
        let (slots, hit, ev) = idx.assign(&[10, 11, 12], false).unwrap();
        assert_eq!(slots, vec![0, 1, 2]);
        assert_eq!(hit, vec![false; 3]);
        assert!(ev.is_empty());
        // 10 becomes most recent; 13 evicts the LRU class 11 and takes its slot 1.
        let (slots, hit, ev) = idx.assign(&[10, 13], false).unwrap();
        assert_eq!(slots, vec![0, 1]);
        assert_eq!(hit, vec![true, false]);
        assert_eq!(ev, vec![11]);
        assert_eq!(keys(&idx), vec![13, 10, 12]);
        assert_eq!(idx.lookup(&[11, 12, 13]).unwrap(), vec![-1, 2, 1]);
    }

    #[test]
    fn repeated_label_in_one_call_is_a_hit() {
        let mut idx = ClassPoolIndex::new(2).unwrap();
        let (slots, hit, _) = idx.assign(&[5, 5, 5], false).unwrap();
        assert_eq!(slots, vec![0, 0, 0]);
        assert_eq!(hit, vec![false, true, true]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn undo_restores_exact_state_lifo() {
        let mut idx = ClassPoolIndex::new(4).unwrap();
        idx.assign(&[1, 2, 3, 4], false).unwrap();
        let before = idx.entries();
        idx.assign(&[9, 2, 8], true).unwrap();
        let middle = idx.entries();
        idx.assign(&[7, 1, 6, 9], true).unwrap();
        idx.undo().unwrap();
        assert_eq!(idx.entries(), middle);
        idx.undo().unwrap();
        assert_eq!(idx.entries(), before);
        assert_eq!(idx.undo(), Err(F2cError::NothingToUndo));
    }

    #[test]
    fn undo_also_reverts_later_plain_assigns() {
        let mut idx = ClassPoolIndex::new(2).unwrap();
        idx.assign(&[1, 2], false).unwrap();
        let before = idx.entries();
        idx.assign(&[3], true).unwrap();
        idx.assign(&[4, 3], false).unwrap();
        idx.undo().unwrap();
        assert_eq!(idx.entries(), before);
    }

    #[test]
    fn undo_of_fills_frees_slots() {
        let mut idx = ClassPoolIndex::new(4).unwrap();
        idx.assign(&[1], false).unwrap();
        idx.assign(&[2, 3], true).unwrap();
        idx.undo().unwrap();
        assert_eq!(idx.len(), 1);
        let (slots, _, _) = idx.assign(&[4], false).unwrap();
        assert_eq!(slots, vec![1]);
    }

    #[test]
    fn overflow_is_refused_and_rolled_back() {
        let mut idx = ClassPoolIndex::new(3).unwrap();
        idx.assign(&[1, 2, 3], false).unwrap();
        let before = idx.entries();
        let err = idx.assign(&[4, 5, 4, 6, 7], false).unwrap_err();
        assert_eq!(
            err,
            F2cError::CapacityExceeded {
                distinct: 4,
                capacity: 3
            }
        );
        assert_eq!(idx.entries(), before);
        // Exactly `capacity` distinct classes is fine.
        idx.assign(&[4, 5, 6, 4], false).unwrap();
        assert_eq!(keys(&idx), vec![4, 6, 5]);
    }

    #[test]
    fn sparse_and_dense_ids_mix() {
        let mut idx = ClassPoolIndex::new(3).unwrap();
        let big = (1i64 << 40) + 7;
        idx.assign(&[big, 3, i64::MAX], false).unwrap();
        assert!(idx.contains(big));
        assert!(idx.contains(i64::MAX));
        let (_, _, ev) = idx.assign(&[1], false).unwrap();
        assert_eq!(ev, vec![big]);
        assert!(!idx.contains(big));
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(ClassPoolIndex::new(0).is_err());
        let mut idx = ClassPoolIndex::new(2).unwrap();
        assert!(matches!(
            idx.assign(&[1, -1], false),
            Err(F2cError::InvalidInput(_))
        ));
        assert!(idx.is_empty());
        assert!(idx.lookup(&[-3]).is_err());
    }

    #[test]
    fn entries_round_trip() {
        let mut idx = ClassPoolIndex::new(5).unwrap();
        idx.assign(&[4, 8, 15, 16, 23], false).unwrap();
        idx.assign(&[42, 8], false).unwrap();
        let (k, s) = idx.entries();
        let mut copy = ClassPoolIndex::from_entries(5, &k, &s).unwrap();
        assert_eq!(copy.entries(), idx.entries());
        let a = idx.assign(&[99, 4, 100], false).unwrap();
        let b = copy.assign(&[99, 4, 100], false).unwrap();
        assert_eq!(a, b);
        assert_eq!(copy.entries(), idx.entries());
    }

    #[test]
    fn corrupt_states_are_rejected() {
        assert!(ClassPoolIndex::from_entries(3, &[1, 2], &[0]).is_err());
        assert!(ClassPoolIndex::from_entries(3, &[1, 2], &[0, 2]).is_err());
        assert!(ClassPoolIndex::from_entries(3, &[1, 1], &[0, 1]).is_err());
        assert!(ClassPoolIndex::from_entries(3, &[1, -2], &[0, 1]).is_err());
        assert!(ClassPoolIndex::from_entries(1, &[1, 2], &[0, 1]).is_err());
        assert!(ClassPoolIndex::from_entries(0, &[], &[]).is_err());
    }

    #[test]
    fn memory_follows_use_not_capacity() {
        // The largest capacity allocates nothing up front and works as any other.
        let huge = NIL as usize - 1;
        let mut idx = ClassPoolIndex::new(huge).unwrap();
        assert_eq!(idx.capacity(), huge);
        idx.assign(&[5, 9, 5], true).unwrap();
        assert_eq!(idx.slots.len(), 3); // room for as many fills as labels
        idx.undo().unwrap();
        assert_eq!(idx.len(), 0);
        let copy = ClassPoolIndex::from_entries(huge, &[7, 3], &[1, 0]).unwrap();
        assert_eq!(copy.entries(), (vec![7, 3], vec![1, 0]));
        assert!(copy.slots.capacity() < 1024);
        // Many distinct ids through a huge pool keep the queue bounded by use.
        for round in 0..50i64 {
            let labels: Vec<i64> = (0..100).map(|i| i % 10 + round % 3).collect();
            idx.assign(&labels, false).unwrap();
        }
        assert!(idx.queue.len() <= QUEUE_SLOTS_FACTOR * 12 + QUEUE_SLACK + 100);
    }

    /// The F²C step pattern (undoable assign, undo, plain assign) over many steps, so the
    /// queue is compacted between steps: undo must restore the exact recency order each time.
    #[test]
    fn undo_and_compaction_interleave() {
        let mut idx = ClassPoolIndex::new(16).unwrap();
        let mut rng = 99u64;
        let mut batch = || -> Vec<i64> {
            (0..10)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 33) % 40) as i64
                })
                .collect()
        };
        for _ in 0..500 {
            let (a, b) = (batch(), batch());
            let before = idx.entries();
            let mut twin = ClassPoolIndex::from_entries(16, &before.0, &before.1).unwrap();
            idx.assign(&a, true).unwrap();
            idx.assign(&b, false).unwrap();
            idx.undo().unwrap();
            assert_eq!(idx.entries(), before);
            assert_eq!(
                idx.assign(&b, false).unwrap(),
                twin.assign(&b, false).unwrap()
            );
            assert_eq!(idx.entries(), twin.entries());
        }
        assert!(idx.queue.len() <= 2 * (QUEUE_SLOTS_FACTOR * 16 + QUEUE_SLACK) + 20);
    }

    /// Compare against a naive Vec-based LRU on a pseudo-random stream.
    #[test]
    fn matches_naive_lru_on_random_stream() {
        let cap = 7usize;
        let mut idx = ClassPoolIndex::new(cap).unwrap();
        // naive: (label, slot) most recent first
        let mut naive: Vec<(i64, i64)> = Vec::new();
        let mut rng = 0x1234_5678_u64;
        for _ in 0..2000 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let label = ((rng >> 33) % 12) as i64;
            let (slot, _, _) = idx.assign(&[label], false).unwrap();
            let expected = if let Some(pos) = naive.iter().position(|&(l, _)| l == label) {
                let e = naive.remove(pos);
                naive.insert(0, e);
                e.1
            } else if naive.len() < cap {
                let s = naive.len() as i64;
                naive.insert(0, (label, s));
                s
            } else {
                let (_, s) = naive.pop().unwrap();
                naive.insert(0, (label, s));
                s
            };
            assert_eq!(slot[0], expected);
        }
        let (k, s) = idx.entries();
        assert_eq!(k, naive.iter().map(|e| e.0).collect::<Vec<_>>());
        assert_eq!(s, naive.iter().map(|e| e.1).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release --lib -- --ignored --nocapture assign_speed`: ns per label of
    /// steady-state assigns at Q = 36,023 over 360,232 classes (benches/ has the real benchmark).
    #[test]
    #[ignore]
    fn assign_speed() {
        let (q, c, b, rounds) = (36_023usize, 360_232u64, 3_072usize, 2_000usize);
        let mut idx = ClassPoolIndex::new(q).unwrap();
        let mut rng = 7u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % c) as i64
        };
        let batches: Vec<Vec<i64>> = (0..rounds + 40)
            .map(|_| (0..b).map(|_| next()).collect())
            .collect();
        for batch in &batches[..40] {
            idx.assign(batch, false).unwrap();
        }
        let start = std::time::Instant::now();
        for batch in &batches[40..] {
            idx.assign(batch, false).unwrap();
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * b) as f64;
        println!("assign: {ns:.1} ns/label");
    }
}
