//! The bridge contract against a real anvil: FROST(secp256k1, SHA-256) signatures from
//! `frost-secp256k1` (trusted-dealer keys, three of four signers) mint exactly once and
//! nowhere else; rotation, pause and burns behave; the compiled ABI matches the Rust
//! bindings (`btcfi_chain_adapters::evm::bindings`) so neither side can drift.
//!
//! Gas figures are printed (`cargo test ... -- --nocapture` shows them).

use alloy::{
    json_abi::JsonAbi,
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256, hex},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest},
    sol_types::{SolCall, SolEvent, SolEventInterface},
};
use btcfi_chain_adapters::evm::bindings::{
    IBridge::{self, IBridgeErrors, IBridgeInstance},
    IWrappedBTC::{self, IWrappedBTCInstance},
};
use btcfi_signer::evm::{EvmSignature, mint_message, rotate_message};
use btcfi_testkit::{
    Anvil,
    contracts::{Deployed, KeyedBridge, abi_json, deploy_bridge},
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

struct Fixture {
    anvil: Anvil,
    deployed: Deployed,
    key: DealerKey,
    rng: TestRng,
}

impl Fixture {
    /// anvil, a bridge deployed by dev account 0 with dev account 1 as guardian, and
    /// a group key installed with `setInitialKey`.
    async fn new(seed: u64) -> Self {
        let KeyedBridge { anvil, deployed, key, rng } = KeyedBridge::start(CHAIN_ID, seed, 4, 3).await.unwrap();
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

/// Requires that sending `call` reverts with `expected` (gas estimation already sees it).
async fn reverts<D: alloy::contract::CallDecoder>(
    call: alloy::contract::CallBuilder<&DynProvider, D>,
    expected: IBridgeErrors,
) {
    match call.send().await {
        Ok(pending) => panic!("expected revert {expected:?}, but the transaction was sent: {:?}", pending.tx_hash()),
        Err(e) => {
            let got = e.as_decoded_interface_error::<IBridgeErrors>();
            assert_eq!(got.as_ref(), Some(&expected), "expected revert {expected:?}, got {e}");
        }
    }
}

fn events<E: SolEvent>(receipt: &TransactionReceipt) -> Vec<E> {
    receipt.inner.logs().iter().filter_map(|log| log.log_decode::<E>().ok()).map(|log| log.inner.data).collect()
}

fn invalid_signature() -> IBridgeErrors {
    IBridgeErrors::InvalidSignature(IBridge::InvalidSignature {})
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
    f.mint(B256::repeat_byte(0x61), user, 1_000).await;

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
    reverts(f.bridge(USER).burnToBitcoin(10, Bytes::from(vec![0x51, 0x20])), paused()).await;
    reverts(f.bridge(USER).burnToChain(1, user, 10), paused()).await;
    reverts(f.bridge(USER).unpause(), not_guardian()).await;

    let receipt = send(f.bridge(GUARDIAN).unpause()).await;
    assert_eq!(
        events::<IBridge::Unpaused>(&receipt),
        vec![IBridge::Unpaused { guardian: f.anvil.dev_address(GUARDIAN) }]
    );
    send(f.bridge(RELAYER).mint(event_id, user, amount, sig.rx, sig.ry, sig.z)).await;
    send(f.bridge(USER).burnToBitcoin(10, Bytes::from(vec![0x51, 0x20]))).await;
    assert_eq!(f.balance(user).await, U256::from(1_000 + amount - 10));
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
    assert_eq!(as_user.burnToBitcoin(1_000, script.clone()).call().await.unwrap(), 0);
    let receipt = send(as_user.burnToBitcoin(1_000, script.clone())).await;
    println!("gas: burnToBitcoin (receipt gasUsed) = {}", receipt.gas_used);
    assert_eq!(
        events::<IBridge::BurnToBitcoin>(&receipt),
        vec![IBridge::BurnToBitcoin { nonce: 0, from: user, amountSats: 1_000, btcScriptPubKey: script.clone() }]
    );
    assert_eq!(
        events::<IWrappedBTC::Transfer>(&receipt),
        vec![IWrappedBTC::Transfer { from: user, to: Address::ZERO, value: U256::from(1_000u64) }]
    );

    let receipt = send(as_user.burnToChain(56, dest, 2_000)).await;
    println!("gas: burnToChain (receipt gasUsed) = {}", receipt.gas_used);
    assert_eq!(
        events::<IBridge::BurnToChain>(&receipt),
        vec![IBridge::BurnToChain { nonce: 1, from: user, destChainId: 56, recipient: dest, amountSats: 2_000 }]
    );
    let receipt = send(as_user.burnToBitcoin(3_000, script.clone())).await;
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

    assert_eq!(f.balance(user).await, U256::from(100_000u64 - 6_000));
    assert_eq!(f.token().totalSupply().call().await.unwrap(), U256::from(100_000u64 - 6_000));
    assert_eq!(f.token().allowance(user, f.deployed.bridge).call().await.unwrap(), U256::ZERO);

    // Refused requests.
    let invalid_amount = || IBridgeErrors::InvalidAmount(IBridge::InvalidAmount {});
    let invalid_script = || IBridgeErrors::InvalidScript(IBridge::InvalidScript {});
    let invalid_chain = || IBridgeErrors::InvalidChain(IBridge::InvalidChain {});
    reverts(as_user.burnToBitcoin(0, script.clone()), invalid_amount()).await;
    reverts(as_user.burnToBitcoin(1, Bytes::new()), invalid_script()).await;
    reverts(as_user.burnToBitcoin(1, Bytes::from(vec![0u8; 10_001])), invalid_script()).await;
    send(as_user.burnToBitcoin(1, Bytes::from(vec![0x6a; 10_000]))).await;
    reverts(as_user.burnToChain(56, dest, 0), invalid_amount()).await;
    reverts(as_user.burnToChain(0, dest, 1), invalid_chain()).await;
    reverts(as_user.burnToChain(CHAIN_ID, dest, 1), invalid_chain()).await;
    reverts(as_user.burnToChain(56, Address::ZERO, 1), IBridgeErrors::InvalidRecipient(IBridge::InvalidRecipient {}))
        .await;
    // More than the balance: the token refuses (an ERC-6093 error outside IBridge).
    let too_much = as_user.burnToBitcoin(1_000_000, script.clone()).send().await;
    assert!(too_much.is_err(), "burning more than the balance must revert");
    // Someone without tokens cannot burn anyone else's.
    assert!(f.bridge(RELAYER).burnToChain(56, dest, 1).send().await.is_err());
    assert_eq!(as_user.burnNonce().call().await.unwrap(), 4);
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
