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

use crate::metrics::Metrics;

/// Largest piece a held body is read back in (Envoy's limit for one streamed body chunk).
pub const READ_PIECE_BYTES: usize = 64 * 1024;

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
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget { limit, used: AtomicU64::new(0), peak: AtomicU64::new(0) }
    }

    /// Takes `bytes` from the budget if they fit.
    fn try_take(&self, bytes: u64) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|total| *total <= self.limit)
        });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
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

    /// The same spool with temp files limited to `bytes` across streams.
    pub fn with_disk_budget(self, bytes: u64) -> Spool {
        Spool { disk_budget: Arc::new(ByteBudget::new(bytes)), ..self }
    }

    /// An empty body to fill.
    pub fn hold(&self) -> HeldBody {
        HeldBody { spool: self.clone(), pieces: Vec::new(), in_memory: 0, file: None, on_disk: 0, len: 0 }
    }
}

/// One body being held. Memory goes back to the budget and the temp file disappears on drop.
pub struct HeldBody {
    spool: Spool,
    /// The body while it is in memory (empty once it moved to `file`).
    pieces: Vec<Bytes>,
    /// Bytes of `pieces`, taken from the budget.
    in_memory: u64,
    /// The whole body, once it left memory.
    file: Option<Arc<std::fs::File>>,
    /// Bytes taken from the disk budget.
    on_disk: u64,
    len: u64,
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

    /// Appends a piece: in memory while this stream's cap and the shared budget allow, else the
    /// whole body moves to a temp file and stays there.
    pub async fn push(&mut self, piece: Bytes) -> io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        let size = piece.len() as u64;
        if self.file.is_none() {
            let fits_stream = self.in_memory + size <= self.spool.stream_memory_bytes;
            if fits_stream && self.spool.budget.try_take(size) {
                self.in_memory += size;
                self.len += size;
                self.pieces.push(piece);
                self.spool.metrics.set_held_memory(self.spool.budget.used());
                return Ok(());
            }
            self.move_to_disk().await?;
        }
        self.take_disk(size)?;
        self.write_at(piece, self.len).await?;
        self.len += size;
        Ok(())
    }

    /// Reads `max` bytes (fewer at the end) from `offset`; empty past the end.
    pub async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let end = self.len.min(offset.saturating_add(max as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        match &self.file {
            Some(file) => {
                let file = file.clone();
                let len = (end - offset) as usize;
                blocking(move || {
                    let mut buffer = vec![0u8; len];
                    file.read_exact_at(&mut buffer, offset)?;
                    Ok(Bytes::from(buffer))
                })
                .await
            }
            None => Ok(self.memory_slice(offset, end)),
        }
    }

    /// The bytes in `offset..end` of an in-memory body, copied only if they span pieces.
    fn memory_slice(&self, offset: u64, end: u64) -> Bytes {
        let mut start_of_piece = 0u64;
        let mut out: Option<Vec<u8>> = None;
        for piece in &self.pieces {
            let piece_end = start_of_piece + piece.len() as u64;
            if piece_end > offset && start_of_piece < end {
                let from = offset.saturating_sub(start_of_piece) as usize;
                let to = (end.min(piece_end) - start_of_piece) as usize;
                if out.is_none() && piece_end >= end {
                    return piece.slice(from..to);
                }
                out.get_or_insert_with(Vec::new).extend_from_slice(&piece[from..to]);
            }
            if piece_end >= end {
                break;
            }
            start_of_piece = piece_end;
        }
        Bytes::from(out.unwrap_or_default())
    }

    async fn move_to_disk(&mut self) -> io::Result<()> {
        // The whole body so far must fit the disk budget before a file is made.
        self.take_disk(self.in_memory)?;
        let dir = self.spool.dir.clone();
        let file = Arc::new(blocking(move || tempfile::tempfile_in(&dir)).await?);
        self.file = Some(file);
        self.spool.metrics.record_spilled_body();
        let pieces = std::mem::take(&mut self.pieces);
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
        let file = self.file.clone().expect("write_at is called once the file exists");
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

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.release_memory();
        if self.file.is_some() {
            self.spool.metrics.add_held_disk(-(self.len as i64));
        }
        self.spool.disk_budget.give_back(self.on_disk);
    }
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
    async fn temp_files_have_no_name_left_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(0, 0, dir.path().to_path_buf(), Arc::new(Metrics::new()));
        let mut body = spool.hold();
        body.push(Bytes::from(pattern(10, 0))).await.unwrap();
        assert!(body.on_disk());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
