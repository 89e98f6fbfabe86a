//! The process heap: hands freed memory back to the operating system once a burst of held bodies
//! is over, and reports the bytes in use.
//!
//! glibc's allocator keeps the memory a burst freed mapped, for reuse: after the soak's bursts
//! (`docs/reliability.md`) an idle clamgate stayed 50-200 MiB above its idle size, and
//! `malloc_trim(0)` brought it back to within a few MiB of it (67 → 36 MiB, 106 → 35 MiB). Every
//! [`CHECK_INTERVAL`], the task here looks at the body memory budget: when nothing is held now and
//! anything was held since the last look, it asks the allocator to return what is free, on a
//! blocking thread, counted in `clamgate_memory_trims_total` and
//! `clamgate_memory_trim_seconds_total`. Only then: a trim takes each arena's lock while it hands
//! pages back (measured: 50-120 ms to return 150-260 MiB), and a request allocating meanwhile
//! waits; with bodies still held, the memory is about to be reused anyway.
//!
//! Each look also sets `clamgate_heap_in_use_bytes` (glibc's `mallinfo2`: bytes allocated and not
//! freed), which, unlike RSS, does not depend on how fragmented the heap is: the soak's leak check
//! compares it from round to round. With another C library neither happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::spool::ByteBudget;

/// How often the budget is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Whether to trim, given the most held since the last look and what is held now: nothing held
/// now, after something was.
pub fn should_trim(highest_since_last_look: u64, held_now: u64) -> bool {
    held_now == 0 && highest_since_last_look > 0
}

/// Looks at `budget` every [`CHECK_INTERVAL`] and trims when [`should_trim`] says so. Runs until
/// aborted.
pub async fn run(budget: Arc<ByteBudget>, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        look(&budget, &metrics).await;
    }
}

/// One look: reports the heap in use, and trims if the bodies held since the last look are all let
/// go. Returns whether it trimmed.
pub async fn look(budget: &ByteBudget, metrics: &Metrics) -> bool {
    if let Some(bytes) = in_use_bytes() {
        metrics.set_heap_in_use(bytes);
    }
    let highest = budget.take_highest_since_last_look();
    if !should_trim(highest, budget.used()) {
        return false;
    }
    let started = Instant::now();
    let trimmed = tokio::task::spawn_blocking(return_free_memory).await.is_ok();
    if trimmed {
        metrics.record_memory_trim(started.elapsed());
    }
    trimmed
}

/// Returns the allocator's free memory to the operating system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's own locks and only
    // releases pages no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_free_memory() {}

/// Heap bytes allocated and not freed: in the arenas and in chunks mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 has no preconditions; it reads the allocator's statistics under its locks.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn in_use_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_when_everything_held_was_let_go() {
        // Nothing was held: nothing to give back.
        assert!(!should_trim(0, 0));
        // Everything held was let go.
        assert!(should_trim(1, 0));
        assert!(should_trim(64 << 20, 0));
        // Bodies still held, however far the memory fell: no trim (it would stall them).
        assert!(!should_trim(64 << 20, 1));
        assert!(!should_trim(u64::MAX, u64::MAX));
    }

    #[tokio::test]
    async fn a_burst_let_go_is_trimmed_once() {
        let budget = ByteBudget::new(64 << 20);
        let metrics = Metrics::new();
        assert!(!look(&budget, &metrics).await, "nothing held yet");
        assert!(budget.try_take(32 << 20));
        assert!(!look(&budget, &metrics).await, "held, not let go");
        budget.give_back(8 << 20);
        assert!(!look(&budget, &metrics).await, "a fall of 8 MiB");
        budget.give_back(24 << 20);
        assert!(look(&budget, &metrics).await, "everything let go");
        assert!(!look(&budget, &metrics).await, "idle after the trim");
        assert!(budget.try_take(40 << 20));
        budget.give_back(32 << 20);
        assert!(!look(&budget, &metrics).await, "8 MiB still held");
        budget.give_back(8 << 20);
        assert!(look(&budget, &metrics).await, "a burst let go between two looks");
        assert_eq!(metrics.memory_trims(), 2);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_follows_allocations() {
        let before = in_use_bytes().expect("glibc");
        let block = vec![1u8; 8 << 20];
        let during = in_use_bytes().expect("glibc");
        drop(std::hint::black_box(block));
        // Other tests allocate on other threads meanwhile: only a margin is certain.
        assert!(during >= before + (7 << 20), "8 MiB more in use: {before} → {during}");
    }
}
