//! Planted bugs, each behind a test-only switch (quorum one below q, no own
//! observation, nonce reuse after a restart, the fee band ignored, a reorged peg-out
//! still paid): the simulation must catch each within 200 seeds, and print the seed
//! that did.

use btcfi_sim::{Canary, Setup, run};

const WITHIN: u64 = 200;

fn caught(canary: Canary) -> (u64, String) {
    for seed in 0..WITHIN {
        let n = if seed % 3 == 2 { 7 } else { 4 };
        let r = run(&Setup { seed, n, canary: Some(canary) });
        if let Some(v) = r.violations.first() {
            return (seed, v.clone());
        }
    }
    panic!("{canary:?} was not caught within {WITHIN} seeds");
}

#[test]
fn quorum_one_below_q_is_caught() {
    let (seed, why) = caught(Canary::QuorumOneBelow);
    println!("QuorumOneBelow caught by seed {seed}: {why}");
    assert!(why.contains("valid signatures, the quorum is"), "{why}");
}

#[test]
fn signing_without_an_own_observation_is_caught() {
    let (seed, why) = caught(Canary::NoOwnObservation);
    println!("NoOwnObservation caught by seed {seed}: {why}");
    assert!(why.contains("did not certify"), "{why}");
}

#[test]
fn nonce_reuse_after_a_restart_is_caught() {
    let (seed, why) = caught(Canary::NonceReuseAfterRestart);
    println!("NonceReuseAfterRestart caught by seed {seed}: {why}");
    assert!(why.contains("nonce commitment issued twice"), "{why}");
}

#[test]
fn a_signer_ignoring_the_fee_band_is_caught() {
    let (seed, why) = caught(Canary::IgnoreFeeBand);
    println!("IgnoreFeeBand caught by seed {seed}: {why}");
    assert!(why.contains("in fees"), "{why}");
}

#[test]
fn a_reorged_peg_out_still_paid_is_caught() {
    let (seed, why) = caught(Canary::PayReorged);
    println!("PayReorged caught by seed {seed}: {why}");
    assert!(why.contains("reorged out past finality"), "{why}");
}
