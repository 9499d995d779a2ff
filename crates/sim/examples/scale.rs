//! Prints how long one seed takes as n grows, and the largest n that runs a seed in
//! under 10 s; then seeds per minute at n = 4, 7 and 16.
//!
//! ```text
//! cargo run --release -p btcfi-sim --example scale [max_n]
//! ```

use btcfi_sim::{Setup, run};
use std::time::Instant;

fn main() {
    let max_n: u16 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let mut failed = Vec::new();
    for n in [4u16, 7, 16] {
        let started = Instant::now();
        let (mut seeds, mut delivered) = (0u64, 0u64);
        while started.elapsed().as_secs_f64() < 10.0 {
            let r = run(&Setup { seed: seeds, n, canary: None });
            if !r.ok() {
                failed.push(format!("SIM_SEED={} SIM_N={n}: {:?} {:?}", r.seed, r.violations, r.liveness));
            }
            seeds += 1;
            delivered += r.delivered;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "n={n:>3}: {:.0} seeds/min on one thread, {:.0} messages delivered per seed",
            seeds as f64 / secs * 60.0,
            delivered as f64 / seeds as f64
        );
    }
    // One seed at n: whether it ran, and passed, in under 10 s.
    let under_10s = |n: u16| {
        let started = Instant::now();
        let r = run(&Setup { seed: 1, n, canary: None });
        let secs = started.elapsed().as_secs_f64();
        println!("n={n:>3}: one seed in {secs:.2} s, {} messages delivered, ok={}", r.delivered, r.ok());
        secs < 10.0 && r.ok()
    };
    let mut largest = 0;
    let mut n = 16u16;
    while n <= max_n {
        if !under_10s(n) {
            break;
        }
        largest = n;
        n = if n < 64 { n * 2 } else { n + 32 };
    }
    // Between the last n that made it and the first that did not, to within 4.
    let mut too_big = n;
    while largest > 0 && too_big.saturating_sub(largest) > 4 {
        let mid = largest + (too_big - largest) / 2;
        if under_10s(mid) { largest = mid } else { too_big = mid }
    }
    println!("largest n with a seed under 10 s: {largest}");
    for f in &failed {
        println!("failed: {}", f.chars().take(600).collect::<String>());
    }
    assert!(failed.is_empty(), "{} seeds failed", failed.len());
}
