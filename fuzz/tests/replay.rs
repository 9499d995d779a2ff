//! Corpus replay on stable: every target's check runs over its seeds, over every file
//! in `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (crashes found earlier
//! stay regression tests once copied into `fuzz/regressions/<target>/`), and over
//! truncations and bit flips of the seeds. `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! With `BTCFI_FUZZ_WRITE_SEEDS=1` the seeds are also written to `fuzz/corpus/<target>/`
//! (scripts/fuzz.sh does this before fuzzing).

use std::{fs, path::Path};

use btcfi_fuzz::{TARGETS, run, seeds};

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).filter(|e| e.path().is_file()).filter_map(|e| fs::read(e.path()).ok()).collect()
}

#[test]
fn seeds_decode_and_are_canonical() {
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for seed in &seeds {
            run(target, seed);
        }
    }
}

#[test]
fn mutated_seeds_never_panic() {
    for target in TARGETS {
        for seed in seeds(target) {
            for cut in 0..=seed.len() {
                run(target, &seed[..cut]);
            }
            for i in 0..seed.len() {
                for bit in 0..8 {
                    let mut flipped = seed.clone();
                    flipped[i] ^= 1 << bit;
                    run(target, &flipped);
                }
            }
            let mut longer = seed.clone();
            longer.push(0);
            run(target, &longer);
        }
    }
}

#[test]
fn corpus_and_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let write = std::env::var_os("BTCFI_FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        if write {
            let dir = root.join("corpus").join(target);
            fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds(target).iter().enumerate() {
                fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
        for sub in ["corpus", "artifacts", "regressions"] {
            for input in files(&root.join(sub).join(target)) {
                run(target, &input);
            }
        }
    }
}
