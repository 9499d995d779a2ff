//! Parking: peers' messages for sessions this node has not started yet, bounded.

use super::*;

/// Messages for sessions not started here yet, bounded in all, per session, and per
/// sender in sessions opened and in bytes (so that one peer cannot fill the slots that
/// honest peers' early messages need).
#[derive(Debug)]
pub struct Parking<M> {
    sessions: BTreeMap<SessionId, ParkedSession<M>>,
    /// Per sender: sessions it opened here, bytes of its messages parked.
    pub(super) load: BTreeMap<usize, (usize, usize)>,
    max_sessions_per_sender: usize,
}

#[derive(Debug)]
struct ParkedSession<M> {
    since: Instant,
    opened_by: usize,
    messages: Vec<(usize, M, usize)>,
}

/// Why a message was not parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkRefusal {
    /// Every session slot is taken.
    Full,
    /// The sender opened its share of the session slots.
    SenderSessions,
    /// The sender's parked messages reached their byte budget.
    SenderBytes,
    /// The session holds all the messages it may (in all, or from this sender).
    SessionFull,
}

impl ParkRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParkRefusal::Full => "park_full",
            ParkRefusal::SenderSessions => "park_sender_sessions",
            ParkRefusal::SenderBytes => "park_sender_bytes",
            ParkRefusal::SessionFull => "park_session_full",
        }
    }
}

impl<M> Parking<M> {
    /// Parking for `n` validators: each may open an equal share of the session slots.
    pub fn new(n: usize) -> Self {
        Self {
            sessions: BTreeMap::new(),
            load: BTreeMap::new(),
            max_sessions_per_sender: (MAX_PARKED_SESSIONS / n.max(1)).max(1),
        }
    }

    /// Parks `m` (`bytes` long on the wire) from `from` for session `sid`.
    pub fn park(&mut self, sid: SessionId, from: usize, m: M, bytes: usize, now: Instant) -> Result<(), ParkRefusal> {
        let (opened, held) = self.load.get(&from).copied().unwrap_or((0, 0));
        if held.saturating_add(bytes) > MAX_PARKED_BYTES_PER_SENDER {
            return Err(ParkRefusal::SenderBytes);
        }
        if !self.sessions.contains_key(&sid) {
            if self.sessions.len() >= MAX_PARKED_SESSIONS {
                return Err(ParkRefusal::Full);
            }
            if opened >= self.max_sessions_per_sender {
                return Err(ParkRefusal::SenderSessions);
            }
            self.sessions.insert(sid, ParkedSession { since: now, opened_by: from, messages: Vec::new() });
            self.load.entry(from).or_default().0 = opened.saturating_add(1);
        }
        let Some(entry) = self.sessions.get_mut(&sid) else { return Err(ParkRefusal::Full) };
        let from_sender = entry.messages.iter().filter(|(f, _, _)| *f == from).count();
        if entry.messages.len() >= MAX_PARKED_PER_SESSION || from_sender >= MAX_PARKED_PER_SENDER {
            return Err(ParkRefusal::SessionFull);
        }
        entry.messages.push((from, m, bytes));
        self.load.entry(from).or_default().1 = held.saturating_add(bytes);
        Ok(())
    }

    /// The messages parked for `sid`, in arrival order, released.
    pub fn take(&mut self, sid: &SessionId) -> Vec<(usize, M)> {
        match self.sessions.remove(sid) {
            Some(p) => self.release(p),
            None => Vec::new(),
        }
    }

    /// Drops sessions parked since before `now - PARK_FOR`.
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) >= PARK_FOR)
            .map(|(sid, _)| *sid)
            .collect();
        for sid in old {
            self.take(&sid);
        }
    }

    fn release(&mut self, p: ParkedSession<M>) -> Vec<(usize, M)> {
        if let Some(l) = self.load.get_mut(&p.opened_by) {
            l.0 = l.0.saturating_sub(1);
        }
        p.messages
            .into_iter()
            .map(|(from, m, bytes)| {
                if let Some(l) = self.load.get_mut(&from) {
                    l.1 = l.1.saturating_sub(bytes);
                }
                (from, m)
            })
            .collect()
    }

    /// Sessions parked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// How many peers sent something for `sid` (peers already sign it).
    pub fn senders(&self, sid: &SessionId) -> usize {
        self.sessions.get(sid).map_or(0, |p| p.messages.iter().map(|(f, _, _)| *f).collect::<BTreeSet<_>>().len())
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
