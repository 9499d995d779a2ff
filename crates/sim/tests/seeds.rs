//! The whole-network simulation over many seeds: n = 4, 7 and 16, and one n = 100.
//!
//! ```text
//! SIM_SEED=<seed> [SIM_N=<n>] cargo test -p btcfi-sim --test seeds -- --nocapture   # replay one run
//! SIM_SEEDS=<count> cargo test -p btcfi-sim --test seeds -- --nocapture             # more seeds
//! SIM_SEEDS=<count> SIM_N=<n> cargo test -p btcfi-sim --test seeds -- --nocapture   # every seed at one n
//! ```

use btcfi_sim::{Report, Setup, run};
use std::time::Instant;

const DEFAULT_SEEDS: u64 = 1_000;

/// The n of a seed: 60 % n = 4, 30 % n = 7, 10 % n = 16.
fn n_for(seed: u64) -> u16 {
    match seed % 10 {
        0..6 => 4,
        6..9 => 7,
        _ => 16,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn describe(r: &Report) -> String {
    format!(
        "seed {} n={}: {} steps, {} delivered, {} dropped, {}/{} final deposits minted ({} deposits), {} crashes, {} byzantine, {} certifications, {} signatures, {} culprits, {} evidence, {} reverts, {} undecodable, {}/{} payable peg-outs paid ({} burns) by {} releases ({} sat fees, {} replaced, {} refused, {} reorgs), {} ms, trace {}",
        r.seed,
        r.n,
        r.steps,
        r.delivered,
        r.dropped,
        r.minted,
        r.final_deposits,
        r.deposits,
        r.crashes,
        r.byzantine,
        r.certifications,
        r.signatures,
        r.culprits,
        r.evidence,
        r.reverts,
        r.undecodable,
        r.paid,
        r.payable_burns,
        r.burns,
        r.releases,
        r.vault_fees,
        r.btc_replaced,
        r.btc_refused,
        r.btc_reorgs,
        r.sim_ms,
        &r.trace[..16]
    )
}

fn assert_ok(r: &Report) {
    assert!(
        r.ok(),
        "{}\nviolations: {:#?}\nliveness: {:?}\nreplay: SIM_SEED={} SIM_N={} cargo test -p btcfi-sim --test seeds -- --nocapture",
        describe(r),
        r.violations,
        r.liveness,
        r.seed,
        r.n
    );
}

#[test]
fn every_seed_keeps_safety_and_mints_every_final_deposit() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let n = env_u64("SIM_N").map_or_else(|| n_for(seed), |n| n as u16);
        let r = run(&Setup { seed, n, canary: None });
        println!("{}", describe(&r));
        assert_ok(&r);
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    // `SIM_N` without `SIM_SEED`: every seed at that n.
    let fixed_n = env_u64("SIM_N").map(|n| n as u16);
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get()).min(4) as u64;
    let started = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                s.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % threads == k)
                        .map(|seed| run(&Setup { seed, n: fixed_n.unwrap_or_else(|| n_for(seed)), canary: None }))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation thread")).collect()
    });
    let elapsed = started.elapsed();
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.ok()).collect();
    for r in &failed {
        println!("failed: SIM_SEED={} SIM_N={}", r.seed, r.n);
    }
    for r in &reports {
        assert_ok(r);
    }
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let minted: usize = reports.iter().map(|r| r.minted).sum();
    let culprits: u64 = reports.iter().map(|r| r.culprits).sum();
    let evidence: u64 = reports.iter().map(|r| r.evidence).sum();
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let paid: usize = reports.iter().map(|r| r.paid).sum();
    let releases: u64 = reports.iter().map(|r| r.releases).sum();
    let reorgs: u64 = reports.iter().map(|r| r.btc_reorgs).sum();
    println!(
        "{} seeds in {:.1} s ({:.0} seeds/min on {threads} threads): {delivered} messages delivered, {minted} mints, {paid} peg-outs paid by {releases} releases, {reorgs} tip reorgs, {crashes} crashes, {culprits} culprits named, {evidence} equivocations proven",
        reports.len(),
        elapsed.as_secs_f64(),
        reports.len() as f64 / elapsed.as_secs_f64() * 60.0
    );
    // The faults must have happened, or the run proves nothing.
    assert!(crashes > seeds / 4, "crashes happened in few runs: {crashes}");
    assert!(culprits > 0 && evidence > 0, "bad shares and equivocations were caught");
    assert_eq!(minted, reports.iter().map(|r| r.final_deposits).sum::<usize>());
    assert!(paid >= reports.iter().map(|r| r.payable_burns).sum::<usize>(), "every payable peg-out paid");
    assert!(reorgs > 0 && releases > 0, "releases confirmed through tip reorgs");
}

#[test]
fn a_network_of_a_hundred_validators_mints_its_deposits() {
    let started = Instant::now();
    let r = run(&Setup { seed: 7, n: 100, canary: None });
    println!("{} in {:.1} s", describe(&r), started.elapsed().as_secs_f64());
    assert_ok(&r);
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    for seed in [3, 606, 909] {
        let a = run(&Setup { seed, n: n_for(seed), canary: None });
        let b = run(&Setup { seed, n: n_for(seed), canary: None });
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.steps, b.steps);
        let other = run(&Setup { seed: seed + 1, n: n_for(seed), canary: None });
        assert_ne!(a.trace, other.trace, "the trace depends on the seed");
    }
}

/// Seeds that once failed, at the n they failed at (not always the n [`n_for`] gives),
/// kept as regressions.
#[test]
fn seeds_that_once_failed_pass() {
    // 254: a restart signed again a release paying a reorged peg-out.
    // 66 at n=4: a crash between a spend's record and its drops left dead releases live.
    // 23 at n=7: a crossed split (each side held two releases, crosswise) never merged;
    //   and, with a supersede gate on every live release, the merge of a split waited
    //   while its halves kept proposing their releases anew.
    // 92 at n=4: that gate refused the proposer's own merge of a young release.
    // 2068 and 2258 at n=7: a respin at the estimate rate came out as the release it
    //   replaced, so a Byzantine validator's cheaper twin of it split the signers for good.
    //   2068 again, with resends: a rival kept here was never signed once the release it
    //   competed with expired, so the sides of a split never met.
    // 2640 at n=4 and 1136 at n=7: honest signers a round apart (one restarted, or
    //   abandoned once more) never met, with exactly t of them; rounds follow the clock.
    // 3229 at n=16: a restarted validator signed a release paying a peg-out reorged away
    //   while it was down, before its chain view was back.
    let seeds = [(254, 4), (66, 4), (23, 7), (92, 4), (2068, 7), (2258, 7), (2640, 4), (1136, 7), (3229, 16)];
    for (seed, n) in seeds {
        let r = run(&Setup { seed, n, canary: None });
        assert_ok(&r);
    }
}
