//! What each fuzz target checks, shared by the libFuzzer binaries (`fuzz_targets/`,
//! nightly, via `scripts/fuzz.sh`) and the corpus-replay tests (`tests/replay.rs`,
//! stable, `cargo test --manifest-path fuzz/Cargo.toml`).
//!
//! Every check feeds arbitrary bytes to a decoder of bytes that come from peers (or,
//! for the deposit memo, from anyone who can make a Bitcoin transaction) and asserts:
//! no panic, and **canonical decoding**: whatever decodes re-encodes to exactly the
//! input, so two different byte strings never mean the same message (byte-identical
//! dedup and signature-over-bytes stay sound).

use btcfi_consensus::{
    Certificate, CertificateRequest, Epoch, Message, Signature, ValidatorIndex, ValidatorSignature, Vote,
};
use btcfi_p2p::{
    ChainHeights, Envelope, Heartbeat, MessageKind, RequestCodec,
    envelope::{HEADER_LEN, MAGIC, WIRE_VERSION},
};
use btcfi_types::{Attestation, AttestationKind, ChainId, DepositMemo, Digest, EventId, EvmAddress, Sats, TxHash};

/// Payload limit used by the envelope and frame targets: small, so the fuzzer also
/// explores the oversize paths.
pub const MAX_PAYLOAD: usize = 1024;

/// Names of all targets, as in `Cargo.toml`.
pub const TARGETS: [&str; 7] = [
    "p2p_envelope",
    "p2p_heartbeat",
    "p2p_request_frame",
    "types_attestation",
    "types_deposit_memo",
    "consensus_message",
    "release_proposal",
];

/// Runs the check of target `name` on `data`. Unknown names panic (a test bug).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "p2p_envelope" => p2p_envelope(data),
        "p2p_heartbeat" => p2p_heartbeat(data),
        "p2p_request_frame" => p2p_request_frame(data),
        "types_attestation" => types_attestation(data),
        "types_deposit_memo" => types_deposit_memo(data),
        "consensus_message" => consensus_message(data),
        "release_proposal" => release_proposal(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// `btcfi_release::Proposal::decode` (a release proposal from the validator that
/// proposes it): no panic, canonical, and what decodes can be validated and hashed.
pub fn release_proposal(data: &[u8]) {
    let Ok(p) = btcfi_release::Proposal::decode(data) else { return };
    assert_eq!(p.encode(), data, "release proposal decoding is not canonical");
    let _ = p.fee();
    let _ = btcfi_release::signed_vsize(&p.tx);
    let _ = btcfi_release::sighashes(&p.tx, &p.prevouts);
}

/// `btcfi_p2p::Envelope::decode` (every gossip message and request body), then the
/// heartbeat body when the kind says heartbeat.
pub fn p2p_envelope(data: &[u8]) {
    match Envelope::decode(data, MAX_PAYLOAD) {
        Ok(envelope) => {
            assert!(envelope.payload.len() <= MAX_PAYLOAD);
            assert_eq!(envelope.encode(), data, "envelope decoding is not canonical");
            if envelope.kind == MessageKind::Heartbeat {
                p2p_heartbeat(&envelope.payload);
            }
        }
        Err(_) => {
            // A failure must not depend on the limit when the payload fits anyway.
            if data.len() <= HEADER_LEN + MAX_PAYLOAD {
                assert!(Envelope::decode(data, usize::MAX).is_err());
            }
        }
    }
}

/// `btcfi_p2p::Heartbeat::decode`.
pub fn p2p_heartbeat(data: &[u8]) {
    if let Ok(heartbeat) = Heartbeat::decode(data) {
        assert_eq!(heartbeat.encode(), data, "heartbeat decoding is not canonical");
    }
}

/// The request-response frame reader (`len u32 | body`), then the envelope in it.
pub fn p2p_request_frame(data: &[u8]) {
    let codec = RequestCodec::new(MAX_PAYLOAD, None);
    let mut io = futures::io::Cursor::new(data);
    if let Ok(body) = futures::executor::block_on(codec.read_frame(&mut io)) {
        assert!(body.len() <= codec.max_frame());
        assert_eq!(data.get(4..4 + body.len()), Some(body.as_slice()));
        p2p_envelope(&body);
    }
}

/// `btcfi_types::Attestation::decode` (attestations travel inside certificates and
/// catch-up answers).
pub fn types_attestation(data: &[u8]) {
    if let Ok(attestation) = Attestation::decode(data) {
        assert_eq!(attestation.encode(), data, "attestation decoding is not canonical");
    }
}

/// `btcfi_types::DepositMemo::parse` (OP_RETURN payloads anyone can write).
pub fn types_deposit_memo(data: &[u8]) {
    if let Ok(memo) = DepositMemo::parse(data) {
        assert_eq!(memo.encode().as_slice(), data, "memo parsing is not canonical");
    }
}

/// `btcfi_consensus::Message::decode` (votes, certificates, catch-up requests), and the
/// typed `Vote::decode` / `Certificate::decode` agree with it.
pub fn consensus_message(data: &[u8]) {
    let message = Message::decode(data);
    if let Ok(message) = &message {
        assert_eq!(message.encode(), data, "consensus message decoding is not canonical");
    }
    match Vote::decode(data) {
        Ok(vote) => assert_eq!(message.as_ref().ok(), Some(&Message::Vote(vote))),
        Err(_) => assert!(!matches!(message, Ok(Message::Vote(_)))),
    }
    match Certificate::decode(data) {
        Ok(certificate) => assert_eq!(message.as_ref().ok(), Some(&Message::Certificate(certificate))),
        Err(_) => assert!(!matches!(message, Ok(Message::Certificate(_)))),
    }
}

/// Valid inputs for target `name`, to start the fuzzer deep in the format.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let event = EventId::new(ChainId(1), TxHash([0x11; 32]), 3);
    let attestations = [
        Attestation {
            event,
            kind: AttestationKind::PegIn {
                dest_chain: ChainId(137),
                recipient: EvmAddress([0x22; 20]),
                amount: Sats(50_000),
            },
        },
        Attestation {
            event,
            kind: AttestationKind::PegOut { nonce: 7, amount: Sats(10_000), script_pubkey: vec![0x51, 0x20, 0xab] },
        },
        Attestation {
            event,
            kind: AttestationKind::EvmToEvm {
                nonce: 9,
                dest_chain: ChainId(56),
                recipient: EvmAddress([0x33; 20]),
                amount: Sats(1),
            },
        },
    ];
    let vote = Vote {
        epoch: Epoch(1),
        event,
        digest: Digest([0x44; 32]),
        validator: ValidatorIndex(2),
        signature: Signature(vec![0x55; 64]),
    };
    let certificate = Certificate {
        epoch: Epoch(1),
        event,
        digest: Digest([0x44; 32]),
        signatures: (0..3)
            .map(|i| ValidatorSignature { validator: ValidatorIndex(i), signature: Signature(vec![i as u8; 64]) })
            .collect(),
    };
    let request =
        CertificateRequest { epoch: Epoch(1), events: vec![event, EventId::new(ChainId(0), TxHash([9; 32]), 0)] };
    let consensus = vec![
        Message::Vote(vote).encode(),
        Message::Certificate(certificate).encode(),
        Message::CertificateRequest(request).encode(),
    ];
    let heartbeats = vec![
        Heartbeat { version: "btcfi-node/0.1.0".into(), chains: vec![ChainHeights::from((0, 850_000, 849_994))] }
            .encode(),
        Heartbeat::default().encode(),
    ];
    let envelopes: Vec<Vec<u8>> = MessageKind::ALL
        .iter()
        .map(|kind| match kind {
            MessageKind::Heartbeat => Envelope::new(*kind, heartbeats[0].clone()).encode(),
            MessageKind::Observation | MessageKind::Certificate => Envelope::new(*kind, consensus[0].clone()).encode(),
            _ => Envelope::new(*kind, b"opaque".to_vec()).encode(),
        })
        .chain([MAGIC.to_vec(), [&MAGIC[..], &[WIRE_VERSION]].concat()])
        .collect();
    match name {
        "p2p_envelope" => envelopes,
        "p2p_heartbeat" => heartbeats,
        "p2p_request_frame" => envelopes
            .iter()
            .map(|e| [&(e.len() as u32).to_be_bytes()[..], e].concat())
            .chain([u32::MAX.to_be_bytes().to_vec()])
            .collect(),
        "types_attestation" => attestations.iter().map(Attestation::encode).collect(),
        "types_deposit_memo" => {
            vec![DepositMemo { dest_chain: ChainId(1), recipient: EvmAddress([0x66; 20]) }.encode().to_vec()]
        }
        "consensus_message" => consensus,
        "release_proposal" => release_seeds(),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Encoded release proposals: one with change, one paying two peg-outs from two inputs.
fn release_seeds() -> Vec<Vec<u8>> {
    use btcfi_release::{Payout, Policy, build};
    use std::str::FromStr;
    let script = |b: u8, len: u8| {
        let mut s = vec![if len == 32 { 0x51 } else { 0x00 }, len];
        s.extend(std::iter::repeat_n(b, usize::from(len)));
        bitcoin::ScriptBuf::from(s)
    };
    let policy =
        Policy::new(script(7, 32), Sats(2_000), 1, 100);
    let outpoint = |i: u8| bitcoin::OutPoint {
        txid: bitcoin::Txid::from_str(&format!("{i:02x}").repeat(32)).expect("txid"),
        vout: u32::from(i),
    };
    let payout = |i: u8, sats: u64| Payout {
        event: EventId::new(ChainId(1), TxHash([i; 32]), 0),
        amount: Sats(sats),
        script: script(i, 20),
    };
    let one = build(&[(outpoint(1), Sats(100_000))], &[payout(1, 50_000)], 2, &policy).expect("seed");
    let two = build(
        &[(outpoint(2), Sats(40_000)), (outpoint(3), Sats(30_000))],
        &[payout(2, 30_000), payout(3, 30_000)],
        3,
        &policy,
    )
    .expect("seed");
    vec![one.encode(), two.encode()]
}
