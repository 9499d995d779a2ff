//! A suite's sessions: starting, delivering peers' messages, rounds and retries, and
//! carrying out the session's actions.

use super::*;

impl<C: Ciphersuite> Suite<C> {
    /// Starts signing `message` (derived by this node itself) for `purpose`, in the last
    /// round this node reached for it (stored: a restart never goes back to a round it
    /// left).
    pub fn start(
        &mut self,
        store: &Store,
        message: Vec<u8>,
        purpose: Purpose,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        if self.knows(&message) {
            return Ok(vec![]);
        }
        if self.fault == Some(SigningFault::SilentOnMints)
            && matches!(purpose, Purpose::Mint { .. } | Purpose::MintBatch { .. })
        {
            warn!(target: "signing", ?purpose, "TEST FAULT: taking no part in signing a mint");
            return Ok(vec![]);
        }
        let mut round = crate::records::signing::round(store, self.kind, &message)?;
        // A message abandoned here (a batch given up, then proposed again with the same
        // mints) never restarts a session it ran: its commitments are spent, and peers
        // that gave it up too would wait in its first attempt for commitments nobody
        // can give any more. It starts in the next round (peers that did the same meet
        // it there; the others follow by round hints). After a restart the session
        // restarts as it was: its pre-restart attempts are refused, the next ones run.
        while self.spent.contains(&self.sid_of(&message, round)) {
            round = round.saturating_add(1);
        }
        let w = Wanted {
            purpose,
            round,
            sids: Vec::new(),
            failures: 0,
            retry_at: None,
            next_round: None,
            hints: BTreeMap::new(),
            hinted: BTreeMap::new(),
        };
        if !self.has_slot() {
            // Every slot is taken: it waits its turn (nothing of it runs, or times out).
            self.queue.push(message.clone(), &w.purpose, Instant::now());
            self.queued_sids.insert(self.sid_of(&message, round), message.clone());
            self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "queued"]).inc();
            self.wanted.insert(message, w);
            debug!(target: "signing", key = %self.kind, queued = self.queue.len(), "every session slot taken: signing queued");
            return Ok(vec![]);
        }
        self.wanted.insert(message.clone(), w);
        self.start_round(&message, round, now_ms)
    }

    /// Starts round `round` of signing `message` (leaving the round before, if it still
    /// runs): the round is stored (synced) first, then a new session begins under that
    /// round's id, with the messages parked for it.
    pub(super) fn start_round(&mut self, message: &[u8], round: u32, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let sids: Vec<SessionId> = (0..=round).map(|r| self.sid_of(message, r)).collect();
        let kind = self.kind;
        let Some(w) = self.wanted.get_mut(message) else { return Ok(vec![]) };
        let mut persisted = Vec::new();
        if round > 0 {
            let mut b = Batch::new();
            crate::records::signing::put_round(&mut b, kind, message, round);
            persisted.push(Effect::Persist(b));
        }
        let left: Vec<SessionId> = w.sids.clone();
        w.round = round;
        w.retry_at = None;
        w.next_round = None;
        w.sids = sids.clone();
        let purpose = w.purpose.clone();
        for sid in left {
            self.sessions.remove(&sid);
        }
        for sid in &sids {
            self.by_sid.insert(*sid, message.to_vec());
        }
        let Some(&sid) = sids.last() else { return Ok(vec![]) };
        let mut session = Session::new(self.config.clone(), Box::new(rand::rngs::OsRng), self.issued.iter().copied());
        let actions = session.handle(
            Input::Start { message: message.to_vec(), epoch: self.epoch, signers: self.signers.clone(), round },
            now_ms,
        );
        self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "started"]).inc();
        info!(target: "signing", key = %self.kind, session = ?sid, ?purpose, round, "signing session started");
        let before_restart: Vec<u32> = self.issued.iter().filter(|c| c.session == sid).map(|c| c.attempt.0).collect();
        if !before_restart.is_empty() {
            info!(target: "signing", key = %self.kind, session = ?sid, attempts = ?before_restart, "this session committed to these attempts before the last restart: they are never answered");
        }
        self.sessions.insert(
            sid,
            Slot {
                session,
                purpose,
                message: message.to_vec(),
                started: Instant::now(),
                attempt: Attempt(0),
                candidates: BTreeSet::new(),
                suspended: false,
                held: Vec::new(),
                active_since: Instant::now(),
            },
        );
        let mut out = persisted;
        out.extend(self.process(sid, actions, now_ms)?);
        for (from, m) in self.parked.take(&sid) {
            out.extend(self.deliver(sid, from, m, now_ms)?);
        }
        Ok(out)
    }

    /// A session message from validator `from`.
    pub fn on_message(&mut self, from: usize, body: &[u8], now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let m = match Message::<C>::decode(body) {
            Ok(m) => m,
            Err(e) => {
                warn!(target: "signing", key = %self.kind, from, error = %e, "undecodable session message dropped");
                self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "undecodable"]).inc();
                return Ok(vec![]);
            }
        };
        let sid = session_of(&m);
        if let Some((attempt, signature)) = self.finished.get(&sid) {
            // Help a late peer finish: it gets the verified signature.
            if !matches!(m, Message::Signature { .. }) {
                let reply = Message::Signature { session: sid, attempt: *attempt, signature: *signature };
                return Ok(self.encode(&reply).map(|payload| Effect::Send { to: from, payload }).into_iter().collect());
            }
            return Ok(vec![]);
        }
        if self.sessions.contains_key(&sid) {
            return self.deliver(sid, from, m, now_ms);
        }
        if let Some(message) = self.by_sid.get(&sid).cloned() {
            // An earlier round of a message this node signs (or the current one, failed
            // here): the peer is behind, or back from away. Tell it where this node is.
            return self.behind(from, &message, sid, m, now_ms);
        }
        if let Err(why) = self.parked.park(sid, from, m, body.len(), Instant::now()) {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), why.as_str()]).inc();
        }
        // Queued here, but a peer signs it already: it starts next.
        if let Some(message) = self.queued_sids.get(&sid).cloned() {
            self.queue.promote(&message);
        }
        Ok(vec![])
    }

    /// `from` sent `m`, of round `sid` of `message`, which is not running here: a round
    /// before this node's, or its own round that failed here.
    ///
    /// - A signature (of any round) finishes the signing here, once it verifies.
    /// - If this node's round failed and waits for its retry, the peer's message means a
    ///   signer is back: the next round starts at once (the failed one's attempts are
    ///   spent), rather than after the backoff.
    /// - A peer in an earlier round than this node's gets a hint of it; it joins once
    ///   `f + 1` peers say the same ([`Suite::on_round_hint`]).
    pub(super) fn behind(
        &mut self,
        from: usize,
        message: &[u8],
        sid: SessionId,
        m: Message<C>,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        if let Message::Signature { signature, attempt, .. } = &m {
            return self.adopt(message, *signature, *attempt);
        }
        let now = Instant::now();
        let Some(w) = self.wanted.get(message) else { return Ok(vec![]) };
        let (mut round, failed) = (w.round, w.retry_at.is_some());
        let peer_round = w.sids.iter().position(|s| *s == sid).unwrap_or(0) as u32;
        let hint_due = w.hinted.get(&from).is_none_or(|at| now.saturating_duration_since(*at) >= HINT_EVERY);
        let mut out = Vec::new();
        if failed {
            round = round.saturating_add(1);
            if self.has_slot() {
                info!(target: "signing", key = %self.kind, from, round, "a signer is back: the next round starts now");
                out.extend(self.start_round(message, round, now_ms)?);
            } else if let Some(w) = self.wanted.get_mut(message) {
                // Due now: it starts as soon as a slot frees.
                w.retry_at = Some(now);
            }
        }
        if peer_round < round && hint_due {
            if let Some(w) = self.wanted.get_mut(message) {
                w.hinted.insert(from, now);
            }
            let mut payload = vec![TAG_ROUND, self.tag];
            payload.extend_from_slice(&sid.0);
            payload.extend_from_slice(&round.to_be_bytes());
            out.push(Effect::Send { to: from, payload });
        }
        Ok(out)
    }

    /// A peer's signature over `message`, from a round other than the one running here:
    /// if it verifies under the group key, the signing is done (as if this node's own
    /// session had produced it).
    pub(super) fn adopt(
        &mut self,
        message: &[u8],
        signature: Signature<C>,
        attempt: Attempt,
    ) -> eyre::Result<Vec<Effect>> {
        if self.config.public_key_package.verifying_key().verify(message, &signature).is_err() {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "invalid"]).inc();
            return Ok(vec![]);
        }
        let Some(w) = self.wanted.get(message) else { return Ok(vec![]) };
        let current = w.sids.last().copied();
        let purpose = w.purpose.clone();
        let slot = current.and_then(|sid| self.sessions.remove(&sid));
        let (started, candidates) =
            slot.map(|s| (s.started, s.candidates)).unwrap_or((Instant::now(), BTreeSet::new()));
        let Some(sid) = current else { return Ok(vec![]) };
        info!(target: "signing", key = %self.kind, ?purpose, "signature from another round adopted");
        Ok(vec![self.finish(sid, message.to_vec(), purpose, signature, attempt, started, candidates)?])
    }

    /// The signing of `message` is done: every round's id answers late peers with the
    /// signature, and the node is told.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &mut self,
        sid: SessionId,
        message: Vec<u8>,
        purpose: Purpose,
        signature: Signature<C>,
        attempt: Attempt,
        started: Instant,
        candidates: BTreeSet<Identifier<C>>,
    ) -> eyre::Result<Effect> {
        let kind = self.kind;
        let bytes = signature.serialize().map_err(|e| eyre::eyre!("serializing a signature: {e}"))?;
        // It may have been set aside (then queued again) when a peer's signature came.
        self.queue.remove(&message);
        let rounds = self.wanted.remove(&message).map(|w| w.sids).unwrap_or_default();
        for r in rounds {
            self.by_sid.remove(&r);
            self.sessions.remove(&r);
            self.finished.insert(r, (attempt, signature));
        }
        self.finished.insert(sid, (attempt, signature));
        self.metrics.signing_sessions.with_label_values(&[kind.as_str(), "signed"]).inc();
        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "signed"]).inc();
        self.metrics.signing_latency.with_label_values(&[kind.as_str()]).observe(started.elapsed().as_secs_f64());
        info!(target: "signing", key = %kind, session = ?sid, ?purpose, elapsed_ms = started.elapsed().as_millis() as u64, "signed");
        let signers = candidates.iter().filter_map(|c| self.index(c)).collect();
        Ok(Effect::Signed {
            kind,
            purpose,
            message,
            signature: bytes,
            signers,
            attempt: attempt.0,
            elapsed: started.elapsed(),
        })
    }

    /// A round hint from `from` (`session id | round`): it is in `round` of the message
    /// whose earlier round `session id` is. Once `f + 1` peers are past this node's round,
    /// it joins the highest round that many of them reached.
    pub fn on_round_hint(&mut self, from: usize, body: &[u8], now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let (Some(sid), Some(round)) = (
            body.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            body.get(32..36).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes),
        ) else {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "undecodable"]).inc();
            return Ok(vec![]);
        };
        if body.len() != 36 || from >= self.n || from == self.me {
            return Ok(vec![]);
        }
        let f = self.faulty();
        let Some(message) = self.by_sid.get(&SessionId(sid)).cloned() else { return Ok(vec![]) };
        let Some(w) = self.wanted.get_mut(&message) else { return Ok(vec![]) };
        let h = w.hints.entry(from).or_default();
        *h = (*h).max(round);
        match agreed_round(&w.hints, f) {
            Some(target) if target > w.round => {
                let here = w.round;
                if self.holds_slot(&message) || self.has_slot() {
                    info!(target: "signing", key = %self.kind, from = here, to = target, "peers are in a later round of this signing: joining it");
                    return self.start_round(&message, target, now_ms);
                }
                // Every slot is taken: it joins them as soon as one frees.
                if let Some(w) = self.wanted.get_mut(&message) {
                    w.next_round = Some(target);
                    w.retry_at = Some(Instant::now());
                }
                Ok(vec![])
            }
            _ => Ok(vec![]),
        }
    }
    pub(super) fn deliver(
        &mut self,
        sid: SessionId,
        from: usize,
        m: Message<C>,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        let Ok(from_id) = identifier::<C>(from) else { return Ok(vec![]) };
        let Some(slot) = self.sessions.get_mut(&sid) else { return Ok(vec![]) };
        if slot.suspended && !matches!(m, Message::Signature { .. }) {
            // Held until it takes a slot again; peers sign it, so it goes first.
            if slot.held.len() < MAX_PARKED_PER_SESSION
                && slot.held.iter().filter(|(f, _)| *f == from).count() < MAX_PARKED_PER_SENDER
            {
                slot.held.push((from, m));
            } else {
                self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "held_full"]).inc();
            }
            let message = slot.message.clone();
            self.queue.promote(&message);
            // Its peers would go on without it now (t committed, or its coordinator's
            // package came): it runs again at once, in exchange for one that waits.
            let t = usize::from(*self.config.key_package.min_signers());
            let attempt = slot.session.attempt();
            let committed: BTreeSet<usize> = slot
                .held
                .iter()
                .filter(|(_, m)| matches!(m, Message::Commitment { attempt: a, .. } if Some(*a) == attempt))
                .map(|(f, _)| *f)
                .collect();
            let packaged = slot
                .held
                .iter()
                .any(|(_, m)| matches!(m, Message::SigningPackage { attempt: a, .. } if Some(*a) == attempt));
            if (packaged || slot.session.present() + committed.len() >= t)
                && (self.has_slot() || self.set_aside_one(sid, Instant::now()))
            {
                self.queue.remove(&message);
                return self.resume(sid, now_ms);
            }
            // Otherwise it goes first when a slot frees (the limit holds).
            return Ok(vec![]);
        }
        let actions = slot.session.handle(Input::Message { from: from_id, message: m }, now_ms);
        self.process(sid, actions, now_ms)
    }

    /// Time passed: attempts time out, parked messages expire, failed sessions are
    /// retried as their next round.
    pub fn tick(&mut self, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let now = Instant::now();
        self.parked.expire(now);
        let mut out = Vec::new();
        let due: Vec<(Vec<u8>, u32)> = self
            .wanted
            .iter()
            .filter(|(_, w)| w.retry_at.is_some_and(|at| at <= now))
            .map(|(m, w)| (m.clone(), w.next_round.unwrap_or(w.round.saturating_add(1))))
            .collect();
        // Retries first (they are older), then the queue, as slots allow; a retry that
        // finds no slot stays due.
        for (message, round) in due {
            if !self.has_slot() {
                break;
            }
            info!(target: "signing", key = %self.kind, round, "retrying a failed signing session as a new round");
            out.extend(self.start_round(&message, round, now_ms)?);
        }
        self.yield_slot(now);
        while self.has_slot() {
            let Some(message) = self.queue.pop() else { break };
            let Some((round, last)) = self.wanted.get(&message).map(|w| (w.round, w.sids.last().copied())) else {
                continue;
            };
            if let Some(sid) = last {
                // Set aside before, or already running in another round.
                if self.sessions.get(&sid).is_some_and(|s| s.suspended) {
                    out.extend(self.resume(sid, now_ms)?);
                }
                continue;
            }
            self.queued_sids.remove(&self.sid_of(&message, round));
            out.extend(self.start_round(&message, round, now_ms)?);
        }
        let kind = self.kind.as_str();
        self.metrics.signing_queue.with_label_values(&[kind]).set(self.queue.len() as i64);
        self.metrics.signing_in_flight.with_label_values(&[kind]).set(self.active() as i64);
        let ids: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| !s.suspended).map(|(sid, _)| *sid).collect();
        for sid in ids {
            if let Some(slot) = self.sessions.get_mut(&sid) {
                let actions = slot.session.handle(Input::Tick, now_ms);
                out.extend(self.process(sid, actions, now_ms)?);
            }
        }
        Ok(out)
    }

    pub(super) fn corrupt(&self, share: &SignatureShare<C>) -> SignatureShare<C> {
        let mut bytes = share.serialize();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        SignatureShare::deserialize(&bytes).unwrap_or(*share)
    }

    pub(super) fn process(
        &mut self,
        sid: SessionId,
        actions: Vec<Action<C>>,
        _now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        let mut out = Vec::new();
        let kind = self.kind;
        for a in actions {
            match a {
                Action::Persist(rec) => {
                    let mut b = Batch::new();
                    crate::records::signing::put_issued(&mut b, kind, &rec);
                    // Durable before the commitment leaves (the effects are carried out
                    // in order); a failed write stops the node.
                    out.push(Effect::Persist(b));
                    self.issued.insert(rec);
                    self.metrics.signing_commitments.with_label_values(&[kind.as_str()]).inc();
                    debug!(target: "signing", key = %kind, session = ?sid, attempt = rec.attempt.0, "commitment issued (persisted)");
                }
                Action::Send { to, mut message } => {
                    if let Message::Share { share, .. } = &mut message {
                        match self.fault {
                            Some(SigningFault::InvalidShares) => {
                                warn!(target: "signing", "TEST FAULT: sending an invalid signature share");
                                *share = self.corrupt(share);
                            }
                            Some(SigningFault::WithholdShares) => {
                                warn!(target: "signing", session = ?sid, "TEST FAULT: withholding a signature share");
                                continue;
                            }
                            Some(SigningFault::SilentOnMints) | None => {}
                        }
                    }
                    if let (Some(i), Some(payload)) = (self.index(&to), self.encode(&message)) {
                        if matches!(message, Message::Share { .. })
                            && let Some(slot) = self.sessions.get(&sid)
                        {
                            out.push(Effect::Shared { kind, purpose: slot.purpose.clone() });
                        }
                        out.push(Effect::Send { to: i, payload });
                    }
                }
                Action::Broadcast(m) => {
                    if let Some(payload) = self.encode(&m) {
                        for i in (0..self.n).filter(|i| *i != self.me) {
                            out.push(Effect::Send { to: i, payload: payload.clone() });
                        }
                    }
                }
                Action::NewAttempt { attempt, coordinator, candidates } => {
                    if attempt.0 > 0 {
                        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "retried"]).inc();
                    }
                    let coord = self.index(&coordinator);
                    if let Some(slot) = self.sessions.get_mut(&sid) {
                        slot.candidates = candidates;
                        slot.attempt = attempt;
                        info!(target: "signing", key = %kind, session = ?sid, attempt = attempt.0, coordinator = ?coord, candidates = slot.candidates.len(), "attempt begins");
                    }
                }
                Action::Culprit(ev) => {
                    let culprit = self.index(&ev.culprit);
                    self.metrics.signing_culprits.with_label_values(&[kind.as_str()]).inc();
                    warn!(target: "signing::evidence", key = %kind, session = ?sid, attempt = ev.attempt.0, culprit = ?culprit, "invalid signature share: signer excluded, evidence recorded");
                    let record = crate::records::signing::ShareEvidence {
                        kind: "invalid_signature_share".to_owned(),
                        key: kind.as_str().to_owned(),
                        session: hex::encode(sid.0),
                        attempt: ev.attempt.0,
                        culprit,
                        share: hex::encode(ev.share.serialize()),
                        signing_package: ev.package.serialize().ok().map(hex::encode),
                    };
                    let mut b = Batch::new();
                    crate::records::signing::put_share_evidence(&mut b, kind, &sid, &record)?;
                    out.push(Effect::Persist(b));
                }
                Action::Done(signature) => {
                    let Some(slot) = self.sessions.remove(&sid) else { continue };
                    out.push(self.finish(
                        sid,
                        slot.message,
                        slot.purpose,
                        signature,
                        slot.attempt,
                        slot.started,
                        slot.candidates,
                    )?);
                }
                Action::Refused { from, error } => {
                    let reason = refusal_reason(&error);
                    self.metrics.signing_refused.with_label_values(&[kind.as_str(), reason]).inc();
                    if reason == "pre_restart_attempt" {
                        warn!(target: "signing", key = %kind, session = ?sid, from = ?self.index(&from), %error, "refused to answer an attempt committed before a restart");
                    } else {
                        debug!(target: "signing", key = %kind, session = ?sid, from = ?self.index(&from), %error, "session input refused");
                    }
                }
                Action::Failed(e) => {
                    if let Some(slot) = self.sessions.remove(&sid) {
                        self.metrics.signing_sessions.with_label_values(&[kind.as_str(), "failed"]).inc();
                        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "failed"]).inc();
                        let timeout_ms = self.config.timeout_ms;
                        let retry = self.wanted.get_mut(&slot.message).map(|w| {
                            w.failures = w.failures.saturating_add(1);
                            let delay = retry_delay(timeout_ms, w.failures);
                            w.retry_at = Some(Instant::now() + delay);
                            (w.round, delay)
                        });
                        let (round, delay) = retry.unwrap_or_default();
                        warn!(target: "signing", key = %kind, session = ?sid, round, retry_in_ms = delay.as_millis() as u64, error = %e, "signing session failed: it is retried as a new round");
                        out.push(Effect::Failed { kind, purpose: slot.purpose, error: e.to_string() });
                    }
                }
            }
        }
        Ok(out)
    }
}
