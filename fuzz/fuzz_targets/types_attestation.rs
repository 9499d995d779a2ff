//! Fuzz target `types_attestation`: see [`btcfi_fuzz::types_attestation`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::types_attestation(data));
