//! The chain configurations shipped in `configs/chains/` parse into the adapters'
//! typed settings and carry the mainnet finality rules.

use btcfi_chain_adapters::{
    ChainsConfig,
    evm::{Finality, FinalityTag},
};
use btcfi_types::{ChainId, Sats};

fn load(text: &str) -> Result<ChainsConfig, config::ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()?
        .try_deserialize()
}

fn file(name: &str) -> String {
    let path = btcfi_testkit::repo_root().join("configs/chains").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn mainnet_defaults_are_the_documented_finality_rules() {
    let text = file("mainnet.toml");
    // As shipped, the placeholders stop the node.
    let err = match load(&text) {
        Err(e) => e.to_string(),
        Ok(c) => c.validate().expect_err("placeholders must not validate").join("\n"),
    };
    assert!(err.contains("bridge") || err.contains("vault_address"), "{err}");

    // With real values filled in, it validates.
    let filled = text
        .replace(
            "REPLACE-WITH-VAULT-ADDRESS-FROM-DKG",
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",
        )
        .replace("REPLACE-WITH-RPC-URL", "https://rpc-a.example")
        .replace("REPLACE-WITH-SECOND-RPC-URL", "https://rpc-b.example")
        .replace("REPLACE-WITH-BRIDGE-ADDRESS", "0x00000000000000000000000000000000000000b1");
    let cfg = load(&filled).expect("filled mainnet config parses");
    cfg.validate().expect("filled mainnet config validates");
    assert_eq!(cfg.bitcoin.network, bitcoin::Network::Bitcoin);
    assert_eq!(cfg.bitcoin.confirmations, 6);
    assert_eq!(cfg.bitcoin.confirmations_for(Sats(100_000_000)), 6);
    assert_eq!(cfg.bitcoin.confirmations_for(Sats(600_000_000)), 12);
    assert_eq!(cfg.bitcoin.confirmations_for(Sats(6_000_000_000)), 24);
    let expect = [("ethereum", 1), ("polygon", 137), ("bsc", 56), ("arbitrum", 42161)];
    assert_eq!(cfg.evm.len(), expect.len());
    for (name, id) in expect {
        let c = cfg.evm_chain(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(c.chain_id, ChainId(id));
        assert_eq!(c.finality, Finality::Tag(FinalityTag::Finalized), "{name}");
        assert_eq!(c.endpoints.len(), 2, "{name}: a second endpoint for failover");
        assert_eq!(c.min_agreeing_endpoints, 2, "{name}: an event counts once two endpoints agree");
    }
}

#[test]
fn devnet_config_matches_the_devnet_script() {
    let text = file("devnet.toml");
    let up = std::fs::read_to_string(btcfi_testkit::repo_root().join("scripts/devnet/up.sh")).unwrap();
    let cfg = load(&text.replace(
        "REPLACE-WITH-VAULT-ADDRESS-FROM-DKG",
        "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6",
    ))
    .expect("devnet config parses");
    cfg.validate().expect("devnet config validates");
    assert!(cfg.bitcoin.confirmations >= 2, "reorg safety is exercised on the devnet");
    assert!(up.contains(":-18443}") && cfg.bitcoin.rpc_url.ends_with(":18443"));
    for (i, c) in cfg.evm.iter().enumerate() {
        assert!(up.contains(&c.chain_id.0.to_string()), "{} chain id not in up.sh", c.name);
        assert!(c.endpoints[0].ends_with(&format!(":{}", 8545 + i)));
        assert!(matches!(c.finality, Finality::Depth(d) if d >= 1));
    }
}

#[test]
fn a_broken_chain_config_names_the_key() {
    let text = file("devnet.toml").replace("confirmations = 2", "confirmations = 0");
    let errs = load(&text).expect("parses").validate().expect_err("0 confirmations is invalid");
    assert!(errs.iter().any(|e| e.contains("bitcoin.confirmations")), "{errs:?}");
    let dup = file("devnet.toml").replace("chain_id = 31338", "chain_id = 31337");
    let errs = load(&dup).expect("parses").validate().expect_err("duplicate chain id");
    assert!(errs.iter().any(|e| e.contains("chain_id") && e.contains("twice")), "{errs:?}");
}
