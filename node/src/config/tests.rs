use super::*;

const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

fn home_with(cfg: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
    dir
}

fn good() -> String {
    format!(
        r#"[node]
name = "v0"
[p2p]
listen = "/ip4/127.0.0.1/tcp/9000"
[[validators]]
name = "v0"
peer_id = "{PEER}"
address = "/ip4/127.0.0.1/tcp/9000"
[api]
listen = "127.0.0.1:8080"
[bitcoin]
rpc_url = "http://127.0.0.1:18443"
rpc_user = "u"
rpc_password = "secret"
network = "regtest"
vault_address = "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6"
confirmations = 2
min_deposit = 10000
"#
    )
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn env_overrides_reach_nested_keys_and_other_vars_are_ignored() {
    let home = home_with(&good());
    let cfg = NodeConfig::load(
        home.path(),
        env(&[("BTCFI_API__LISTEN", "127.0.0.1:9999"), ("BTCFI_BITCOIN__CONFIRMATIONS", "7"), ("BTCFI_DEPS", "/x")]),
    )
    .unwrap();
    assert_eq!(cfg.api.listen.port(), 9999);
    assert_eq!(cfg.bitcoin.confirmations, 7);
    assert!(cfg.redacted_toml().contains("\"***\"") && !cfg.redacted_toml().contains("secret"));
}

/// A turn too short for a proposer to send in its middle half, between ticks a
/// second apart, is refused at load, not discovered as a validator that never
/// proposes.
#[test]
fn a_takeover_too_short_for_a_proposing_window_is_refused() {
    let short = format!("{}\n[signing]\ntakeover_ms = 1000\n", good());
    let err = NodeConfig::load(home_with(&short).path(), env(&[])).unwrap_err().to_string();
    assert!(err.contains("signing.takeover_ms: at least 4000"), "{err}");
    let ok = format!("{}\n[signing]\ntakeover_ms = 4000\n", good());
    NodeConfig::load(home_with(&ok).path(), env(&[])).expect("4000 ms is enough");
}

/// The annotated examples in configs/node/ parse and validate once their
/// placeholders are filled, and refuse to as shipped.
#[test]
fn shipped_examples_validate_once_filled() {
    let dir = btcfi_testkit::repo_root().join("configs/node");
    let mainnet_vault = "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr";
    let script = mainnet_vault
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .unwrap()
        .assume_checked()
        .script_pubkey();
    let testnet_vault = bitcoin::Address::from_script(&script, bitcoin::Network::Testnet4).unwrap().to_string();
    for (file, vault) in [
        ("mainnet.toml", mainnet_vault),
        ("testnet.toml", testnet_vault.as_str()),
        ("devnet.toml", "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6"),
    ] {
        // Secret files as an operator would leave them: private to the node's user.
        let secrets = tempfile::tempdir().unwrap();
        let private = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = secrets.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p.display().to_string()
        };
        let passphrase = private("key-passphrase", "a long enough passphrase\n");
        let relayer = private("relayer-key", &format!("0x{}\n", "11".repeat(32)));
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .replace("/etc/btcfi/key-passphrase", &passphrase)
            .replace("/etc/btcfi/relayer-key", &relayer);
        let shipped = home_with(&text);
        assert!(NodeConfig::load(shipped.path(), env(&[])).is_err(), "{file}: placeholders must not validate");
        let filled = text
            .replace("REPLACE-WITH-THIS-VALIDATOR-NAME", "a")
            .replace("REPLACE-WITH-PEER-ID", PEER)
            .replace("REPLACE-WITH-VAULT-ADDRESS-FROM-DKG", vault)
            .replace("REPLACE-WITH-RPC-URL", "https://rpc-a.example")
            .replace("REPLACE-WITH-SECOND-RPC-URL", "https://rpc-b.example")
            .replace("REPLACE-WITH-BRIDGE-ADDRESS", "0x00000000000000000000000000000000000000b1");
        let home = home_with(&filled);
        let cfg = NodeConfig::load(home.path(), env(&[])).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cfg.evm.len(), 4, "{file}");
        assert!(cfg.bitcoin.confirmations >= 2, "{file}");
    }
}

/// Secrets by file: read from a file private to the node's user; a file others may
/// read is refused, naming the key and the fix.
#[test]
fn secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("relayer-key");
    std::fs::write(&key, format!("0x{}\n", "22".repeat(32))).unwrap();
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let with_files = format!(
        "{}\n[relayer]\nprivate_key_file = {:?}\n\n[keys]\npassphrase_file = {:?}\n",
        good(),
        key.display().to_string(),
        pass.display().to_string()
    );
    for p in [&key, &pass] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = NodeConfig::load(home_with(&with_files).path(), env(&[])).unwrap_err().to_string();
    assert!(err.contains("relayer.private_key_file") && err.contains("chmod 600"), "{err}");
    assert!(err.contains("keys.passphrase_file"), "{err}");
    for p in [&key, &pass] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cfg = NodeConfig::load(home_with(&with_files).path(), env(&[])).unwrap();
    let signer = cfg.relayer_signer().expect("the relayer key from its file");
    assert_eq!(signer.to_bytes().0, [0x22; 32]);
    let file = cfg.keys.passphrase_file.as_deref().expect("configured");
    assert_eq!(crate::keys::read_secret_file(file).unwrap(), "correct horse battery staple");
    assert!(!cfg.redacted_toml().contains("2222"), "the key itself is never printed");
    // Both a key and a key file: ambiguous, refused.
    let both = with_files.replace("[relayer]\n", &format!("[relayer]\nprivate_key = \"0x{}\"\n", "33".repeat(32)));
    let err = NodeConfig::load(home_with(&both).path(), env(&[])).unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
}

#[test]
fn bad_values_name_their_keys() {
    let home = home_with(&good().replace("confirmations = 2", "confirmations = 0").replace(PEER, "not-a-peer"));
    let err = NodeConfig::load(home.path(), env(&[])).unwrap_err().to_string();
    assert!(err.contains("bitcoin.confirmations"), "{err}");
    assert!(err.contains("validators[0].peer_id"), "{err}");
    let typo = home_with(&good().replace("[api]", "[apii]"));
    let err = NodeConfig::load(typo.path(), env(&[])).unwrap_err().to_string();
    assert!(err.contains("apii"), "{err}");
    let bad_env = NodeConfig::load(home_with(&good()).path(), env(&[("BTCFI_API__LISTEN", "nowhere")]));
    assert!(bad_env.unwrap_err().to_string().contains("api"));
}

/// A config that still asks for the removed ledger engine is refused at load and says
/// which engine is left; `book` (or nothing) loads.
#[test]
fn a_config_asking_for_the_removed_ledger_engine_is_refused() {
    let ledger = format!("{}\n[release]\nengine = \"ledger\"\n", good());
    let err = format!("{:#}", NodeConfig::load(home_with(&ledger).path(), env(&[])).unwrap_err());
    assert!(err.contains("ledger") && err.contains("book"), "{err}");
    let book = format!("{}\n[release]\nengine = \"book\"\n", good());
    assert_eq!(NodeConfig::load(home_with(&book).path(), env(&[])).unwrap().release.engine, ReleaseEngine::Book);
}
