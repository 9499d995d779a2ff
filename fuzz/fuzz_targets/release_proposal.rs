//! Fuzz target `release_proposal`: see [`btcfi_fuzz::release_proposal`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::release_proposal(data));
