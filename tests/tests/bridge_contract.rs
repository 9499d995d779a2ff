//! The bridge contract against a real anvil: FROST(secp256k1, SHA-256) signatures from
//! `frost-secp256k1` (trusted-dealer keys, three of four signers) mint exactly once and
//! nowhere else; rotation, pause and burns behave; peg-outs go only to standard Bitcoin
//! templates and at least the peg-out fee plus that template's dust limit; EVM burns go
//! only to destination chains the group key made known; rotation while paused needs the
//! guardian's approval of the new key; the compiled ABI matches the Rust bindings
//! (`btcfi_chain_adapters::evm::bindings`) so neither side can drift.
//!
//! Gas figures are printed (`cargo test ... -- --nocapture` shows them).

use alloy::{
    json_abi::JsonAbi,
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256, hex, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest},
    sol_types::{SolCall, SolError, SolEvent, SolEventInterface, SolValue},
};
use bitcoin::{
    PubkeyHash, ScriptBuf, ScriptHash, WPubkeyHash, WScriptHash, WitnessProgram, WitnessVersion, hashes::Hash,
};
use btcfi_chain_adapters::evm::bindings::{
    IBridge::{self, IBridgeErrors, IBridgeInstance},
    IWrappedBTC::{self, IWrappedBTCErrors, IWrappedBTCInstance},
};
use btcfi_signer::evm::{
    EvmSignature, batch_message, merkle_proofs, merkle_root, mint_leaf, mint_message, rotate_message,
};
use btcfi_testkit::{
    Anvil,
    contracts::{BridgeConfig, Deployed, KeyedBridge, abi_json, bytecode, deploy_bridge, deploy_bridge_with, reverts},
    frost::{DealerKey, TestRng},
};
use std::collections::BTreeSet;

const CHAIN_ID: u64 = 1_337_001;
/// The secp256k1 base field prime p and group order n.
const P: U256 = U256::from_be_bytes(hex!("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f"));
const N: U256 = U256::from_be_bytes(hex!("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"));

// ------------------------------------------------------------------ fixture

const DEPLOYER: usize = 0;
const GUARDIAN: usize = 1;
// KeyedBridge deploys from dev account 0 with dev account 1 as guardian.
const _: () = assert!(DEPLOYER == 0 && GUARDIAN == 1);
const USER: usize = 2;
const RELAYER: usize = 3;

/// The fixture's peg-out fee (the validators' default `bitcoin.peg_out_fee`).
const PEG_OUT_FEE: u64 = 2_000;
/// A destination chain the fixture's bridge knows from deployment (BSC's id).
const KNOWN_CHAIN: u64 = 56;

/// The fixture's deployment configuration.
fn fixture_config() -> BridgeConfig {
    BridgeConfig { peg_out_fee: PEG_OUT_FEE, known_chains: vec![KNOWN_CHAIN, 31_337] }
}
struct Fixture {
    anvil: Anvil,
    deployed: Deployed,
    key: DealerKey,
    rng: TestRng,
}

impl Fixture {
    /// anvil, a bridge deployed by dev account 0 with dev account 1 as guardian and
    /// [`fixture_config`], and a group key installed with `setInitialKey`.
    async fn new(seed: u64) -> Self {
        let KeyedBridge { anvil, deployed, key, rng } =
            KeyedBridge::start_with(CHAIN_ID, seed, 4, 3, &fixture_config()).await.unwrap();
        Self { anvil, deployed, key, rng }
    }

    /// The bridge, as seen by dev account `i`.
    fn bridge(&self, i: usize) -> IBridgeInstance<DynProvider> {
        IBridge::new(self.deployed.bridge, wallet(&self.anvil, i))
    }

    fn token(&self) -> IWrappedBTCInstance<DynProvider> {
        IWrappedBTC::new(self.deployed.token, self.anvil.provider())
    }

    fn mint_message(&self, event_id: B256, recipient: Address, amount: u64) -> [u8; 32] {
        mint_message(CHAIN_ID, self.deployed.bridge, event_id.0, recipient, amount)
    }

    fn sign(&mut self, message: [u8; 32]) -> EvmSignature {
        self.key.sign(&mut self.rng, message)
    }

    /// Mints through the relayer account with a valid signature; returns the receipt.
    async fn mint(&mut self, event_id: B256, recipient: Address, amount: u64) -> TransactionReceipt {
        let sig = self.sign(self.mint_message(event_id, recipient, amount));
        send(self.bridge(RELAYER).mint(event_id, recipient, amount, sig.rx, sig.ry, sig.z)).await
    }

    async fn balance(&self, who: Address) -> U256 {
        self.token().balanceOf(who).call().await.unwrap()
    }
}

/// A provider that signs as dev account `i` and asks the node for the nonce of every
/// transaction. (`ProviderBuilder::new()` caches nonces, and a send that fails at gas
/// estimation still consumes one: the next transaction would wait in the pool forever.)
fn wallet(anvil: &Anvil, i: usize) -> DynProvider {
    ProviderBuilder::default()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(anvil.dev_signer(i))
        .connect_http(anvil.url().parse().unwrap())
        .erased()
}

/// Sends a call, waits for its receipt, requires success.
async fn send<D: alloy::contract::CallDecoder>(
    call: alloy::contract::CallBuilder<&DynProvider, D>,
) -> TransactionReceipt {
    let receipt = call.send().await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status(), "transaction reverted: {receipt:?}");
    receipt
}

/// The result of a view call: its value, or the bridge error it reverted with.
async fn view<D: alloy::contract::CallDecoder>(
    call: alloy::contract::CallBuilder<&DynProvider, D>,
) -> Result<D::CallOutput, IBridgeErrors> {
    call.call().await.map_err(|e| {
        e.as_decoded_interface_error::<IBridgeErrors>().unwrap_or_else(|| panic!("not a bridge error: {e}"))
    })
}

fn events<E: SolEvent>(receipt: &TransactionReceipt) -> Vec<E> {
    receipt.inner.logs().iter().filter_map(|log| log.log_decode::<E>().ok()).map(|log| log.inner.data).collect()
}

fn invalid_signature() -> IBridgeErrors {
    IBridgeErrors::InvalidSignature(IBridge::InvalidSignature {})
}

fn invalid_script() -> IBridgeErrors {
    IBridgeErrors::InvalidScript(IBridge::InvalidScript {})
}

fn below_minimum(minimum: u64) -> IBridgeErrors {
    IBridgeErrors::AmountBelowMinimum(IBridge::AmountBelowMinimum { minimum })
}

fn unknown_chain(chain_id: u64) -> IBridgeErrors {
    IBridgeErrors::UnknownChain(IBridge::UnknownChain { chainId: chain_id })
}

/// The message the group key signs to make `dest` a known (`enabled`) or unknown
/// destination of the bridge at `bridge` on chain `chain_id`, at chain-list nonce
/// `nonce`; built independently of the contract:
/// `keccak256(abi.encode(keccak256("BTCFI-CHAIN-v1"), chainid, bridge, uint64 nonce, uint64 dest, bool enabled))`.
fn known_chain_message(chain_id: u64, bridge: Address, nonce: u64, dest: u64, enabled: bool) -> [u8; 32] {
    let tag = keccak256(b"BTCFI-CHAIN-v1");
    keccak256((tag, U256::from(chain_id), bridge, nonce, dest, enabled).abi_encode()).0
}

/// One script of each standard template, built by the `bitcoin` crate.
fn standard_scripts() -> [(&'static str, ScriptBuf, u64); 5] {
    [
        ("P2PKH", ScriptBuf::new_p2pkh(&PubkeyHash::from_byte_array([0x11; 20])), 546),
        ("P2SH", ScriptBuf::new_p2sh(&ScriptHash::from_byte_array([0x22; 20])), 540),
        ("P2WPKH", ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([0x33; 20])), 294),
        ("P2WSH", ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array([0x44; 32])), 330),
        ("P2TR", ScriptBuf::new_witness_program(&WitnessProgram::new(WitnessVersion::V1, &[0x55; 32]).unwrap()), 330),
    ]
}

/// Whether the `bitcoin` crate sees `script` as one of the five templates the bridge
/// pays (the oracle for the contract's template matching).
fn is_standard_template(script: &bitcoin::Script) -> bool {
    script.is_p2pkh() || script.is_p2sh() || script.is_p2wpkh() || script.is_p2wsh() || script.is_p2tr()
}

fn bytes(script: &[u8]) -> Bytes {
    Bytes::copy_from_slice(script)
}

// ------------------------------------------------------------------ tests

#[test]
fn compiled_abi_has_every_selector_of_the_rust_bindings() {
    let bridge: JsonAbi = serde_json::from_value(abi_json("Bridge").unwrap()).unwrap();
    let token: JsonAbi = serde_json::from_value(abi_json("WrappedBTC").unwrap()).unwrap();

    let functions = |abi: &JsonAbi| abi.functions().map(|f| f.selector().0).collect::<BTreeSet<_>>();
    let errors = |abi: &JsonAbi| abi.errors().map(|e| e.selector().0).collect::<BTreeSet<_>>();
    let events = |abi: &JsonAbi| abi.events().map(|e| e.selector().0).collect::<BTreeSet<_>>();

    for selector in IBridge::IBridgeCalls::SELECTORS {
        assert!(functions(&bridge).contains(selector), "Bridge.abi lacks function {}", hex::encode(selector));
    }
    for selector in IBridge::IBridgeErrors::SELECTORS {
        assert!(errors(&bridge).contains(selector), "Bridge.abi lacks error {}", hex::encode(selector));
    }
    for topic in IBridge::IBridgeEvents::SELECTORS {
        assert!(events(&bridge).contains(topic), "Bridge.abi lacks event {}", hex::encode(topic));
    }
    for selector in IWrappedBTC::IWrappedBTCCalls::SELECTORS {
        assert!(functions(&token).contains(selector), "WrappedBTC.abi lacks function {}", hex::encode(selector));
    }
    for topic in IWrappedBTC::IWrappedBTCEvents::SELECTORS {
        assert!(events(&token).contains(topic), "WrappedBTC.abi lacks event {}", hex::encode(topic));
    }
    // Sanity: the comparison is not vacuous.
    assert!(functions(&bridge).contains(&IBridge::mintCall::SELECTOR));
    assert!(events(&bridge).contains(&IBridge::BurnToBitcoin::SIGNATURE_HASH.0));
}

#[tokio::test]
async fn contract_messages_equal_the_rust_signer_messages() {
    let f = Fixture::new(1).await;
    let bridge = f.bridge(RELAYER);
    let (event_id, recipient) = (B256::repeat_byte(0xe1), Address::repeat_byte(0x5a));
    let onchain = bridge.mintMessage(event_id, recipient, 123_456_789).call().await.unwrap();
    assert_eq!(onchain.0, f.mint_message(event_id, recipient, 123_456_789));

    let (nx, ny) = (U256::from(11u64), U256::MAX - U256::from(3u64));
    let onchain = bridge.rotateMessage(nx, ny).call().await.unwrap();
    assert_eq!(onchain.0, rotate_message(CHAIN_ID, f.deployed.bridge, 0, nx, ny));

    for (dest, enabled) in [(137u64, true), (KNOWN_CHAIN, false), (u64::MAX, true)] {
        let onchain = bridge.knownChainMessage(dest, enabled).call().await.unwrap();
        assert_eq!(onchain.0, known_chain_message(CHAIN_ID, f.deployed.bridge, 0, dest, enabled));
    }

    let key = bridge.groupKey().call().await.unwrap();
    assert_eq!((key.px, key.py), (f.key.px, f.key.py));
    assert_eq!(bridge.guardian().call().await.unwrap(), f.anvil.dev_address(GUARDIAN));
    assert_eq!(bridge.token().call().await.unwrap(), f.deployed.token);

    let token = f.token();
    assert_eq!(token.name().call().await.unwrap(), "Wrapped BTC (btcfi)");
    assert_eq!(token.symbol().call().await.unwrap(), "btcfiBTC");
    assert_eq!(token.decimals().call().await.unwrap(), 8);
    assert_eq!(token.bridge().call().await.unwrap(), f.deployed.bridge);
    assert_eq!(token.totalSupply().call().await.unwrap(), U256::ZERO);
}

#[tokio::test]
async fn a_valid_signature_mints_exactly_once() {
    let mut f = Fixture::new(2).await;
    let (event_id, recipient, amount) = (B256::repeat_byte(0x01), f.anvil.dev_address(USER), 150_000_000u64);

    let sig = f.sign(f.mint_message(event_id, recipient, amount));
    let receipt = send(f.bridge(RELAYER).mint(event_id, recipient, amount, sig.rx, sig.ry, sig.z)).await;
    println!("gas: whole mint transaction (receipt gasUsed, first mint) = {}", receipt.gas_used);
    gas_within("first mint (a new holder)", receipt.gas_used, 112_000);

    assert_eq!(f.balance(recipient).await, U256::from(amount));
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(amount));
    assert!(f.bridge(RELAYER).consumed(event_id).call().await.unwrap());
    assert_eq!(
        events::<IBridge::Minted>(&receipt),
        vec![IBridge::Minted { eventId: event_id, recipient, amountSats: amount }]
    );
    let transfers = events::<IWrappedBTC::Transfer>(&receipt);
    assert_eq!(
        transfers,
        vec![IWrappedBTC::Transfer { from: Address::ZERO, to: recipient, value: U256::from(amount) }]
    );

    // The same signature, and a fresh signature on the same event, both replay.
    let replay = IBridgeErrors::AlreadyConsumed(IBridge::AlreadyConsumed { eventId: event_id });
    reverts(f.bridge(RELAYER).mint(event_id, recipient, amount, sig.rx, sig.ry, sig.z), replay.clone()).await;
    let again = f.sign(f.mint_message(event_id, recipient, amount));
    reverts(f.bridge(USER).mint(event_id, recipient, amount, again.rx, again.ry, again.z), replay).await;
    assert_eq!(f.balance(recipient).await, U256::from(amount));
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(amount));

    // A second event mints on top.
    let receipt = f.mint(B256::repeat_byte(0x02), recipient, 1).await;
    println!("gas: whole mint transaction (receipt gasUsed, second mint) = {}", receipt.gas_used);
    // A mint to a holder, before batched mints were added to the contract: never worse.
    assert!(receipt.gas_used <= 75_593, "a single mint costs {} gas, more than 75,593", receipt.gas_used);
    assert_eq!(f.balance(recipient).await, U256::from(amount + 1));
}

#[tokio::test]
async fn mint_rejects_every_signature_that_is_not_for_exactly_this_mint() {
    let mut f = Fixture::new(3).await;
    let (event_id, recipient, amount) = (B256::repeat_byte(0x0e), f.anvil.dev_address(USER), 50_000u64);
    let bridge = f.bridge(RELAYER);
    let message = f.mint_message(event_id, recipient, amount);
    let good = f.sign(message);

    // Another group key signing the right message.
    let other_key = DealerKey::generate(&mut f.rng, 4, 3);
    let foreign = other_key.sign(&mut f.rng, message);
    reverts(bridge.mint(event_id, recipient, amount, foreign.rx, foreign.ry, foreign.z), invalid_signature()).await;

    // A tampered field.
    reverts(bridge.mint(event_id, recipient, amount + 1, good.rx, good.ry, good.z), invalid_signature()).await;
    reverts(bridge.mint(event_id, f.anvil.dev_address(RELAYER), amount, good.rx, good.ry, good.z), invalid_signature())
        .await;
    reverts(bridge.mint(B256::repeat_byte(0x0f), recipient, amount, good.rx, good.ry, good.z), invalid_signature())
        .await;

    // A signature for the same mint on another chain.
    let other_chain = f.sign(mint_message(CHAIN_ID + 1, f.deployed.bridge, event_id.0, recipient, amount));
    reverts(
        bridge.mint(event_id, recipient, amount, other_chain.rx, other_chain.ry, other_chain.z),
        invalid_signature(),
    )
    .await;

    // A signature for the same mint on another bridge (same key, same chain): it is
    // valid there, and only there.
    let second =
        deploy_bridge(&f.anvil.url(), &f.anvil.dev_key(DEPLOYER), f.anvil.dev_address(GUARDIAN)).await.unwrap();
    let second_bridge = IBridge::new(second.bridge, wallet(&f.anvil, DEPLOYER));
    send(second_bridge.setInitialKey(f.key.px, f.key.py)).await;
    let for_second = f.sign(mint_message(CHAIN_ID, second.bridge, event_id.0, recipient, amount));
    reverts(bridge.mint(event_id, recipient, amount, for_second.rx, for_second.ry, for_second.z), invalid_signature())
        .await;
    send(second_bridge.mint(event_id, recipient, amount, for_second.rx, for_second.ry, for_second.z)).await;

    // Malformed signatures.
    let off_curve = good.ry ^ U256::from(2u64);
    reverts(bridge.mint(event_id, recipient, amount, good.rx, off_curve, good.z), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, good.rx, P - good.ry, good.z), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, U256::ZERO, U256::ZERO, good.z), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, good.rx, good.ry, U256::ZERO), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, good.rx, good.ry, N), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, good.rx, good.ry, U256::MAX), invalid_signature()).await;
    reverts(bridge.mint(event_id, recipient, amount, good.rx, good.ry, N - good.z), invalid_signature()).await;

    // Invalid requests are refused before the signature is looked at.
    reverts(
        bridge.mint(event_id, Address::ZERO, amount, good.rx, good.ry, good.z),
        IBridgeErrors::InvalidRecipient(IBridge::InvalidRecipient {}),
    )
    .await;
    reverts(
        bridge.mint(event_id, recipient, 0, good.rx, good.ry, good.z),
        IBridgeErrors::InvalidAmount(IBridge::InvalidAmount {}),
    )
    .await;

    // Nothing minted here; the good signature still works.
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::ZERO);
    send(bridge.mint(event_id, recipient, amount, good.rx, good.ry, good.z)).await;
    assert_eq!(f.balance(recipient).await, U256::from(amount));
}

#[tokio::test]
async fn the_initial_key_is_set_once_by_the_deployer_and_must_be_a_usable_point() {
    let mut rng = TestRng::new(4);
    let key = DealerKey::generate(&mut rng, 4, 3);
    let anvil = Anvil::start(CHAIN_ID).await.unwrap();
    let deployed = deploy_bridge(&anvil.url(), &anvil.dev_key(DEPLOYER), anvil.dev_address(GUARDIAN)).await.unwrap();
    let as_deployer = IBridge::new(deployed.bridge, wallet(&anvil, DEPLOYER));
    let as_user = IBridge::new(deployed.bridge, wallet(&anvil, USER));

    // No key: nothing mints.
    let message = mint_message(CHAIN_ID, deployed.bridge, [1; 32], anvil.dev_address(USER), 10);
    let sig = key.sign(&mut rng, message);
    reverts(
        as_user.mint(B256::repeat_byte(1), anvil.dev_address(USER), 10, sig.rx, sig.ry, sig.z),
        IBridgeErrors::KeyNotSet(IBridge::KeyNotSet {}),
    )
    .await;

    let invalid_key = || IBridgeErrors::InvalidKey(IBridge::InvalidKey {});
    reverts(as_user.setInitialKey(key.px, key.py), IBridgeErrors::NotDeployer(IBridge::NotDeployer {})).await;
    reverts(as_deployer.setInitialKey(key.px, key.py ^ U256::from(1u64)), invalid_key()).await;
    reverts(as_deployer.setInitialKey(U256::ZERO, U256::ZERO), invalid_key()).await;
    // (1, y) is on the curve; (1 + p, y) satisfies the equation mod p but is not reduced.
    let y1 = U256::from_be_bytes(hex!("4218f20ae6c646b363db68605822fb14264ca8d2587fdd6fbc750d587e76a7ee"));
    reverts(as_deployer.setInitialKey(U256::from(1u64) + P, y1), invalid_key()).await;
    // (n, y) is on the curve but x >= n, which the ecrecover-based verifier cannot use.
    let yn = U256::from_be_bytes(hex!("98f66641cb0ae1776b463ebdee3d77fe2658f021db48e2c8ac7ab4c92f83621e"));
    reverts(as_deployer.setInitialKey(N, yn), invalid_key()).await;

    send(as_deployer.setInitialKey(key.px, key.py)).await;
    reverts(as_deployer.setInitialKey(key.px, key.py), IBridgeErrors::KeyAlreadySet(IBridge::KeyAlreadySet {})).await;
    reverts(as_deployer.setInitialKey(U256::from(1u64), y1), IBridgeErrors::KeyAlreadySet(IBridge::KeyAlreadySet {}))
        .await;
    send(as_user.mint(B256::repeat_byte(1), anvil.dev_address(USER), 10, sig.rx, sig.ry, sig.z)).await;
}

#[tokio::test]
async fn rotation_needs_the_current_key_and_retires_it() {
    let mut f = Fixture::new(5).await;
    let bridge = f.bridge(RELAYER);
    let new_key = DealerKey::generate(&mut f.rng, 4, 3);

    // Signed by a key that is not the current one (the new key itself).
    let message = rotate_message(CHAIN_ID, f.deployed.bridge, 0, new_key.px, new_key.py);
    let by_new = new_key.sign(&mut f.rng, message);
    reverts(bridge.rotateKey(new_key.px, new_key.py, by_new.rx, by_new.ry, by_new.z), invalid_signature()).await;
    // Signed by the current key, but for another nonce or another new key.
    let wrong_nonce = f.sign(rotate_message(CHAIN_ID, f.deployed.bridge, 1, new_key.px, new_key.py));
    reverts(
        bridge.rotateKey(new_key.px, new_key.py, wrong_nonce.rx, wrong_nonce.ry, wrong_nonce.z),
        invalid_signature(),
    )
    .await;
    let good = f.sign(message);
    reverts(bridge.rotateKey(f.key.px, f.key.py, good.rx, good.ry, good.z), invalid_signature()).await;
    // Not a point.
    let bad_point = new_key.py ^ U256::from(1u64);
    reverts(
        bridge.rotateKey(new_key.px, bad_point, good.rx, good.ry, good.z),
        IBridgeErrors::InvalidKey(IBridge::InvalidKey {}),
    )
    .await;

    let receipt = send(bridge.rotateKey(new_key.px, new_key.py, good.rx, good.ry, good.z)).await;
    println!("gas: whole rotateKey transaction (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("rotateKey", receipt.gas_used, 68_000);
    assert_eq!(
        events::<IBridge::KeyRotated>(&receipt),
        vec![IBridge::KeyRotated { px: new_key.px, py: new_key.py, rotationNonce: 0 }]
    );
    let key = bridge.groupKey().call().await.unwrap();
    assert_eq!((key.px, key.py), (new_key.px, new_key.py));
    assert_eq!(bridge.rotationNonce().call().await.unwrap(), 1);

    // The rotation signature does not replay (the nonce moved), even back and forth.
    reverts(bridge.rotateKey(new_key.px, new_key.py, good.rx, good.ry, good.z), invalid_signature()).await;

    // The old key no longer mints; the new one does.
    let (event_id, recipient) = (B256::repeat_byte(0x33), f.anvil.dev_address(USER));
    let message = f.mint_message(event_id, recipient, 7);
    let old = f.sign(message);
    reverts(bridge.mint(event_id, recipient, 7, old.rx, old.ry, old.z), invalid_signature()).await;
    let new = new_key.sign(&mut f.rng, message);
    send(bridge.mint(event_id, recipient, 7, new.rx, new.ry, new.z)).await;

    // The next rotation must be signed by the new key with nonce 1.
    let back = new_key.sign(&mut f.rng, rotate_message(CHAIN_ID, f.deployed.bridge, 1, f.key.px, f.key.py));
    let receipt = send(bridge.rotateKey(f.key.px, f.key.py, back.rx, back.ry, back.z)).await;
    assert_eq!(events::<IBridge::KeyRotated>(&receipt)[0].rotationNonce, 1);
    assert_eq!(bridge.rotationNonce().call().await.unwrap(), 2);
}

#[tokio::test]
async fn the_guardian_pauses_mint_and_burns() {
    let mut f = Fixture::new(6).await;
    let user = f.anvil.dev_address(USER);
    f.mint(B256::repeat_byte(0x61), user, 10_000).await;
    let p2tr = Bytes::from([&[0x51, 0x20][..], &[0x77; 32]].concat());

    let not_guardian = || IBridgeErrors::NotGuardian(IBridge::NotGuardian {});
    reverts(f.bridge(DEPLOYER).pause(), not_guardian()).await;
    reverts(f.bridge(USER).pause(), not_guardian()).await;

    let receipt = send(f.bridge(GUARDIAN).pause()).await;
    assert_eq!(events::<IBridge::Paused>(&receipt), vec![IBridge::Paused { guardian: f.anvil.dev_address(GUARDIAN) }]);
    assert!(f.bridge(USER).paused().call().await.unwrap());

    let paused = || IBridgeErrors::BridgePaused(IBridge::BridgePaused {});
    let (event_id, amount) = (B256::repeat_byte(0x62), 5u64);
    let sig = f.sign(f.mint_message(event_id, user, amount));
    reverts(f.bridge(RELAYER).mint(event_id, user, amount, sig.rx, sig.ry, sig.z), paused()).await;
    reverts(f.bridge(USER).burnToBitcoin(3_000, p2tr.clone()), paused()).await;
    reverts(f.bridge(USER).burnToChain(KNOWN_CHAIN, user, 10), paused()).await;
    reverts(f.bridge(USER).unpause(), not_guardian()).await;

    let receipt = send(f.bridge(GUARDIAN).unpause()).await;
    assert_eq!(
        events::<IBridge::Unpaused>(&receipt),
        vec![IBridge::Unpaused { guardian: f.anvil.dev_address(GUARDIAN) }]
    );
    send(f.bridge(RELAYER).mint(event_id, user, amount, sig.rx, sig.ry, sig.z)).await;
    send(f.bridge(USER).burnToBitcoin(3_000, p2tr)).await;
    send(f.bridge(USER).burnToChain(KNOWN_CHAIN, user, 10)).await;
    assert_eq!(f.balance(user).await, U256::from(10_000 + amount - 3_000 - 10));
}

#[tokio::test]
async fn burns_need_no_approval_and_share_one_nonce_sequence() {
    let mut f = Fixture::new(7).await;
    let user = f.anvil.dev_address(USER);
    f.mint(B256::repeat_byte(0x71), user, 100_000).await;
    let as_user = f.bridge(USER);
    let script = Bytes::from(hex::decode("0014751e76e8199196d454941c45d1b3a323f1433bd6").unwrap());
    let dest = f.anvil.dev_address(RELAYER);

    // The return value is the nonce, before and after sending.
    assert_eq!(as_user.burnToBitcoin(3_000, script.clone()).call().await.unwrap(), 0);
    let receipt = send(as_user.burnToBitcoin(3_000, script.clone())).await;
    println!("gas: burnToBitcoin (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("burnToBitcoin", receipt.gas_used, 66_000);
    assert_eq!(
        events::<IBridge::BurnToBitcoin>(&receipt),
        vec![IBridge::BurnToBitcoin { nonce: 0, from: user, amountSats: 3_000, btcScriptPubKey: script.clone() }]
    );
    assert_eq!(
        events::<IWrappedBTC::Transfer>(&receipt),
        vec![IWrappedBTC::Transfer { from: user, to: Address::ZERO, value: U256::from(3_000u64) }]
    );

    let receipt = send(as_user.burnToChain(56, dest, 2_000)).await;
    println!("gas: burnToChain (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("burnToChain", receipt.gas_used, 50_000);
    assert_eq!(
        events::<IBridge::BurnToChain>(&receipt),
        vec![IBridge::BurnToChain { nonce: 1, from: user, destChainId: 56, recipient: dest, amountSats: 2_000 }]
    );
    let receipt = send(as_user.burnToBitcoin(5_000, script.clone())).await;
    assert_eq!(events::<IBridge::BurnToBitcoin>(&receipt)[0].nonce, 2);
    // All bridge events of the receipt decode through the interface enum too.
    let decoded = receipt
        .inner
        .logs()
        .iter()
        .filter(|l| l.address() == f.deployed.bridge)
        .map(|l| IBridge::IBridgeEvents::decode_log(&l.inner).unwrap().data)
        .collect::<Vec<_>>();
    assert_eq!(decoded.len(), 1);
    assert_eq!(as_user.burnNonce().call().await.unwrap(), 3);

    assert_eq!(f.balance(user).await, U256::from(100_000u64 - 10_000));
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(100_000u64 - 10_000));
    assert_eq!(f.token().allowance(user, f.deployed.bridge).call().await.unwrap(), U256::ZERO);

    // Refused requests.
    let invalid_amount = || IBridgeErrors::InvalidAmount(IBridge::InvalidAmount {});
    let invalid_chain = || IBridgeErrors::InvalidChain(IBridge::InvalidChain {});
    reverts(as_user.burnToBitcoin(0, script.clone()), invalid_amount()).await;
    reverts(as_user.burnToBitcoin(1, Bytes::new()), invalid_script()).await;
    reverts(as_user.burnToBitcoin(1, Bytes::from(vec![0u8; 10_001])), invalid_script()).await;
    // The old contract took any script up to 10,000 bytes; now only standard templates.
    reverts(as_user.burnToBitcoin(3_000, Bytes::from(vec![0x6a; 10_000])), invalid_script()).await;
    reverts(as_user.burnToChain(56, dest, 0), invalid_amount()).await;
    reverts(as_user.burnToChain(0, dest, 1), invalid_chain()).await;
    reverts(as_user.burnToChain(CHAIN_ID, dest, 1), invalid_chain()).await;
    reverts(as_user.burnToChain(56, Address::ZERO, 1), IBridgeErrors::InvalidRecipient(IBridge::InvalidRecipient {}))
        .await;
    // More than the balance: the token refuses (an ERC-6093 error outside IBridge).
    let short = |sender: Address, balance: u64, needed: u64| {
        IWrappedBTCErrors::ERC20InsufficientBalance(IWrappedBTC::ERC20InsufficientBalance {
            sender,
            balance: U256::from(balance),
            needed: U256::from(needed),
        })
    };
    reverts(as_user.burnToBitcoin(1_000_000, script.clone()), short(user, 100_000 - 10_000, 1_000_000)).await;
    // Someone without tokens cannot burn anyone else's.
    let relayer = f.anvil.dev_address(RELAYER);
    reverts(f.bridge(RELAYER).burnToChain(56, dest, 1), short(relayer, 0, 1)).await;
    assert_eq!(as_user.burnNonce().call().await.unwrap(), 3);
}

#[tokio::test]
async fn verify_gas() {
    let mut f = Fixture::new(8).await;
    let message = f.mint_message(B256::repeat_byte(0x81), f.anvil.dev_address(USER), 42);
    let sig = f.sign(message);
    let bridge = f.bridge(RELAYER);
    let call = bridge.verify(B256::from(message), f.key.px, f.key.py, sig.rx, sig.ry, sig.z);
    assert!(call.call().await.unwrap());

    let calldata = call.calldata().clone();
    let calldata_gas: u64 = calldata.iter().map(|b| if *b == 0 { 4 } else { 16 }).sum();
    let tx = TransactionRequest::default().with_to(f.deployed.bridge).with_input(calldata);
    let estimate = f.anvil.provider().estimate_gas(tx).await.unwrap();
    println!(
        "gas: verify() estimate_gas = {estimate}; minus 21000 base = {}; minus calldata ({calldata_gas}) too = {} (execution)",
        estimate - 21_000,
        estimate - 21_000 - calldata_gas
    );
    gas_within("verify() execution", estimate - 21_000 - calldata_gas, 6_000);

    // An independent vector (the example in safe-research/safe-frost's README).
    let external = bridge.verify(
        B256::from(hex!("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")),
        U256::from_be_bytes(hex!("dca18f3684bc5215cab42a1408349aa8c6c8c8618828c10f42c3267a2f244af2")),
        U256::from_be_bytes(hex!("59df12ce44f6103f21776987ae8abd0e41867bafb1031eab70b76ff5c312c337")),
        U256::from_be_bytes(hex!("5670147d167303169aca1076e7c6f41ec9bf5f218f4062e9510a03f157876617")),
        U256::from_be_bytes(hex!("4a76a3b5c324d141037e198dccee4cad8218cb136657a9e677007003ab1520a6")),
        U256::from_be_bytes(hex!("ddf02a70a147d67d5051e94e60a123032cd1b779c1697522c0aa7453246beb65")),
    );
    assert!(external.call().await.unwrap());

    // Rejections are cheap and do not revert.
    for (rx, ry, z) in [(sig.rx, sig.ry ^ U256::from(2u64), sig.z), (sig.rx, sig.ry, U256::ZERO), (sig.rx, sig.ry, N)] {
        assert!(!bridge.verify(B256::from(message), f.key.px, f.key.py, rx, ry, z).call().await.unwrap());
    }
    let mut other = message;
    other[31] ^= 1;
    assert!(!bridge.verify(B256::from(other), f.key.px, f.key.py, sig.rx, sig.ry, sig.z).call().await.unwrap());
    assert!(!bridge.verify(B256::from(message), N, U256::ZERO, sig.rx, sig.ry, sig.z).call().await.unwrap());
}

#[tokio::test]
async fn burn_to_bitcoin_needs_the_peg_out_fee_plus_the_dust_limit_of_its_template() {
    let mut f = Fixture::new(9).await;
    let user = f.anvil.dev_address(USER);
    f.mint(B256::repeat_byte(0x91), user, 1_000_000).await;
    let as_user = f.bridge(USER);
    assert_eq!(as_user.pegOutFee().call().await.unwrap(), PEG_OUT_FEE);

    // The case that motivated the rule: 2,400 sat to P2PKH with a 2,000 sat fee would
    // leave a 400 sat output, below P2PKH's 546 sat dust limit: never relayed, never paid.
    let p2pkh = ScriptBuf::new_p2pkh(&PubkeyHash::from_byte_array([0x11; 20]));
    reverts(as_user.burnToBitcoin(2_400, bytes(p2pkh.as_bytes())), below_minimum(2_546)).await;

    let mut nonce = 0;
    for (name, script, dust) in standard_scripts() {
        // The contract's dust limits are Bitcoin Core's at the default dust relay fee.
        assert!(is_standard_template(&script), "{name}");
        assert_eq!(script.minimal_non_dust().to_sat(), dust, "{name}: dust limit");
        let min = PEG_OUT_FEE + dust;
        let spk = bytes(script.as_bytes());
        assert_eq!(as_user.minBurnToBitcoin(spk.clone()).call().await.unwrap(), min, "{name}");

        reverts(as_user.burnToBitcoin(min - 1, spk.clone()), below_minimum(min)).await;
        let receipt = send(as_user.burnToBitcoin(min, spk.clone())).await;
        assert_eq!(
            events::<IBridge::BurnToBitcoin>(&receipt),
            vec![IBridge::BurnToBitcoin { nonce, from: user, amountSats: min, btcScriptPubKey: spk }],
            "{name}"
        );
        nonce += 1;
    }
    assert_eq!(as_user.burnNonce().call().await.unwrap(), nonce);

    // The minimum follows the deployment's fee: with no fee it is the dust limit alone.
    let free = BridgeConfig { peg_out_fee: 0, known_chains: vec![] };
    let second = deploy_bridge_with(&f.anvil.url(), &f.anvil.dev_key(DEPLOYER), f.anvil.dev_address(GUARDIAN), &free)
        .await
        .unwrap();
    let second = IBridge::new(second.bridge, wallet(&f.anvil, USER));
    assert_eq!(second.pegOutFee().call().await.unwrap(), 0);
    for (name, script, dust) in standard_scripts() {
        assert_eq!(second.minBurnToBitcoin(bytes(script.as_bytes())).call().await.unwrap(), dust, "{name}");
    }
    // A fee above all bitcoin there is (21e6 BTC) is a deployment mistake.
    let absurd = BridgeConfig { peg_out_fee: 2_100_000_000_000_001, known_chains: vec![] };
    let mut code = bytecode("Bridge").unwrap();
    code.extend_from_slice(
        &(f.anvil.dev_address(GUARDIAN), absurd.peg_out_fee, absurd.known_chains.clone()).abi_encode_params(),
    );
    let deployed =
        wallet(&f.anvil, DEPLOYER).send_transaction(TransactionRequest::default().with_deploy_code(code)).await;
    let refusal =
        deployed.as_ref().err().and_then(|e| e.as_error_resp()?.as_decoded_interface_error::<IBridgeErrors>());
    assert_eq!(
        refusal,
        Some(IBridgeErrors::InvalidAmount(IBridge::InvalidAmount {})),
        "a peg-out fee above MAX_MONEY must not deploy: {:?}",
        deployed.map(|p| *p.tx_hash())
    );
}

#[tokio::test]
async fn burn_to_bitcoin_refuses_every_script_that_is_not_exactly_a_standard_template() {
    let mut f = Fixture::new(10).await;
    let user = f.anvil.dev_address(USER);
    f.mint(B256::repeat_byte(0xa1), user, 1_000_000).await;
    let as_user = f.bridge(USER);
    let amount = 100_000;

    let mut malformed: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("bare OP_1 (0x51)".into(), vec![0x51]),
        ("bare OP_RETURN (0x6a)".into(), vec![0x6a]),
        ("OP_RETURN with 20 bytes (P2WPKH's length)".into(), [&[0x6a, 0x14][..], &[0x01; 20]].concat()),
        ("OP_RETURN with 32 bytes (P2TR's length)".into(), [&[0x6a, 0x20][..], &[0x01; 32]].concat()),
        ("P2PK (33-byte key, OP_CHECKSIG)".into(), [&[0x21][..], &[0x02; 33], &[0xac]].concat()),
        ("witness v1 with a 20-byte program".into(), [&[0x51, 0x14][..], &[0x02; 20]].concat()),
        ("witness v2 with a 32-byte program".into(), [&[0x52, 0x20][..], &[0x02; 32]].concat()),
        ("witness v0 with a 32-byte push in a 22-byte script".into(), [&[0x00, 0x20][..], &[0x02; 20]].concat()),
        ("10,000 bytes".into(), vec![0x6a; 10_000]),
    ];
    // Every template with each fixed byte (opcode or push length) changed, one byte
    // shorter and one byte longer.
    for (name, script, _) in standard_scripts() {
        let b = script.to_bytes();
        let fixed: Vec<usize> = match name {
            "P2PKH" => vec![0, 1, 2, 23, 24],
            "P2SH" => vec![0, 1, 22],
            _ => vec![0, 1],
        };
        for i in fixed {
            let mut m = b.clone();
            m[i] ^= 0x01;
            malformed.push((format!("{name} with byte {i} = {:#04x}", m[i]), m));
        }
        malformed.push((format!("{name} one byte short"), b[..b.len() - 1].to_vec()));
        malformed.push((format!("{name} one byte long"), [&b[..], &[b[b.len() - 1]]].concat()));
    }
    for (what, script) in &malformed {
        // The oracle agrees that none of these is a template the validators can pay.
        assert!(!is_standard_template(ScriptBuf::from_bytes(script.clone()).as_script()), "{what}");
        reverts(as_user.burnToBitcoin(amount, bytes(script)), invalid_script()).await;
        assert_eq!(view(as_user.minBurnToBitcoin(bytes(script))).await, Err(invalid_script()), "{what}");
    }

    // Byte by byte, the contract classifies exactly as the `bitcoin` crate does: every
    // single-byte change of every template (hash bytes included) and every length.
    for (name, script, _) in standard_scripts() {
        let b = script.to_bytes();
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for i in 0..b.len() {
            for x in [0x00, 0x14, 0x20, 0x51, 0x87, 0xac, b[i] ^ 0x80] {
                let mut m = b.clone();
                m[i] = x;
                variants.push(m);
            }
        }
        for len in 0..=40 {
            variants.push((0..len).map(|i| b.get(i).copied().unwrap_or(0x00)).collect());
        }
        for m in variants {
            let s = ScriptBuf::from_bytes(m.clone());
            let expected = if is_standard_template(&s) {
                Ok(PEG_OUT_FEE + s.minimal_non_dust().to_sat())
            } else {
                Err(invalid_script())
            };
            assert_eq!(view(as_user.minBurnToBitcoin(bytes(&m))).await, expected, "{name} variant {}", hex::encode(&m));
        }
    }

    // Nothing burned.
    assert_eq!(f.balance(user).await, U256::from(1_000_000u64));
    assert_eq!(as_user.burnNonce().call().await.unwrap(), 0);
}

#[tokio::test]
async fn burn_to_chain_goes_only_to_chains_the_group_key_made_known() {
    let mut f = Fixture::new(11).await;
    let user = f.anvil.dev_address(USER);
    f.mint(B256::repeat_byte(0xb1), user, 1_000_000).await;
    let (as_user, relayer) = (f.bridge(USER), f.bridge(RELAYER));
    let dest = f.anvil.dev_address(RELAYER);
    const POLYGON: u64 = 137;

    // The deployer's initial list.
    assert!(as_user.knownChain(KNOWN_CHAIN).call().await.unwrap());
    assert!(as_user.knownChain(31_337).call().await.unwrap());
    assert!(!as_user.knownChain(POLYGON).call().await.unwrap());
    assert!(!as_user.knownChain(CHAIN_ID).call().await.unwrap());
    send(as_user.burnToChain(KNOWN_CHAIN, dest, 1_000)).await;
    reverts(as_user.burnToChain(POLYGON, dest, 1_000), unknown_chain(POLYGON)).await;
    reverts(as_user.burnToChain(31_338, dest, 1_000), unknown_chain(31_338)).await;

    // Signatures that are not the current key's on exactly this update.
    let message = known_chain_message(CHAIN_ID, f.deployed.bridge, 0, POLYGON, true);
    assert_eq!(relayer.knownChainMessage(POLYGON, true).call().await.unwrap().0, message);
    let other_key = DealerKey::generate(&mut f.rng, 4, 3);
    let foreign = other_key.sign(&mut f.rng, message);
    reverts(relayer.setKnownChain(POLYGON, true, foreign.rx, foreign.ry, foreign.z), invalid_signature()).await;
    let good = f.sign(message);
    reverts(relayer.setKnownChain(POLYGON, false, good.rx, good.ry, good.z), invalid_signature()).await;
    reverts(relayer.setKnownChain(POLYGON + 1, true, good.rx, good.ry, good.z), invalid_signature()).await;
    for wrong in [
        known_chain_message(CHAIN_ID, f.deployed.bridge, 1, POLYGON, true),
        known_chain_message(CHAIN_ID + 1, f.deployed.bridge, 0, POLYGON, true),
        known_chain_message(CHAIN_ID, Address::repeat_byte(0x42), 0, POLYGON, true),
        // The rotation message for the same nonce does not double as a chain update.
        rotate_message(CHAIN_ID, f.deployed.bridge, 0, U256::from(POLYGON), U256::from(1u64)),
    ] {
        let sig = f.sign(wrong);
        reverts(relayer.setKnownChain(POLYGON, true, sig.rx, sig.ry, sig.z), invalid_signature()).await;
    }
    // Neither Bitcoin (0) nor this chain can be made a destination.
    let invalid_chain = || IBridgeErrors::InvalidChain(IBridge::InvalidChain {});
    for id in [0, CHAIN_ID] {
        let sig = f.sign(known_chain_message(CHAIN_ID, f.deployed.bridge, 0, id, true));
        reverts(relayer.setKnownChain(id, true, sig.rx, sig.ry, sig.z), invalid_chain()).await;
    }
    assert_eq!(relayer.chainNonce().call().await.unwrap(), 0);

    // The signed update, submitted by anyone.
    let receipt = send(relayer.setKnownChain(POLYGON, true, good.rx, good.ry, good.z)).await;
    println!("gas: setKnownChain (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("setKnownChain", receipt.gas_used, 64_000);
    assert_eq!(
        events::<IBridge::KnownChainSet>(&receipt),
        vec![IBridge::KnownChainSet { chainId: POLYGON, enabled: true, chainNonce: 0 }]
    );
    assert!(relayer.knownChain(POLYGON).call().await.unwrap());
    assert_eq!(relayer.chainNonce().call().await.unwrap(), 1);
    assert_eq!(relayer.rotationNonce().call().await.unwrap(), 0, "a separate nonce");
    let receipt = send(as_user.burnToChain(POLYGON, dest, 2_000)).await;
    assert_eq!(events::<IBridge::BurnToChain>(&receipt)[0].destChainId, POLYGON);

    // A replay is refused (the nonce moved), even after the chain is disabled again.
    reverts(relayer.setKnownChain(POLYGON, true, good.rx, good.ry, good.z), invalid_signature()).await;
    let off = f.sign(known_chain_message(CHAIN_ID, f.deployed.bridge, 1, POLYGON, false));
    send(relayer.setKnownChain(POLYGON, false, off.rx, off.ry, off.z)).await;
    reverts(as_user.burnToChain(POLYGON, dest, 1_000), unknown_chain(POLYGON)).await;
    reverts(relayer.setKnownChain(POLYGON, true, good.rx, good.ry, good.z), invalid_signature()).await;
    reverts(relayer.setKnownChain(POLYGON, false, off.rx, off.ry, off.z), invalid_signature()).await;
    assert!(!relayer.knownChain(POLYGON).call().await.unwrap());

    // While paused the list can only shrink: enabling waits, disabling does not.
    send(f.bridge(GUARDIAN).pause()).await;
    let on = f.sign(known_chain_message(CHAIN_ID, f.deployed.bridge, 2, POLYGON, true));
    reverts(
        relayer.setKnownChain(POLYGON, true, on.rx, on.ry, on.z),
        IBridgeErrors::BridgePaused(IBridge::BridgePaused {}),
    )
    .await;
    let bsc_off = f.sign(known_chain_message(CHAIN_ID, f.deployed.bridge, 2, KNOWN_CHAIN, false));
    send(relayer.setKnownChain(KNOWN_CHAIN, false, bsc_off.rx, bsc_off.ry, bsc_off.z)).await;
    send(f.bridge(GUARDIAN).unpause()).await;
    reverts(as_user.burnToChain(KNOWN_CHAIN, dest, 1_000), unknown_chain(KNOWN_CHAIN)).await;
    let on = f.sign(known_chain_message(CHAIN_ID, f.deployed.bridge, 3, POLYGON, true));
    send(relayer.setKnownChain(POLYGON, true, on.rx, on.ry, on.z)).await;
    send(as_user.burnToChain(POLYGON, dest, 1_000)).await;

    // After a rotation only the new key changes the list.
    let new_key = DealerKey::generate(&mut f.rng, 4, 3);
    let rot = f.sign(rotate_message(CHAIN_ID, f.deployed.bridge, 0, new_key.px, new_key.py));
    send(relayer.rotateKey(new_key.px, new_key.py, rot.rx, rot.ry, rot.z)).await;
    let message = known_chain_message(CHAIN_ID, f.deployed.bridge, 4, KNOWN_CHAIN, true);
    let old = f.sign(message);
    reverts(relayer.setKnownChain(KNOWN_CHAIN, true, old.rx, old.ry, old.z), invalid_signature()).await;
    let new = new_key.sign(&mut f.rng, message);
    send(relayer.setKnownChain(KNOWN_CHAIN, true, new.rx, new.ry, new.z)).await;
    send(as_user.burnToChain(KNOWN_CHAIN, dest, 1_000)).await;
    assert_eq!(f.balance(user).await, U256::from(1_000_000u64 - 5_000));
}

#[tokio::test]
async fn the_deployer_sets_the_first_known_chains_and_no_invalid_one() {
    let anvil = Anvil::start(CHAIN_ID).await.unwrap();
    let deploy = |known_chains: Vec<u64>| {
        let config = BridgeConfig { peg_out_fee: PEG_OUT_FEE, known_chains };
        let (url, key, guardian) = (anvil.url(), anvil.dev_key(DEPLOYER), anvil.dev_address(GUARDIAN));
        async move { deploy_bridge_with(&url, &key, guardian, &config).await }
    };
    let invalid_chain = hex::encode(IBridge::InvalidChain::SELECTOR);
    for bad in [vec![0], vec![1, CHAIN_ID], vec![CHAIN_ID]] {
        let e = deploy(bad.clone()).await.expect_err("an invalid initial chain must not deploy");
        assert!(format!("{e:?}").contains(&invalid_chain), "{bad:?}: expected InvalidChain, got {e:?}");
    }
    let d = deploy(vec![1, 10, 1]).await.unwrap();
    let bridge = IBridge::new(d.bridge, wallet(&anvil, USER));
    for (id, known) in [(1, true), (10, true), (56, false), (CHAIN_ID, false), (0, false)] {
        assert_eq!(bridge.knownChain(id).call().await.unwrap(), known, "{id}");
    }
    // The testkit default: every other devnet chain.
    let on_devnet = Anvil::start(31_338).await.unwrap();
    let d =
        deploy_bridge(&on_devnet.url(), &on_devnet.dev_key(DEPLOYER), on_devnet.dev_address(GUARDIAN)).await.unwrap();
    let bridge = IBridge::new(d.bridge, wallet(&on_devnet, USER));
    for (id, known) in [(31_337, true), (31_338, false), (31_339, true), (31_340, true)] {
        assert_eq!(bridge.knownChain(id).call().await.unwrap(), known, "{id}");
    }
    assert_eq!(bridge.pegOutFee().call().await.unwrap(), 2_000);
}

#[tokio::test]
async fn rotation_while_paused_needs_the_guardians_approval_of_exactly_that_key() {
    let mut f = Fixture::new(12).await;
    let relayer = f.bridge(RELAYER);
    let guardian = f.bridge(GUARDIAN);
    let new_key = DealerKey::generate(&mut f.rng, 4, 3);
    let other_key = DealerKey::generate(&mut f.rng, 4, 3);
    let not_approved = || IBridgeErrors::RotationNotApproved(IBridge::RotationNotApproved {});
    send(guardian.pause()).await;

    // A valid rotation signature (say, by a stolen group key) is not enough while paused.
    let good = f.sign(rotate_message(CHAIN_ID, f.deployed.bridge, 0, new_key.px, new_key.py));
    reverts(relayer.rotateKey(new_key.px, new_key.py, good.rx, good.ry, good.z), not_approved()).await;

    // Only the guardian approves, only a usable key, and only that key passes.
    let not_guardian = || IBridgeErrors::NotGuardian(IBridge::NotGuardian {});
    reverts(relayer.approveRotation(new_key.px, new_key.py), not_guardian()).await;
    reverts(f.bridge(DEPLOYER).approveRotation(new_key.px, new_key.py), not_guardian()).await;
    reverts(
        guardian.approveRotation(new_key.px, new_key.py ^ U256::from(1u64)),
        IBridgeErrors::InvalidKey(IBridge::InvalidKey {}),
    )
    .await;
    send(guardian.approveRotation(other_key.px, other_key.py)).await;
    reverts(relayer.rotateKey(new_key.px, new_key.py, good.rx, good.ry, good.z), not_approved()).await;
    assert!(!relayer.rotationApproved(new_key.px, new_key.py).call().await.unwrap());

    let receipt = send(guardian.approveRotation(new_key.px, new_key.py)).await;
    assert_eq!(
        events::<IBridge::RotationApproved>(&receipt),
        vec![IBridge::RotationApproved { px: new_key.px, py: new_key.py, rotationNonce: 0 }]
    );
    assert!(relayer.rotationApproved(new_key.px, new_key.py).call().await.unwrap());
    assert!(!relayer.rotationApproved(other_key.px, other_key.py).call().await.unwrap(), "replaced");
    // The approval does not stand in for the group key's signature.
    let by_new = new_key.sign(&mut f.rng, rotate_message(CHAIN_ID, f.deployed.bridge, 0, new_key.px, new_key.py));
    reverts(relayer.rotateKey(new_key.px, new_key.py, by_new.rx, by_new.ry, by_new.z), invalid_signature()).await;

    let receipt = send(relayer.rotateKey(new_key.px, new_key.py, good.rx, good.ry, good.z)).await;
    println!("gas: rotateKey while paused, approved (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("rotateKey while paused", receipt.gas_used, 49_000);
    assert_eq!(
        events::<IBridge::KeyRotated>(&receipt),
        vec![IBridge::KeyRotated { px: new_key.px, py: new_key.py, rotationNonce: 0 }]
    );
    let key = relayer.groupKey().call().await.unwrap();
    assert_eq!((key.px, key.py), (new_key.px, new_key.py));
    assert!(relayer.paused().call().await.unwrap(), "rotation does not unpause");

    // One approval, one rotation: going on (even back to the old key) needs another.
    assert!(!relayer.rotationApproved(new_key.px, new_key.py).call().await.unwrap());
    let back = new_key.sign(&mut f.rng, rotate_message(CHAIN_ID, f.deployed.bridge, 1, f.key.px, f.key.py));
    reverts(relayer.rotateKey(f.key.px, f.key.py, back.rx, back.ry, back.z), not_approved()).await;

    // An approval is for the rotation nonce it was given at: approve K at nonce 1, let
    // an unpaused rotation use nonce 1 for another key, pause again: K is not approved.
    send(guardian.approveRotation(other_key.px, other_key.py)).await;
    send(guardian.unpause()).await;
    // Unpaused, a rotation needs no approval.
    send(relayer.rotateKey(f.key.px, f.key.py, back.rx, back.ry, back.z)).await;
    send(guardian.pause()).await;
    assert!(!relayer.rotationApproved(other_key.px, other_key.py).call().await.unwrap());
    let to_other = f.sign(rotate_message(CHAIN_ID, f.deployed.bridge, 2, other_key.px, other_key.py));
    reverts(relayer.rotateKey(other_key.px, other_key.py, to_other.rx, to_other.ry, to_other.z), not_approved()).await;
    send(guardian.approveRotation(other_key.px, other_key.py)).await;
    send(relayer.rotateKey(other_key.px, other_key.py, to_other.rx, to_other.ry, to_other.z)).await;
    assert_eq!(relayer.rotationNonce().call().await.unwrap(), 3);
}

// ------------------------------------------------------------------ batched mints

/// A batch: its leaves (sorted by event id, as the node builds them), root and proofs.
struct Batch {
    leaves: Vec<IBridge::MintLeaf>,
    root: B256,
    proofs: Vec<Vec<B256>>,
}

fn batch_of(mints: &[(B256, Address, u64)]) -> Batch {
    let mut mints = mints.to_vec();
    mints.sort();
    let hashes: Vec<[u8; 32]> = mints.iter().map(|(e, r, a)| mint_leaf(e.0, *r, *a)).collect();
    let root = B256::from(merkle_root(&hashes).unwrap());
    let proofs = merkle_proofs(&hashes).into_iter().map(|p| p.into_iter().map(B256::from).collect()).collect();
    let leaves =
        mints.iter().map(|(e, r, a)| IBridge::MintLeaf { eventId: *e, recipient: *r, amountSats: *a }).collect();
    Batch { leaves, root, proofs }
}

impl Fixture {
    fn sign_batch(&mut self, root: B256) -> EvmSignature {
        self.sign(batch_message(CHAIN_ID, self.deployed.bridge, root.0))
    }
}

fn event(i: u32) -> B256 {
    keccak256(i.to_be_bytes())
}

/// One signature over a Merkle root mints a whole batch in one transaction, each event
/// once; a replayed or overlapping batch mints only what is new; single leaves mint
/// with their proof under an accepted root; a bad root signature, a bad proof, a leaf
/// changed under its proof and an unknown root are all refused. Gas is printed.
#[tokio::test]
async fn a_signed_batch_root_mints_each_leaf_once_with_its_proof() {
    let mut f = Fixture::new(21).await;
    let users: Vec<Address> = (4..8).map(|i| f.anvil.dev_address(i)).collect();
    let mints: Vec<(B256, Address, u64)> =
        (0..8u32).map(|i| (event(i), users[i as usize % 4], 10_000 + u64::from(i))).collect();
    let b = batch_of(&mints);

    // The contract's leaf and message are the Rust signer's, byte for byte.
    let bridge = f.bridge(RELAYER);
    for l in &b.leaves {
        let onchain = bridge.mintLeaf(l.eventId, l.recipient, l.amountSats).call().await.unwrap();
        assert_eq!(onchain.0, mint_leaf(l.eventId.0, l.recipient, l.amountSats));
    }
    assert_eq!(
        bridge.batchMessage(b.root).call().await.unwrap().0,
        batch_message(CHAIN_ID, f.deployed.bridge, b.root.0)
    );

    // A signature on anything but this root's batch message is refused.
    let wrong = f.sign(batch_message(CHAIN_ID + 1, f.deployed.bridge, b.root.0));
    reverts(
        bridge.mintBatch(b.root, wrong.rx, wrong.ry, wrong.z, b.leaves.clone(), b.proofs.clone()),
        invalid_signature(),
    )
    .await;
    let single = f.sign(f.mint_message(b.root, users[0], 1));
    reverts(bridge.acceptBatch(b.root, single.rx, single.ry, single.z), invalid_signature()).await;
    let short = b.proofs[..7].to_vec();
    let sig = f.sign_batch(b.root);
    reverts(
        bridge.mintBatch(b.root, sig.rx, sig.ry, sig.z, b.leaves.clone(), short),
        IBridgeErrors::LengthMismatch(IBridge::LengthMismatch {}),
    )
    .await;

    // The whole batch in one transaction.
    let receipt = send(bridge.mintBatch(b.root, sig.rx, sig.ry, sig.z, b.leaves.clone(), b.proofs.clone())).await;
    println!("gas: mintBatch of 8 (receipt gasUsed) = {}, per mint = {}", receipt.gas_used, receipt.gas_used / 8);
    gas_within("mintBatch of 8, per mint", receipt.gas_used / 8, 57_000);
    assert_eq!(events::<IBridge::BatchAccepted>(&receipt), vec![IBridge::BatchAccepted { root: b.root }]);
    let minted: BTreeSet<B256> = events::<IBridge::Minted>(&receipt).into_iter().map(|m| m.eventId).collect();
    assert_eq!(minted, mints.iter().map(|m| m.0).collect());
    for (i, u) in users.iter().enumerate() {
        let want: u64 = mints.iter().filter(|m| m.1 == *u).map(|m| m.2).sum();
        assert_eq!(f.balance(*u).await, U256::from(want), "user {i}");
    }
    assert!(bridge.acceptedRoot(b.root).call().await.unwrap());

    // Replayed whole: nothing mints, nothing reverts (a racing relayer is harmless).
    let receipt = send(bridge.mintBatch(b.root, sig.rx, sig.ry, sig.z, b.leaves.clone(), b.proofs.clone())).await;
    assert!(events::<IBridge::Minted>(&receipt).is_empty());
    let supply: u64 = mints.iter().map(|m| m.2).sum();
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(supply));

    // An overlapping batch: four old events and four new ones; only the new mint.
    let mut overlap: Vec<(B256, Address, u64)> = mints[4..].to_vec();
    overlap.extend((8..12u32).map(|i| (event(i), users[0], 500 + u64::from(i))));
    let o = batch_of(&overlap);
    let osig = f.sign_batch(o.root);
    // Its root is not accepted yet: a leaf alone cannot mint under it.
    let new_at = o.leaves.iter().position(|l| l.eventId == event(8)).unwrap();
    reverts(
        bridge.mintWithProof(o.root, o.leaves[new_at].clone(), o.proofs[new_at].clone()),
        IBridgeErrors::UnknownRoot(IBridge::UnknownRoot { root: o.root }),
    )
    .await;
    send(bridge.acceptBatch(o.root, osig.rx, osig.ry, osig.z)).await;
    // One new leaf alone, with its proof.
    let receipt = send(bridge.mintWithProof(o.root, o.leaves[new_at].clone(), o.proofs[new_at].clone())).await;
    println!("gas: mintWithProof under an accepted root (receipt gasUsed) = {}", receipt.gas_used);
    gas_within("mintWithProof", receipt.gas_used, 74_000);
    assert_eq!(events::<IBridge::Minted>(&receipt).len(), 1);
    // The same leaf again, and an old one: consumed.
    for at in [new_at, o.leaves.iter().position(|l| l.eventId == mints[5].0).unwrap()] {
        let id = o.leaves[at].eventId;
        reverts(
            bridge.mintWithProof(o.root, o.leaves[at].clone(), o.proofs[at].clone()),
            IBridgeErrors::AlreadyConsumed(IBridge::AlreadyConsumed { eventId: id }),
        )
        .await;
    }
    // A leaf changed under its proof, or another leaf's proof: refused.
    let other_at = o.leaves.iter().position(|l| l.eventId == event(9)).unwrap();
    let mut more = o.leaves[other_at].clone();
    more.amountSats += 1;
    let bad_proof = IBridgeErrors::InvalidProof(IBridge::InvalidProof { eventId: more.eventId });
    reverts(bridge.mintWithProof(o.root, more.clone(), o.proofs[other_at].clone()), bad_proof.clone()).await;
    let mut elsewhere = o.leaves[other_at].clone();
    elsewhere.recipient = users[1];
    reverts(bridge.mintWithProof(o.root, elsewhere, o.proofs[other_at].clone()), bad_proof.clone()).await;
    reverts(bridge.mintWithProof(o.root, o.leaves[other_at].clone(), o.proofs[new_at].clone()), bad_proof.clone())
        .await;
    // A bad proof inside a batch reverts the whole batch.
    let mut tampered = o.leaves.clone();
    tampered[other_at] = more;
    reverts(bridge.mintBatch(o.root, osig.rx, osig.ry, osig.z, tampered, o.proofs.clone()), bad_proof).await;
    // The rest of the overlapping batch: three new events mint, the old four are skipped.
    let receipt = send(bridge.mintBatch(o.root, osig.rx, osig.ry, osig.z, o.leaves.clone(), o.proofs.clone())).await;
    let minted: BTreeSet<B256> = events::<IBridge::Minted>(&receipt).into_iter().map(|m| m.eventId).collect();
    assert_eq!(minted, [9u32, 10, 11].into_iter().map(event).collect());
    let supply = supply + (8..12u64).map(|i| 500 + i).sum::<u64>();
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(supply));
    // A single `mint` of an event a batch minted is a replay too.
    let s = f.sign(f.mint_message(event(10), users[0], 510));
    reverts(
        bridge.mint(event(10), users[0], 510, s.rx, s.ry, s.z),
        IBridgeErrors::AlreadyConsumed(IBridge::AlreadyConsumed { eventId: event(10) }),
    )
    .await;

    // Paused: no batch mints.
    send(f.bridge(GUARDIAN).pause()).await;
    let p = batch_of(&[(event(99), users[2], 7)]);
    let psig = f.sign_batch(p.root);
    reverts(
        bridge.mintBatch(p.root, psig.rx, psig.ry, psig.z, p.leaves.clone(), p.proofs.clone()),
        IBridgeErrors::BridgePaused(IBridge::BridgePaused {}),
    )
    .await;
}

/// Gas of a full batch of 256 mints to 256 fresh recipients, against single mints.
#[tokio::test]
async fn batch_gas_per_mint_falls_below_a_single_mint() {
    let mut f = Fixture::new(22).await;
    let mints: Vec<(B256, Address, u64)> =
        (0..256u32).map(|i| (event(1_000 + i), Address::from_word(keccak256((i + 1).to_be_bytes())), 20_000)).collect();
    let b = batch_of(&mints);
    let sig = f.sign_batch(b.root);
    let receipt = send(f.bridge(RELAYER).mintBatch(b.root, sig.rx, sig.ry, sig.z, b.leaves, b.proofs)).await;
    let per_mint = receipt.gas_used / 256;
    println!(
        "gas: mintBatch of 256 to fresh recipients (receipt gasUsed) = {}, per mint = {per_mint}",
        receipt.gas_used
    );
    let single = f.mint(event(5_000), Address::from_word(keccak256(b"fresh")), 20_000).await;
    println!("gas: single mint to a fresh recipient (receipt gasUsed) = {}", single.gas_used);
    gas_within("mintBatch of 256 to fresh recipients, per mint", per_mint, 62_000);
    gas_within("single mint to a fresh recipient", single.gas_used, 95_000);
    assert_eq!(events::<IBridge::Minted>(&receipt).len(), 256);
    assert!(per_mint < single.gas_used, "batched {per_mint} per mint, single {}", single.gas_used);
}

/// A gas figure the tests print is also bounded: a ceiling a little above what the
/// contract costs today, so that a change that makes a call dearer fails here instead of
/// only printing a larger number.
fn gas_within(what: &str, used: u64, ceiling: u64) {
    assert!(used <= ceiling, "{what}: {used} gas, above its ceiling of {ceiling}");
}
