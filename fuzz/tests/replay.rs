//! Corpus replay on stable: every target's check runs over its seeds, over every file
//! in `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (crashes found earlier
//! stay regression tests once copied into `fuzz/regressions/<target>/`), and over
//! truncations and bit flips of the seeds. `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! `fuzz/regressions/<target>/` is committed and must hold inputs for every target (the
//! seeds as bytes, at least): a missing or unreadable directory fails the replay instead
//! of replaying nothing.
//!
//! With `BTCFI_FUZZ_WRITE_SEEDS=1` the seeds are also written to `fuzz/corpus/<target>/`
//! (scripts/fuzz.sh does this before fuzzing).

use std::{
    fs,
    path::{Path, PathBuf},
};

use btcfi_fuzz::{TARGETS, run, seeds};

/// The fuzz crate's directory, read at run time (a test binary built in another
/// checkout that shares the target dir would otherwise read that checkout's files).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Every file in `dir`. A directory that is not there is `None` (the local corpus and
/// artifacts are optional); one that cannot be read, or a file in it that cannot, fails
/// the test rather than counting as empty.
fn files(dir: &Path) -> Option<Vec<Vec<u8>>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path();
        if path.is_file() {
            out.push(fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())));
        }
    }
    Some(out)
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
    let root = root();
    let write = std::env::var_os("BTCFI_FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        if write {
            let dir = root.join("corpus").join(target);
            fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds(target).iter().enumerate() {
                fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
        // The committed regressions must be there: a replay of nothing passes on nothing.
        let dir = root.join("regressions").join(target);
        let regressions = files(&dir).unwrap_or_else(|| panic!("{target}: no regressions at {}", dir.display()));
        assert!(!regressions.is_empty(), "{target}: {} holds no inputs", dir.display());
        let local = ["corpus", "artifacts"].into_iter().filter_map(|sub| files(&root.join(sub).join(target)));
        for input in regressions.iter().chain(local.flatten().collect::<Vec<_>>().iter()) {
            run(target, input);
        }
    }
}
