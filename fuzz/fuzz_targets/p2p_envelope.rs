//! Fuzz target `p2p_envelope`: see [`btcfi_fuzz::p2p_envelope`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::p2p_envelope(data));
