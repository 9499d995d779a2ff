//! The start queue: messages waiting for a free session slot.

use super::*;

/// Messages waiting for a free session slot (at most `signing.max_sessions_in_flight`
/// sessions per key run at once): key checks first, then release inputs, then mints,
/// oldest first within each. A queued message has no session yet, so nothing of it
/// can time out; peers' early messages for it are parked until it starts.
#[derive(Debug, Default)]
pub struct StartQueue {
    /// By (priority, 0 if peers already sign it else 1, arrival).
    order: BTreeMap<(u8, u8, u64), Vec<u8>>,
    keys: BTreeMap<Vec<u8>, (u8, u8, u64)>,
    seq: u64,
    /// Since when the queue has not been empty.
    since: Option<Instant>,
}

pub(super) fn priority(p: &Purpose) -> u8 {
    match p {
        Purpose::KeyCheck => 0,
        Purpose::ReleaseInput { .. } => 1,
        Purpose::Mint { .. } | Purpose::MintBatch { .. } => 2,
    }
}

impl StartQueue {
    pub fn push(&mut self, message: Vec<u8>, purpose: &Purpose, now: Instant) {
        if self.keys.contains_key(&message) {
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        let key = (priority(purpose), 1, self.seq);
        self.order.insert(key, message.clone());
        self.keys.insert(message, key);
        self.since.get_or_insert(now);
    }

    /// Peers already sign `message`: it goes before the others of its priority (so
    /// that validators whose queues drain at different speeds do not start one session
    /// minutes apart, their attempts drifting out of each other's reach).
    pub fn promote(&mut self, message: &[u8]) {
        let Some(key) = self.keys.get_mut(message) else { return };
        if key.1 == 0 {
            return;
        }
        if let Some(m) = self.order.remove(key) {
            key.1 = 0;
            self.order.insert(*key, m);
        }
    }

    /// The next message to start, and whether peers already sign it.
    pub fn peek(&self) -> Option<(&[u8], bool)> {
        self.order.first_key_value().map(|(k, m)| (m.as_slice(), k.1 == 0))
    }

    /// The next message to start.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let first = self.order.pop_first().map(|(_, m)| m);
        if let Some(m) = &first {
            self.keys.remove(m);
        }
        if self.order.is_empty() {
            self.since = None;
        }
        first
    }

    /// Drops `message` (no longer wanted).
    pub fn remove(&mut self, message: &[u8]) {
        if let Some(key) = self.keys.remove(message) {
            self.order.remove(&key);
        }
        if self.order.is_empty() {
            self.since = None;
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Where `message` stands in the queue (0 = next), if it is queued.
    pub fn position(&self, message: &[u8]) -> Option<usize> {
        let key = self.keys.get(message)?;
        Some(self.order.range(..*key).count())
    }

    /// How long the queue has not been empty.
    pub fn backlog_for(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}
