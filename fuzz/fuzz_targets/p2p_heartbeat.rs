//! Fuzz target `p2p_heartbeat`: see [`btcfi_fuzz::p2p_heartbeat`] for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| btcfi_fuzz::p2p_heartbeat(data));
