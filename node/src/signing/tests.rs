use super::*;

fn sid(i: u32) -> SessionId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    SessionId(b)
}

/// Key checks before release inputs before mints, oldest first within each; an
/// abandoned message leaves the queue; the backlog clock runs only while it is not
/// empty.
#[test]
fn the_start_queue_serves_key_checks_then_releases_then_mints_oldest_first() {
    let now = Instant::now();
    let mut q = StartQueue::default();
    assert_eq!(q.backlog_for(now), Duration::ZERO);
    let mint = |i: u8| Purpose::Mint { event: EventId::new(btcfi_types::ChainId(1), btcfi_types::TxHash([i; 32]), 0) };
    let input = |i: u32| Purpose::ReleaseInput { txid: "t".into(), input: i };
    q.push(vec![1], &mint(1), now);
    q.push(vec![2], &input(0), now);
    q.push(vec![3], &mint(3), now);
    q.push(vec![4], &Purpose::KeyCheck, now);
    q.push(vec![5], &input(1), now);
    q.push(vec![6], &mint(6), now);
    assert_eq!(q.backlog_for(now + Duration::from_secs(5)), Duration::from_secs(5));
    q.remove(&[3]);
    // Peers sign mint 6 already: it goes before the other mints, not before releases.
    q.promote(&[6]);
    let order: Vec<Vec<u8>> = std::iter::from_fn(|| q.pop()).collect();
    assert_eq!(order, vec![vec![4], vec![2], vec![5], vec![6], vec![1]]);
    assert!(q.is_empty());
    assert_eq!(q.backlog_for(now + Duration::from_secs(9)), Duration::ZERO, "empty: no backlog");
}

/// One peer opening session after session (random ids) used to take every parked
/// slot, so that honest peers' early messages were dropped (`park_full`). Each
/// sender now opens at most its share of the slots, and parks at most 1 MiB.
#[test]
fn one_sender_cannot_take_the_parking_of_the_others() {
    let now = Instant::now();
    let mut p: Parking<()> = Parking::new(4);
    let mut parked = 0;
    for i in 0..MAX_PARKED_SESSIONS as u32 {
        if p.park(sid(i), 1, (), 100, now).is_ok() {
            parked += 1;
        }
    }
    assert_eq!(parked, MAX_PARKED_SESSIONS / 4, "a quarter of the slots for one of four");
    assert_eq!(p.park(sid(u32::MAX), 1, (), 100, now), Err(ParkRefusal::SenderSessions));
    // The others still park, in their own sessions and in the attacker's.
    assert_eq!(p.park(sid(u32::MAX), 2, (), 100, now), Ok(()));
    assert_eq!(p.park(sid(0), 3, (), 100, now), Ok(()));
    // Bytes: a sender's big messages stop at its budget.
    let mut q: Parking<()> = Parking::new(4);
    let big = MAX_PARKED_BYTES_PER_SENDER / 4 + 1;
    for i in 0..3 {
        assert_eq!(q.park(sid(i), 1, (), big, now), Ok(()));
    }
    assert_eq!(q.park(sid(9), 1, (), big, now), Err(ParkRefusal::SenderBytes));
    assert_eq!(q.park(sid(9), 2, (), big, now), Ok(()));
    // Released when the session starts: the budget is given back.
    let taken = q.take(&sid(0));
    assert_eq!(taken.len(), 1);
    assert_eq!(q.park(sid(10), 1, (), big, now), Ok(()));
    // And when parked sessions expire.
    q.expire(now + PARK_FOR);
    assert!(q.is_empty());
    assert_eq!(q.load.values().map(|l| l.0 + l.1).sum::<usize>(), 0, "nothing left accounted");
}

#[test]
fn a_session_holds_a_bounded_number_of_messages_per_sender() {
    let now = Instant::now();
    let mut p: Parking<u32> = Parking::new(4);
    for k in 0..MAX_PARKED_PER_SENDER as u32 {
        assert_eq!(p.park(sid(1), 1, k, 10, now), Ok(()));
    }
    assert_eq!(p.park(sid(1), 1, 99, 10, now), Err(ParkRefusal::SessionFull));
    assert_eq!(p.park(sid(1), 2, 7, 10, now), Ok(()));
    let got: Vec<u32> = p.take(&sid(1)).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got.len(), MAX_PARKED_PER_SENDER + 1);
    assert_eq!(got.last(), Some(&7), "in arrival order");
}

/// A node moves to a later round only when f + 1 peers say they reached it: one
/// Byzantine peer's claim of round 1,000 alone moves nobody.
#[test]
fn the_agreed_round_needs_f_plus_one_peers() {
    let hints: BTreeMap<usize, u32> = [(1, 1_000)].into_iter().collect();
    assert_eq!(agreed_round(&hints, 1), None);
    let hints: BTreeMap<usize, u32> = [(1, 1_000), (2, 3)].into_iter().collect();
    assert_eq!(agreed_round(&hints, 1), Some(3));
    let hints: BTreeMap<usize, u32> = [(1, 4), (2, 3), (3, 5)].into_iter().collect();
    assert_eq!(agreed_round(&hints, 1), Some(4));
    assert_eq!(agreed_round(&hints, 0), Some(5));
}

#[test]
fn retries_back_off_up_to_a_minute() {
    assert_eq!(retry_delay(3_000, 1), Duration::from_secs(6));
    assert_eq!(retry_delay(3_000, 2), Duration::from_secs(12));
    assert_eq!(retry_delay(3_000, 3), Duration::from_secs(24));
    assert_eq!(retry_delay(3_000, 30), MAX_RETRY_DELAY);
}

/// Four validators' suites in one process, each with its own RocksDB store, their
/// effects delivered to each other as the run loop would.
struct Four {
    suites: Vec<Suite<btcfi_signer::frost_secp256k1::Secp256K1Sha256>>,
    stores: Vec<Store>,
    _dirs: Vec<tempfile::TempDir>,
    signed: Vec<BTreeSet<Vec<u8>>>,
    /// Sessions that failed (waited their whole patience, or ran out of attempts).
    failed: usize,
    /// (from, to, payload) not delivered yet.
    wire: Vec<(usize, usize, Vec<u8>)>,
    start: Instant,
}

impl Four {
    fn new(max_in_flight: usize) -> Self {
        use btcfi_signer::frost_secp256k1::{self as frost, keys::IdentifierList};
        let (shares, public) =
            frost::keys::generate_with_dealer(4, 3, IdentifierList::Default, rand::rngs::OsRng).expect("keys");
        let (mut suites, mut stores, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        for me in 0..4 {
            let id = identifier::<frost::Secp256K1Sha256>(me).expect("id");
            let key_package = frost::keys::KeyPackage::try_from(shares[&id].clone()).expect("package");
            let config =
                SessionConfig { key_package, public_key_package: public.clone(), timeout_ms: 100, max_attempts: 16 };
            let dir = tempfile::tempdir().expect("dir");
            let store = Store::open(dir.path()).expect("store");
            let metrics = Metrics::new().expect("metrics");
            let suite =
                Suite::new(KeyKind::Evm, 1, 4, me, config, &store, None, metrics, max_in_flight).expect("suite");
            suites.push(suite);
            stores.push(store);
            dirs.push(dir);
        }
        Four {
            suites,
            stores,
            _dirs: dirs,
            signed: vec![BTreeSet::new(); 4],
            failed: 0,
            wire: Vec::new(),
            start: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn take(&mut self, from: usize, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Persist(b) => self.stores[from].commit(b).expect("commit"),
                Effect::Send { to, payload } => self.wire.push((from, to, payload)),
                Effect::Signed { message, .. } => {
                    self.signed[from].insert(message);
                }
                Effect::Failed { .. } => self.failed += 1,
                Effect::Shared { .. } => {}
            }
        }
    }

    fn start(&mut self, v: usize, message: &[u8]) {
        let now = self.now_ms();
        let purpose = Purpose::Mint { event: EventId::new(btcfi_types::ChainId(1), btcfi_types::TxHash([7; 32]), 0) };
        let effects = self.suites[v].start(&self.stores[v], message.to_vec(), purpose, now).expect("start");
        self.take(v, effects);
    }

    /// Delivers everything on the wire, and ticks everyone, until `done` or `for_ms`.
    fn run(&mut self, for_ms: u64, mut done: impl FnMut(&Four) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_millis(for_ms);
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            for (from, to, payload) in std::mem::take(&mut self.wire) {
                let now = self.now_ms();
                let (tag, body) = payload.split_first().expect("tagged");
                let effects = if *tag == TAG_ROUND {
                    self.suites[to].on_round_hint(from, &body[1..], now)
                } else {
                    self.suites[to].on_message(from, body, now)
                };
                self.take(to, effects.expect("delivered"));
            }
            for v in 0..4 {
                let now = self.now_ms();
                let effects = self.suites[v].tick(now).expect("tick");
                self.take(v, effects);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done(self)
    }
}

/// Every validator gives a session up before anyone answered (a batch of mints not
/// signed in time), then starts the same message again (the same mints proposed
/// again give the same root). Before, each restarted the very session it had
/// committed in: its first attempt was spent on every validator, so that nobody
/// could commit to it, and the session waited its whole patience for a quorum that
/// could never form, then failed. Now the message starts in its next round, and is
/// signed with no session failing.
#[test]
fn a_message_given_up_everywhere_and_started_again_is_signed_in_its_next_round() {
    let mut four = Four::new(64);
    let message = vec![0x42; 32];
    for v in 0..4 {
        four.start(v, &message);
        four.suites[v].abandon(&message);
    }
    four.wire.clear();
    for v in 0..4 {
        four.start(v, &message);
    }
    let all = |f: &Four| f.signed.iter().all(|s| s.contains(&message));
    assert!(four.run(20_000, all), "not signed: {:?}", four.signed);
    assert_eq!(four.failed, 0, "signed without waiting out a session's patience");
}

/// One slot each; two validators start A then B, the two others B then A, so that
/// every validator runs the message only one peer runs too (two of the three
/// needed). A session waiting for peers gives its slot up to the queued message
/// peers sign, and both are signed, with never more than one session holding a
/// slot on any validator, and no session failing. Without setting aside, each waited
/// for peers whose only slot held the other message for its whole patience, and
/// failed.
#[test]
fn sessions_waiting_for_each_other_give_way_and_both_are_signed() {
    let mut four = Four::new(1);
    let (a, b) = (vec![0xaa; 32], vec![0xbb; 32]);
    for v in 0..4 {
        let (first, second) = if v < 2 { (&a, &b) } else { (&b, &a) };
        four.start(v, first);
        four.start(v, second);
    }
    let mut peak = 0;
    let both = |f: &Four| f.signed.iter().all(|s| s.contains(&a) && s.contains(&b));
    let done = four.run(20_000, |f| {
        peak = peak.max(f.suites.iter().map(|s| s.load().in_flight).max().unwrap_or(0));
        both(f)
    });
    assert!(done, "not both signed: {:?}", four.signed);
    assert!(peak <= 1, "one slot each, {peak} held");
    assert_eq!(four.failed, 0, "signed without waiting out a session's patience");
}
