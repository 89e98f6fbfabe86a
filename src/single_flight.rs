//! One piece of work per key at a time in this process: the first caller for a key leads (does
//! the work and publishes its result), later callers wait for that result. Used by the scanner
//! (one clamd scan per content) and by fetch (one download per resource).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::watch;

/// The work in flight, by key.
pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

/// Whether this caller does the work for a key, or waits for the caller that does.
pub enum Role<'a, K: Hash + Eq + Copy, V: Clone> {
    Leader(Leader<'a, K, V>),
    Waiter(watch::Receiver<Option<V>>),
}

/// The caller doing the work for `key`. Dropping it (after publishing, or when cancelled) removes
/// the key, so that later callers find the result elsewhere (the cache) or lead anew.
pub struct Leader<'a, K: Hash + Eq + Copy, V: Clone> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    sender: watch::Sender<Option<V>>,
}

impl<K: Hash + Eq + Copy, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { inflight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Copy, V: Clone> SingleFlight<K, V> {
    /// Leads the work for `key`, or joins the leader already doing it.
    pub fn join_or_lead(&self, key: K) -> Role<'_, K, V> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(results) = inflight.get(&key) {
            // A receiver whose sender is gone belongs to a leader that was cancelled.
            if results.has_changed().is_ok() {
                return Role::Waiter(results.clone());
            }
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key, receiver);
        Role::Leader(Leader { flight: self, key, sender })
    }
}

impl<K: Hash + Eq + Copy, V: Clone> Leader<'_, K, V> {
    /// Gives every waiter the result.
    pub fn publish(self, value: V) {
        let _ = self.sender.send(Some(value));
    }
}

impl<K: Hash + Eq + Copy, V: Clone> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        let mut inflight = self.flight.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inflight.remove(&self.key);
    }
}

/// Waits for the leader's result: None when the leader went away without one (cancelled).
pub async fn wait<V: Clone>(mut results: watch::Receiver<Option<V>>) -> Option<V> {
    results.wait_for(Option::is_some).await.ok().and_then(|result| result.clone())
}
