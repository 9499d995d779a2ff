//! The two signing suites (evm, btc): opened from the sealed key shares, checked with
//! a test signature before use, and the signing sessions they run.

use super::*;

/// Opens the epoch's group keys into signing suites.
pub(super) struct SuiteOpener<'a> {
    pub(super) store: &'a Store,
    pub(super) epoch: u64,
    pub(super) n: usize,
    pub(super) me: usize,
    pub(super) timeout_ms: u64,
    pub(super) max_attempts: u32,
    pub(super) max_in_flight: usize,
    pub(super) passphrase: Option<&'a str>,
    pub(super) fault: Option<SigningFault>,
    pub(super) metrics: &'a Metrics,
}

impl SuiteOpener<'_> {
    /// The suite of `kind` with its group key, or `None` (with a warning) before the DKG.
    pub(super) fn suite<C: frost_core::Ciphersuite>(&self, kind: KeyKind) -> eyre::Result<Option<(String, Suite<C>)>> {
        let Some(record) = crate::records::keys::load(self.store, kind, self.epoch)? else {
            warn!(target: "signing", key = %kind, epoch = self.epoch, "no key for this epoch: signing disabled until `btcfi-node dkg` has run");
            return Ok(None);
        };
        let passphrase = self.passphrase.ok_or(keys::KeyError::NoPassphrase)?;
        let k = keys::open_key::<C>(record, passphrase)?;
        let config = SessionConfig {
            key_package: k.key_package,
            public_key_package: k.public_key_package,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
        };
        let suite = Suite::new(
            kind,
            self.epoch,
            self.n,
            self.me,
            config,
            self.store,
            self.fault,
            self.metrics.clone(),
            self.max_in_flight,
        )?;
        Ok(Some((k.record.group_key, suite)))
    }
}

impl Pipeline {
    pub(super) fn load(&self, kind: KeyKind) -> Option<crate::signing::Load> {
        match kind {
            KeyKind::Evm => self.evm.as_ref().map(Suite::load),
            KeyKind::Btc => self.btc.as_ref().map(Suite::load),
        }
    }

    /// Starts the test signatures of unverified keys once a threshold of validators is
    /// connected (before that, the session would only time out).
    pub(super) fn start_key_checks(&mut self) -> eyre::Result<()> {
        if self.key_checks_started {
            return Ok(());
        }
        let threshold = self.n * 2 / 3 + 1;
        if self.net.connected_validators().len() + 1 < threshold {
            return Ok(());
        }
        self.key_checks_started = true;
        for kind in [KeyKind::Evm, KeyKind::Btc] {
            if let Some(gk) = self.group_keys.get(&kind).cloned()
                && !self.usable.contains(&kind)
            {
                let m = keys::test_message(kind, self.epoch, &gk);
                self.start_now(kind, m, Purpose::KeyCheck)?;
            }
        }
        Ok(())
    }

    pub(super) fn start_now(&mut self, kind: KeyKind, message: Vec<u8>, purpose: Purpose) -> eyre::Result<()> {
        let effects = match kind {
            KeyKind::Evm => match self.evm.as_mut() {
                Some(s) => s.start(&self.store, message, purpose, now_ms())?,
                None => return Ok(()),
            },
            KeyKind::Btc => match self.btc.as_mut() {
                Some(s) => s.start(&self.store, message, purpose, now_ms())?,
                None => return Ok(()),
            },
        };
        self.apply(effects)
    }

    /// Starts a session now if the key is verified, else after its test signature.
    pub(super) fn start(&mut self, kind: KeyKind, message: Vec<u8>, purpose: Purpose) -> eyre::Result<()> {
        if !self.group_keys.contains_key(&kind) {
            return Ok(());
        }
        if self.usable.contains(&kind) {
            self.start_now(kind, message, purpose)
        } else {
            self.deferred.push((kind, message, purpose));
            Ok(())
        }
    }

    pub(super) fn apply(&mut self, effects: Vec<Effect>) -> eyre::Result<()> {
        for e in effects {
            match e {
                Effect::Persist(b) => self.store.commit(b)?,
                Effect::Send { to, payload } => self.send(to, payload),
                Effect::Signed { kind, purpose, message, signature, signers, attempt, .. } => {
                    self.on_signed(kind, purpose, &message, &signature, signers, attempt)?;
                }
                Effect::Shared { purpose: Purpose::ReleaseInput { txid, .. }, .. } => {
                    if let Ok(txid) = txid.parse::<Txid>() {
                        self.book_input(release::book::Input::Shared { txid })?;
                    }
                }
                Effect::Shared { .. } => {}
                Effect::Failed { kind, purpose, error } => {
                    error!(target: "signing", key = %kind, ?purpose, %error, "signing round failed (fewer than t responsive honest signers): retried as a new round after a backoff");
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_signed(
        &mut self,
        kind: KeyKind,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8],
        signers: Vec<usize>,
        attempt: u32,
    ) -> eyre::Result<()> {
        match purpose {
            Purpose::KeyCheck => {
                let check = keys::KeyCheck {
                    message: hex::encode(message),
                    signature: hex::encode(signature),
                    verified_ms: now_ms(),
                };
                crate::records::keys::mark_usable(&self.store, kind, self.epoch, &check)?;
                self.usable.insert(kind);
                self.metrics.key_usable.with_label_values(&[kind.as_str()]).set(1);
                info!(target: "signing", key = %kind, epoch = self.epoch, "key verified by a test signature: usable");
                let (now, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.deferred).into_iter().partition(|d| d.0 == kind);
                self.deferred = later;
                for (k, m, p) in now {
                    self.start_now(k, m, p)?;
                }
                self.tell_mint_gates()?;
            }
            Purpose::Mint { .. } | Purpose::MintBatch { .. } => {
                self.on_mint_signed(message, signature, signers, attempt)?;
            }
            Purpose::ReleaseInput { txid, input } => {
                let Ok(txid) = txid.parse::<Txid>() else { return Ok(()) };
                self.book_signed_input(txid, input, signature)?;
            }
        }
        Ok(())
    }
}
