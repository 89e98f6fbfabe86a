//! CPU-heavy work on the async runtime (hashing and decoding megabytes): run so that the worker's
//! other tasks (other streams, the Redis connection) are not stuck behind it.

/// Bytes at least this many are hashed (or decoded) off the async worker (see [`off_worker`]).
pub(crate) const BLOCKING_HASH_BYTES: usize = 256 * 1024;

/// Runs `hash`, which hashes `bytes` bytes. Hashing megabytes takes milliseconds; on the
/// multi-thread runtime a large input is hashed under `block_in_place` (see [`off_worker`]).
pub(crate) fn hash_off_worker<R>(bytes: usize, hash: impl FnOnce() -> R) -> R {
    off_worker(bytes >= BLOCKING_HASH_BYTES, hash)
}

/// Runs `work`; when it is `heavy` and this is the multi-thread runtime, under `block_in_place`,
/// so the worker's other tasks (other streams, the Redis connection) move to another thread
/// instead of waiting behind it. (`block_in_place` would panic on a current-thread runtime:
/// there it runs inline.)
pub(crate) fn off_worker<R>(heavy: bool, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
    if heavy && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}
