//! Bodies held while they are scanned: in memory within a global budget and a per-stream cap,
//! in an unlinked temp file beyond, so memory stays bounded whatever the size of the bodies. Temp
//! files have a global budget too: a body that fits neither is refused ([`SpoolFull`]), so disk
//! use is bounded as well.
//!
//! A temp file is created with `tempfile::tempfile_in`: on Linux it has no name at all
//! (`O_TMPFILE`), elsewhere it is unlinked at once. Either way it disappears when its last file
//! descriptor closes: when the [`HeldBody`] is dropped, and also when clamgate is killed.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::cache::ContentKey;
use crate::config::BodiesConfig;
use crate::metrics::Metrics;
use crate::offload::hash_off_worker;

/// Largest piece a held body is read back in (Envoy's limit for one streamed body chunk).
pub const READ_PIECE_BYTES: usize = 64 * 1024;

/// Bodies held in memory up to this size are copied into a memfd for clamd (FILDES) on the
/// async worker itself; larger ones on a blocking thread.
const INLINE_MEMFD_BYTES: u64 = 256 * 1024;

/// Pieces smaller than this are copied together into a buffer of up to [`COALESCED_BYTES`]
/// instead of being kept one by one: a flood of tiny FULL_DUPLEX pieces then costs about the
/// bytes it carries, not a `Bytes` and an allocation per byte.
const SMALL_PIECE_BYTES: usize = 16 * 1024;
/// The size a buffer of coalesced small pieces grows to (doubling) before a new one starts.
const COALESCED_BYTES: usize = 64 * 1024;
/// The first buffer of coalesced pieces holds at least this many bytes.
const MIN_COALESCED_BYTES: usize = 256;
/// Memory a kept piece costs beyond its bytes (its `Bytes` handle and start offset, and the
/// allocator's share), charged to the budget with it.
const PIECE_OVERHEAD_BYTES: u64 = 64;

/// A body that fits neither in memory nor within `bodies.disk_budget_bytes`: the stream cannot be
/// held now (an `io::Error` of kind `StorageFull` whose inner error is this).
#[derive(Debug, thiserror::Error)]
#[error("the spool's disk budget ({budget} bytes) is full")]
pub struct SpoolFull {
    pub budget: u64,
}

impl SpoolFull {
    /// Whether `err` is a full disk budget (not a failing disk).
    pub fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|inner| inner.is::<SpoolFull>())
    }
}

/// Bytes held by every stream together (in memory, or in temp files).
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
    /// The most held since [`ByteBudget::take_highest_since_last_look`] last ran.
    highest_since_last_look: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            highest_since_last_look: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from the budget if they fit.
    pub(crate) fn try_take(&self, bytes: u64) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|total| *total <= self.limit)
        });
        match taken {
            Ok(before) => {
                self.record_high(before + bytes);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Takes `bytes` whether they fit or not: for memory that exists already (a message tonic
    /// has decoded), so that bodies held later go to disk instead of adding to it.
    fn take_anyway(&self, bytes: u64) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.record_high(before + bytes);
    }

    fn record_high(&self, held: u64) {
        self.peak.fetch_max(held, Ordering::AcqRel);
        self.highest_since_last_look.fetch_max(held, Ordering::AcqRel);
    }

    /// The most held at once since the last call (or since the start), and a new look begins
    /// from what is held now.
    pub fn take_highest_since_last_look(&self) -> u64 {
        self.highest_since_last_look.swap(self.used(), Ordering::AcqRel)
    }

    /// Bytes held in memory now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The most ever held in memory at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Acquire)
    }
}

/// Where held bodies go: the shared memory budget, the per-stream cap, the temp directory and
/// its budget.
#[derive(Clone)]
pub struct Spool {
    pub budget: Arc<ByteBudget>,
    pub stream_memory_bytes: u64,
    pub dir: PathBuf,
    /// Bytes in temp files across streams (`bodies.disk_budget_bytes`).
    pub disk_budget: Arc<ByteBudget>,
    pub metrics: Arc<Metrics>,
}

impl Spool {
    pub fn new(budget_bytes: u64, stream_memory_bytes: u64, dir: PathBuf, metrics: Arc<Metrics>) -> Spool {
        Spool {
            budget: Arc::new(ByteBudget::new(budget_bytes)),
            stream_memory_bytes,
            dir,
            disk_budget: Arc::new(ByteBudget::new(u64::MAX)),
            metrics,
        }
    }

    /// The spool `[bodies]` configures: its memory budget and per-stream cap, its directory and
    /// its disk budget.
    pub fn from_config(bodies: &BodiesConfig, metrics: Arc<Metrics>) -> Spool {
        Spool::new(bodies.memory_budget_bytes, bodies.stream_memory_bytes, bodies.spool_dir(), metrics)
            .with_disk_budget(bodies.disk_budget_bytes)
    }

    /// The same spool with temp files limited to `bytes` across streams.
    pub fn with_disk_budget(self, bytes: u64) -> Spool {
        Spool { disk_budget: Arc::new(ByteBudget::new(bytes)), ..self }
    }

    /// An empty body to fill.
    pub fn hold(&self) -> HeldBody {
        HeldBody {
            spool: self.clone(),
            pieces: Vec::new(),
            starts: Vec::new(),
            tail: Vec::new(),
            in_memory: 0,
            file: None,
            on_disk: 0,
            len: 0,
            hasher: Sha256::new(),
            received: 0,
            holding: true,
        }
    }

    /// A charge on the memory budget for memory clamgate does not hold itself (tonic's decode
    /// buffer of one stream), starting at nothing; see [`MemoryCharge::raise_to`].
    pub fn charge(&self) -> MemoryCharge {
        MemoryCharge { spool: self.clone(), bytes: AtomicU64::new(0) }
    }
}

/// Memory counted in the budget while it lives, given back on drop.
pub struct MemoryCharge {
    spool: Spool,
    bytes: AtomicU64,
}

impl MemoryCharge {
    /// Raises the charge to `bytes` (never lowers it), even past the budget: the memory exists.
    pub fn raise_to(&self, bytes: u64) {
        let before = self.bytes.fetch_max(bytes, Ordering::AcqRel);
        if bytes > before {
            self.spool.budget.take_anyway(bytes - before);
            self.spool.metrics.set_held_memory(self.spool.budget.used());
        }
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        if bytes > 0 {
            self.spool.budget.give_back(bytes);
            self.spool.metrics.set_held_memory(self.spool.budget.used());
        }
    }
}

/// One body being held. Memory goes back to the budget and the temp file disappears on drop.
pub struct HeldBody {
    spool: Spool,
    /// The body while it is in memory (empty once it moved to `file`), then `tail`.
    pieces: Vec<Bytes>,
    /// The offset in the body of each of `pieces`, for a binary search.
    starts: Vec<u64>,
    /// Small pieces copied together, after `pieces` (in memory or, once on disk, not yet
    /// written): at most [`COALESCED_BYTES`].
    tail: Vec<u8>,
    /// Memory of `pieces` and `tail` (bytes, allocations, overhead), taken from the budget.
    in_memory: u64,
    /// The whole body, once it left memory.
    file: Option<Arc<std::fs::File>>,
    /// Bytes taken from the disk budget.
    on_disk: u64,
    len: u64,
    /// SHA-256 of every byte pushed, held or not: the body's [`ContentKey`].
    hasher: Sha256,
    /// Bytes pushed (equal to `len` while holding).
    received: u64,
    /// False after [`HeldBody::stop_holding`]: pieces are only hashed.
    holding: bool,
}

impl HeldBody {
    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body went to a temp file.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes pushed, held or (after [`Self::stop_holding`]) only hashed.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The SHA-256 of every byte pushed so far: the key the body is cached and scanned under.
    pub fn content_key(&self) -> ContentKey {
        ContentKey::from_digest(self.hasher.clone().finalize().into())
    }

    /// False once [`Self::stop_holding`] freed the body.
    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// Frees what is held (memory, temp file, budgets) and holds nothing more: later pieces are
    /// only hashed, so that a body too large to scan is still named by its content.
    pub fn stop_holding(&mut self) {
        self.give_back_everything();
        self.pieces = Vec::new();
        self.starts = Vec::new();
        self.tail = Vec::new();
        self.file = None;
        self.len = 0;
        self.holding = false;
    }

    /// Appends a piece: in memory while this stream's cap and the shared budget allow, else the
    /// whole body moves to a temp file and stays there. Small pieces are copied together
    /// (in memory, and before they are written to the file).
    pub async fn push(&mut self, piece: Bytes) -> io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        let size = piece.len() as u64;
        hash_off_worker(piece.len(), || self.hasher.update(&piece));
        self.received += size;
        if !self.holding {
            return Ok(());
        }
        if self.file.is_none() {
            let charge = self.memory_charge(piece.len());
            let fits_stream = self.in_memory + charge <= self.spool.stream_memory_bytes;
            if fits_stream && self.spool.budget.try_take(charge) {
                self.in_memory += charge;
                self.keep_in_memory(piece);
                self.spool.metrics.set_held_memory(self.spool.budget.used());
                return Ok(());
            }
            self.move_to_disk().await?;
        }
        self.take_disk(size)?;
        if piece.len() < SMALL_PIECE_BYTES {
            // Written with the next small pieces: one write per [`COALESCED_BYTES`], not per piece.
            if self.tail.len() + piece.len() > COALESCED_BYTES {
                self.flush_tail().await?;
            }
            self.tail.extend_from_slice(&piece);
            self.len += size;
            return Ok(());
        }
        self.flush_tail().await?;
        self.write_at(piece, self.len).await?;
        self.len += size;
        Ok(())
    }

    /// What keeping a piece of `size` bytes in memory adds to `in_memory`.
    fn memory_charge(&self, size: usize) -> u64 {
        if size >= SMALL_PIECE_BYTES {
            // The tail, if any, is sealed first: one more kept piece.
            let sealed_tail = if self.tail.is_empty() { 0 } else { PIECE_OVERHEAD_BYTES };
            return size as u64 + PIECE_OVERHEAD_BYTES + sealed_tail;
        }
        let capacity = self.tail.capacity();
        match self.tail_growth(size) {
            (new_capacity, false) => new_capacity.saturating_sub(capacity) as u64,
            // The current tail grows to its full size, and a new one starts.
            (new_capacity, true) => {
                (COALESCED_BYTES.saturating_sub(capacity) + new_capacity) as u64 + PIECE_OVERHEAD_BYTES
            }
        }
    }

    /// For `size` more small bytes: the capacity of the tail that takes them (its current one if
    /// they fit) and whether the current tail is sealed first. A full tail is sealed and a new
    /// one of [`COALESCED_BYTES`] started; a tail that is not full doubles, within that size.
    fn tail_growth(&self, size: usize) -> (usize, bool) {
        let needed = self.tail.len() + size;
        if needed <= self.tail.capacity() {
            return (self.tail.capacity(), false);
        }
        if needed > COALESCED_BYTES {
            // Sealed: the new tail takes what did not fit, and grows from there.
            let rest = needed - COALESCED_BYTES.max(self.tail.len());
            return (rest.max(MIN_COALESCED_BYTES).next_power_of_two().min(COALESCED_BYTES), true);
        }
        let doubled = (self.tail.capacity() * 2).max(MIN_COALESCED_BYTES);
        (doubled.max(needed).min(COALESCED_BYTES), false)
    }

    /// Keeps a piece in memory (its charge is taken already).
    fn keep_in_memory(&mut self, piece: Bytes) {
        let size = piece.len();
        if size >= SMALL_PIECE_BYTES {
            self.seal_tail();
            self.starts.push(self.len);
            self.len += size as u64;
            self.pieces.push(piece);
            return;
        }
        let (capacity, sealed) = self.tail_growth(size);
        let mut rest = &piece[..];
        if sealed {
            // Fill the tail up to its full size, seal it, and start the next with the rest.
            let room = COALESCED_BYTES.saturating_sub(self.tail.len()).min(rest.len());
            self.tail.reserve_exact(COALESCED_BYTES - self.tail.len());
            self.tail.extend_from_slice(&rest[..room]);
            self.len += room as u64;
            rest = &rest[room..];
            self.seal_tail();
        }
        if self.tail.capacity() < capacity {
            self.tail.reserve_exact(capacity - self.tail.len());
        }
        self.tail.extend_from_slice(rest);
        self.len += rest.len() as u64;
    }

    /// Moves the tail to `pieces` (its memory stays charged; `Bytes` keeps the allocation).
    fn seal_tail(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let tail = std::mem::take(&mut self.tail);
        self.starts.push(self.len - tail.len() as u64);
        self.pieces.push(Bytes::from(tail));
    }

    /// Writes the small pieces waiting in `tail` to the temp file.
    async fn flush_tail(&mut self) -> io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let tail = Bytes::from(std::mem::take(&mut self.tail));
        let offset = self.len - tail.len() as u64;
        self.write_at(tail, offset).await
    }

    /// A file holding exactly the body, for clamd to scan by its descriptor (FILDES): the temp
    /// file, once the small pieces still waiting in memory are written to it (the same bytes at
    /// the same offsets: the body is unchanged), or, for a body held in memory, a new memfd with
    /// a copy of it (freed when the returned file is dropped; not charged to the memory budget:
    /// it lives for one scan).
    pub async fn scan_file(&self) -> io::Result<Arc<std::fs::File>> {
        if let Some(file) = &self.file {
            if !self.tail.is_empty() {
                let (file, tail, offset) =
                    (file.clone(), self.tail.clone(), self.len - self.tail.len() as u64);
                blocking(move || file.write_all_at(&tail, offset)).await?;
            }
            return Ok(file.clone());
        }
        // A memfd write is a copy into memory, never a wait on a disk: a small body is copied
        // right here (a hop to a blocking thread and back cost more than the copy), a larger
        // one off the async workers.
        if self.len <= INLINE_MEMFD_BYTES {
            return memfd_copy(self.pieces.iter().map(Bytes::as_ref).chain([self.tail.as_slice()]));
        }
        let (pieces, tail) = (self.pieces.clone(), Bytes::copy_from_slice(&self.tail));
        blocking(move || memfd_copy(pieces.iter().map(Bytes::as_ref).chain([tail.as_ref()]))).await
    }

    /// Reads `max` bytes (fewer at the end) from `offset`; empty past the end.
    pub async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let end = self.len.min(offset.saturating_add(max as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        match &self.file {
            Some(file) => {
                // The file holds the body up to the small pieces still waiting in `tail`.
                let written = self.len - self.tail.len() as u64;
                let from_tail = |from: u64, to: u64| {
                    self.tail[(from - written) as usize..(to - written) as usize].to_vec()
                };
                if offset >= written {
                    return Ok(Bytes::from(from_tail(offset, end)));
                }
                let file = file.clone();
                let file_end = end.min(written);
                let len = (file_end - offset) as usize;
                let mut buffer = blocking(move || {
                    let mut buffer = vec![0u8; len];
                    file.read_exact_at(&mut buffer, offset)?;
                    Ok(buffer)
                })
                .await?;
                if end > written {
                    buffer.extend_from_slice(&from_tail(written, end));
                }
                Ok(Bytes::from(buffer))
            }
            None => Ok(self.memory_slice(offset, end).0),
        }
    }

    /// The bytes in `offset..end` of an in-memory body, copied only if they span pieces, and how
    /// many pieces were looked at: the first is found by binary search, so reading a body back
    /// looks at each piece about once, however many pieces it has.
    fn memory_slice(&self, offset: u64, end: u64) -> (Bytes, usize) {
        // The last kept piece that starts at or before `offset`.
        let first = self.starts.partition_point(|start| *start <= offset).saturating_sub(1);
        let mut visited = 0;
        let mut out: Option<Vec<u8>> = None;
        for (start_of_piece, piece) in self.starts[first..].iter().zip(&self.pieces[first..]) {
            visited += 1;
            let piece_end = start_of_piece + piece.len() as u64;
            if piece_end > offset && *start_of_piece < end {
                let from = offset.saturating_sub(*start_of_piece) as usize;
                let to = (end.min(piece_end) - start_of_piece) as usize;
                if out.is_none() && piece_end >= end {
                    return (piece.slice(from..to), visited);
                }
                out.get_or_insert_with(Vec::new).extend_from_slice(&piece[from..to]);
            }
            if piece_end >= end {
                return (Bytes::from(out.unwrap_or_default()), visited);
            }
        }
        // The rest is in the tail of coalesced small pieces.
        let tail_start = self.len - self.tail.len() as u64;
        if end > tail_start && !self.tail.is_empty() {
            visited += 1;
            let from = (offset.max(tail_start) - tail_start) as usize;
            let to = (end - tail_start) as usize;
            out.get_or_insert_with(Vec::new).extend_from_slice(&self.tail[from..to]);
        }
        (Bytes::from(out.unwrap_or_default()), visited)
    }

    async fn move_to_disk(&mut self) -> io::Result<()> {
        // The whole body so far must fit the disk budget before a file is made.
        self.take_disk(self.len)?;
        let dir = self.spool.dir.clone();
        let file = Arc::new(blocking(move || tempfile::tempfile_in(&dir)).await?);
        self.file = Some(file);
        self.spool.metrics.record_spilled_body();
        self.seal_tail();
        let pieces = std::mem::take(&mut self.pieces);
        self.starts = Vec::new();
        let mut offset = 0u64;
        for piece in pieces {
            let size = piece.len() as u64;
            self.write_at(piece, offset).await?;
            offset += size;
        }
        self.release_memory();
        Ok(())
    }

    /// Takes `bytes` from the disk budget for this body, or fails with [`SpoolFull`].
    fn take_disk(&mut self, bytes: u64) -> io::Result<()> {
        if !self.spool.disk_budget.try_take(bytes) {
            let budget = self.spool.disk_budget.limit;
            return Err(io::Error::new(io::ErrorKind::StorageFull, SpoolFull { budget }));
        }
        self.on_disk += bytes;
        Ok(())
    }

    /// Writes a piece at `offset` of the temp file; the caller has taken its bytes from the disk
    /// budget.
    async fn write_at(&self, piece: Bytes, offset: u64) -> io::Result<()> {
        let Some(file) = self.file.clone() else {
            return Err(io::Error::other("a held body was written to before its temp file existed"));
        };
        let size = piece.len() as u64;
        blocking(move || file.write_all_at(&piece, offset)).await?;
        self.spool.metrics.add_held_disk(size as i64);
        Ok(())
    }

    fn release_memory(&mut self) {
        if self.in_memory > 0 {
            self.spool.budget.give_back(self.in_memory);
            self.in_memory = 0;
            self.spool.metrics.set_held_memory(self.spool.budget.used());
        }
    }
}

impl HeldBody {
    /// Gives the memory and disk budgets back what this body took, and its gauges.
    fn give_back_everything(&mut self) {
        self.release_memory();
        if self.file.is_some() {
            // Small pieces still waiting in `tail` were never written (nor counted).
            let written = self.len - self.tail.len() as u64;
            self.spool.metrics.add_held_disk(-(written as i64));
        }
        self.spool.disk_budget.give_back(self.on_disk);
        self.on_disk = 0;
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.give_back_everything();
    }
}

/// A new memfd holding `pieces` one after the other, from offset 0.
fn memfd_copy<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> io::Result<Arc<std::fs::File>> {
    let fd = rustix::fs::memfd_create("clamgate-body", rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = std::fs::File::from(fd);
    let mut offset = 0;
    for piece in pieces {
        file.write_all_at(piece, offset)?;
        offset += piece.len() as u64;
    }
    Ok(Arc::new(file))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| io::Error::other(format!("blocking task: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(budget: u64, per_stream: u64) -> Spool {
        Spool::new(budget, per_stream, std::env::temp_dir(), Arc::new(Metrics::new()))
    }

    async fn read_all(body: &HeldBody, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = body.read_at(out.len() as u64, piece).await.unwrap();
            if chunk.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk);
        }
    }

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    #[tokio::test]
    async fn a_small_body_stays_in_memory_and_reads_back_across_pieces() {
        let spool = spool(1 << 20, 1 << 20);
        let mut body = spool.hold();
        let (a, b) = (pattern(1000, 1), pattern(3000, 2));
        body.push(Bytes::from(a.clone())).await.unwrap();
        body.push(Bytes::from(b.clone())).await.unwrap();
        assert!(!body.on_disk());
        assert_eq!(spool.budget.used(), 4000);
        assert_eq!(read_all(&body, 700).await, [a, b].concat());
        drop(body);
        assert_eq!(spool.budget.used(), 0, "memory goes back to the budget");
    }

    #[tokio::test]
    async fn past_the_stream_cap_the_whole_body_moves_to_disk_and_frees_its_memory() {
        let spool = spool(1 << 20, 4096);
        let mut body = spool.hold();
        let pieces: Vec<Vec<u8>> = (0..5).map(|i| pattern(1500, i)).collect();
        for piece in &pieces {
            body.push(Bytes::from(piece.clone())).await.unwrap();
        }
        assert!(body.on_disk());
        assert_eq!(spool.budget.used(), 0);
        assert_eq!(body.len(), 7500);
        assert_eq!(read_all(&body, 64 * 1024).await, pieces.concat());
    }

    #[tokio::test]
    async fn when_the_shared_budget_is_full_a_stream_goes_to_disk() {
        let spool = spool(4096, 4096);
        let mut first = spool.hold();
        first.push(Bytes::from(pattern(4000, 0))).await.unwrap();
        let mut second = spool.hold();
        second.push(Bytes::from(pattern(200, 1))).await.unwrap();
        assert!(!first.on_disk());
        assert!(second.on_disk(), "the budget has 96 bytes left");
        assert!(spool.budget.peak() <= 4096);
    }

    #[tokio::test]
    async fn temp_files_stay_within_the_disk_budget_and_give_it_back_on_drop() {
        let spool = spool(0, 0).with_disk_budget(10_000);
        let mut first = spool.hold();
        first.push(Bytes::from(pattern(6000, 0))).await.unwrap();
        let mut second = spool.hold();
        second.push(Bytes::from(pattern(3000, 1))).await.unwrap();
        let err = second.push(Bytes::from(pattern(2000, 2))).await.expect_err("over the disk budget");
        assert!(SpoolFull::is(&err), "{err}");
        assert_eq!(spool.disk_budget.used(), 9000, "a refused piece takes nothing");
        drop(first);
        assert_eq!(spool.disk_budget.used(), 3000);
        second.push(Bytes::from(pattern(2000, 2))).await.unwrap();
        drop(second);
        assert_eq!(spool.disk_budget.used(), 0);
        let mut third = spool.hold();
        let memory =
            Spool::new(1 << 20, 1 << 20, std::env::temp_dir(), Arc::new(Metrics::new())).with_disk_budget(0);
        let mut in_memory = memory.hold();
        in_memory.push(Bytes::from(pattern(4000, 3))).await.unwrap();
        assert!(!in_memory.on_disk(), "a body that fits in memory needs no disk budget");
        third.push(Bytes::from(pattern(10_000, 4))).await.unwrap();
        assert!(SpoolFull::is(&third.push(Bytes::from(pattern(1, 5))).await.unwrap_err()));
    }

    #[tokio::test]
    async fn a_flood_of_one_byte_pieces_costs_about_the_bytes_it_carries() {
        let spool = spool(64 << 20, 64 << 20);
        let mut body = spool.hold();
        let expected = pattern(100_000, 7);
        for byte in &expected {
            body.push(Bytes::copy_from_slice(&[*byte])).await.unwrap();
        }
        assert!(!body.on_disk());
        let accounted = spool.budget.used();
        // Before coalescing, 100k pieces were kept one by one (a 32-byte `Bytes` in the Vec and an
        // allocation of its own each: some 64 bytes of memory per byte) and charged as 100k bytes.
        assert!(accounted >= 100_000, "charged {accounted}: at least the bytes themselves");
        assert!(accounted <= 2 * 100_000, "charged {accounted} for 100000 bytes");
        assert!(body.pieces.len() <= 2, "{} pieces kept for 100000 one-byte pushes", body.pieces.len());
        assert_eq!(read_all(&body, READ_PIECE_BYTES).await, expected);
        drop(body);
        assert_eq!(spool.budget.used(), 0);
    }

    #[tokio::test]
    async fn reading_a_body_back_looks_at_each_piece_about_once() {
        // Pieces large enough to be kept one by one, and a small tail after them.
        let spool = spool(64 << 20, 64 << 20);
        let mut body = spool.hold();
        let pieces = 1000;
        let mut expected = Vec::new();
        for index in 0..pieces {
            let piece = pattern(SMALL_PIECE_BYTES, index as u8);
            expected.extend_from_slice(&piece);
            body.push(Bytes::from(piece)).await.unwrap();
        }
        body.push(Bytes::from_static(b"tail")).await.unwrap();
        expected.extend_from_slice(b"tail");
        let (mut offset, mut reads, mut visited, mut back) = (0u64, 0, 0, Vec::new());
        while offset < body.len() {
            let end = body.len().min(offset + READ_PIECE_BYTES as u64);
            let (piece, looked_at) = body.memory_slice(offset, end);
            offset += piece.len() as u64;
            back.extend_from_slice(&piece);
            reads += 1;
            visited += looked_at;
        }
        assert!(back == expected, "the body read back differs");
        // A scan from the first piece on every read looked at ~pieces * reads / 2 = 125000.
        assert!(
            visited <= pieces + 1 + reads,
            "{visited} pieces looked at for {reads} reads of {pieces} pieces"
        );
    }

    #[tokio::test]
    async fn small_pieces_on_disk_are_written_together_and_read_back_with_the_unwritten_rest() {
        let spool = spool(0, 0);
        let mut body = spool.hold();
        let expected = pattern(150_000, 3);
        for chunk in expected.chunks(7) {
            body.push(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert!(body.on_disk());
        assert!(!body.tail.is_empty(), "the last small pieces wait to be written");
        assert_eq!(read_all(&body, 1000).await, expected, "read across the file and the waiting pieces");
        assert_eq!(read_all(&body, READ_PIECE_BYTES).await, expected);
    }

    #[tokio::test]
    async fn a_memory_charge_counts_even_past_the_budget_and_is_given_back() {
        let spool = spool(1000, 1000);
        let charge = spool.charge();
        charge.raise_to(600);
        charge.raise_to(400);
        charge.raise_to(1500);
        assert_eq!(spool.budget.used(), 1500, "memory that exists is counted, within budget or not");
        let mut body = spool.hold();
        body.push(Bytes::from(pattern(10, 0))).await.unwrap();
        assert!(body.on_disk(), "no room left in memory");
        drop(charge);
        assert_eq!(spool.budget.used(), 0);
    }

    #[tokio::test]
    async fn temp_files_have_no_name_left_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(0, 0, dir.path().to_path_buf(), Arc::new(Metrics::new()));
        let mut body = spool.hold();
        body.push(Bytes::from(pattern(10, 0))).await.unwrap();
        assert!(body.on_disk());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
