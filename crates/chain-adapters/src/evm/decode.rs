//! Decoding of the bridge's burn events into attestation kinds.
//!
//! A log is accepted only if it decodes under the ABI *and* re-encodes to exactly
//! the bytes the chain holds (no dirty high bits in a `uint64` topic or word, no
//! trailing data), and if its fields pass the checks the contract also makes. Any
//! other log with a burn topic is refused with a reason, never dropped.

use super::bindings::IBridge;
use alloy::{
    primitives::{B256, U256},
    sol_types::SolEvent,
};
use btcfi_types::{AttestationKind, ChainId, EvmAddress, Sats};

/// Longest `btcScriptPubKey` accepted (the limit of the attestation encoding).
pub const MAX_SCRIPT_LEN: usize = 10_000;

/// The event signatures the source asks the node for.
pub fn burn_topics() -> [B256; 2] {
    [IBridge::BurnToBitcoin::SIGNATURE_HASH, IBridge::BurnToChain::SIGNATURE_HASH]
}

/// Why a burn log cannot be attested, with the amount when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub amount: Option<Sats>,
}

fn refuse(reason: impl Into<String>, amount: Option<Sats>) -> Refusal {
    Refusal { reason: reason.into(), amount }
}

fn check_amount(amount: u64) -> Result<Sats, Refusal> {
    let sats = Sats(amount);
    if amount == 0 {
        return Err(refuse("zero amount", Some(sats)));
    }
    if sats > Sats::MAX_MONEY {
        return Err(refuse(format!("amount {amount} sat exceeds 21M BTC"), Some(sats)));
    }
    Ok(sats)
}

fn canonical<E: SolEvent>(event: &E, topics: &[B256], data: &[u8]) -> Result<(), Refusal> {
    let re_topics: Vec<B256> = event.encode_topics().into_iter().map(|w| w.0).collect();
    if re_topics.as_slice() != topics {
        return Err(refuse("non-canonical topics (value out of range for its type)", None));
    }
    if event.encode_data().as_slice() != data {
        return Err(refuse("non-canonical ABI data (dirty padding or trailing bytes)", None));
    }
    Ok(())
}

/// Decodes a log of the bridge contract into what validators attest.
///
/// `source` is the chain the log was emitted on (an EVM-to-EVM burn towards the
/// same chain is refused).
pub fn decode_burn(source: ChainId, topics: &[B256], data: &[u8]) -> Result<AttestationKind, Refusal> {
    let Some(topic0) = topics.first() else {
        return Err(refuse("log without topics", None));
    };
    if *topic0 == IBridge::BurnToBitcoin::SIGNATURE_HASH {
        let ev = IBridge::BurnToBitcoin::decode_raw_log_validate(topics.iter().copied(), data)
            .map_err(|e| refuse(format!("undecodable BurnToBitcoin: {e}"), None))?;
        canonical(&ev, topics, data)?;
        let amount = check_amount(ev.amountSats)?;
        let script = ev.btcScriptPubKey.to_vec();
        if script.is_empty() {
            return Err(refuse("empty btcScriptPubKey", Some(amount)));
        }
        if script.len() > MAX_SCRIPT_LEN {
            return Err(refuse(format!("btcScriptPubKey of {} bytes is too long", script.len()), Some(amount)));
        }
        Ok(AttestationKind::PegOut { nonce: ev.nonce, amount, script_pubkey: script })
    } else if *topic0 == IBridge::BurnToChain::SIGNATURE_HASH {
        let ev = IBridge::BurnToChain::decode_raw_log_validate(topics.iter().copied(), data)
            .map_err(|e| refuse(format!("undecodable BurnToChain: {e}"), None))?;
        canonical(&ev, topics, data)?;
        let amount = check_amount(ev.amountSats)?;
        let dest = ChainId(ev.destChainId);
        if dest == ChainId::BITCOIN {
            return Err(refuse("BurnToChain towards chain id 0 (Bitcoin): use burnToBitcoin", Some(amount)));
        }
        if dest == source {
            return Err(refuse(format!("BurnToChain towards its own chain {dest}"), Some(amount)));
        }
        if ev.recipient.is_zero() {
            return Err(refuse("BurnToChain to the zero address", Some(amount)));
        }
        Ok(AttestationKind::EvmToEvm {
            nonce: ev.nonce,
            dest_chain: dest,
            recipient: EvmAddress(ev.recipient.into_array()),
            amount,
        })
    } else {
        Err(refuse(format!("not a burn event (topic0 {topic0})"), None))
    }
}

/// Human-readable revert reason: a bridge error by name, `Error(string)`, a panic
/// code, or the raw data.
pub fn decode_revert(data: &[u8]) -> String {
    use alloy::sol_types::SolInterface;
    if data.is_empty() {
        return "reverted without data".to_owned();
    }
    if let Ok(err) = IBridge::IBridgeErrors::abi_decode(data) {
        return format!("{err:?}");
    }
    // `Error(string)` and `Panic(uint256)`; anything else is shown raw.
    let standard = data.starts_with(&[0x08, 0xc3, 0x79, 0xa0]) || data.starts_with(&[0x4e, 0x48, 0x7b, 0x71]);
    match alloy::sol_types::decode_revert_reason(data) {
        Some(reason) if standard && !reason.is_empty() => reason,
        _ => format!("revert data 0x{}", hex::encode(data)),
    }
}

/// A `uint64` as the 32-byte topic word the contract emits.
pub fn nonce_topic(nonce: u64) -> B256 {
    B256::from(U256::from(nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Address, Bytes};
    use proptest::prelude::*;

    const SRC: ChainId = ChainId(31337);

    fn encode<E: SolEvent>(e: &E) -> (Vec<B256>, Vec<u8>) {
        (e.encode_topics().into_iter().map(|w| w.0).collect(), e.encode_data())
    }

    fn to_btc(nonce: u64, amount: u64, script: Vec<u8>) -> IBridge::BurnToBitcoin {
        IBridge::BurnToBitcoin {
            nonce,
            from: Address::repeat_byte(1),
            amountSats: amount,
            btcScriptPubKey: Bytes::from(script),
        }
    }

    fn to_chain(nonce: u64, dest: u64, recipient: Address, amount: u64) -> IBridge::BurnToChain {
        IBridge::BurnToChain { nonce, from: Address::repeat_byte(1), destChainId: dest, recipient, amountSats: amount }
    }

    #[test]
    fn decodes_both_burns() {
        let (t, d) = encode(&to_btc(7, 50_000, vec![0x51, 0x20, 1, 2]));
        assert_eq!(
            decode_burn(SRC, &t, &d),
            Ok(AttestationKind::PegOut { nonce: 7, amount: Sats(50_000), script_pubkey: vec![0x51, 0x20, 1, 2] })
        );
        assert_eq!(t[1], nonce_topic(7));
        let (t, d) = encode(&to_chain(8, 137, Address::repeat_byte(9), 1000));
        assert_eq!(
            decode_burn(SRC, &t, &d),
            Ok(AttestationKind::EvmToEvm {
                nonce: 8,
                dest_chain: ChainId(137),
                recipient: EvmAddress([9; 20]),
                amount: Sats(1000)
            })
        );
    }

    #[test]
    fn refuses_bad_payloads_with_reasons() {
        let (t, _) = encode(&to_chain(1, 137, Address::repeat_byte(9), 1000));
        let r = decode_burn(SRC, &t, &[1, 2, 3]).unwrap_err();
        assert!(r.reason.contains("undecodable BurnToChain"), "{}", r.reason);

        // A nonce topic with bits above 64: the contract cannot have emitted it.
        let (mut t, d) = encode(&to_btc(1, 10, vec![0x00]));
        t[1] = B256::repeat_byte(0xff);
        assert!(decode_burn(SRC, &t, &d).is_err());

        // Trailing bytes after the ABI payload.
        let (t, mut d) = encode(&to_btc(1, 10, vec![0x00]));
        d.extend_from_slice(&[0u8; 32]);
        assert!(decode_burn(SRC, &t, &d).unwrap_err().reason.contains("non-canonical"));

        let (t, d) = encode(&to_btc(1, 0, vec![0x00]));
        assert_eq!(decode_burn(SRC, &t, &d).unwrap_err().reason, "zero amount");
        let (t, d) = encode(&to_btc(1, 5, vec![]));
        assert_eq!(decode_burn(SRC, &t, &d).unwrap_err().amount, Some(Sats(5)));
        let (t, d) = encode(&to_btc(1, 5, vec![0; MAX_SCRIPT_LEN + 1]));
        assert!(decode_burn(SRC, &t, &d).unwrap_err().reason.contains("too long"));
        let (t, d) = encode(&to_chain(1, 0, Address::repeat_byte(9), 5));
        assert!(decode_burn(SRC, &t, &d).is_err());
        let (t, d) = encode(&to_chain(1, SRC.0, Address::repeat_byte(9), 5));
        assert!(decode_burn(SRC, &t, &d).unwrap_err().reason.contains("own chain"));
        let (t, d) = encode(&to_chain(1, 1, Address::ZERO, 5));
        assert!(decode_burn(SRC, &t, &d).unwrap_err().reason.contains("zero address"));
        let (t, d) = encode(&to_chain(1, 1, Address::repeat_byte(2), u64::MAX));
        assert!(decode_burn(SRC, &t, &d).unwrap_err().reason.contains("21M"));
        assert!(decode_burn(SRC, &[], &[]).is_err());
        assert!(decode_burn(SRC, &[B256::ZERO], &[]).unwrap_err().reason.contains("not a burn"));
        // Missing indexed topics.
        assert!(decode_burn(SRC, &t[..1], &d).is_err());
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn never_panics(which in 0usize..2, extra in proptest::collection::vec(any::<[u8; 32]>(), 0..4),
                        data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut topics = vec![burn_topics()[which]];
            topics.extend(extra.into_iter().map(B256::from));
            let _ = decode_burn(SRC, &topics, &data);
        }
    }
}
