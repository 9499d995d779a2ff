//! Fuzz target `consensus_message`: see [`btcfi_fuzz::consensus_message`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::consensus_message(data));
