//! Fuzz target `types_deposit_memo`: see [`btcfi_fuzz::types_deposit_memo`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::types_deposit_memo(data));
