//! The operator's command line, as a process: a broken config is named key by key by
//! `config check` and refused by `run` (file and `BTCFI_` environment alike); `backup`
//! writes a checkpoint that opens as the node's database, and refuses what it must.

use crate::common::{Setup, Validator, node_bin};
use btcfi_store::{Batch, Cf, Store};
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A regtest P2TR address (the key is the curve's generator: no one holds its tweak).
fn vault() -> String {
    use bitcoin::key::{TweakedPublicKey, XOnlyPublicKey};
    let x: XOnlyPublicKey = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".parse().unwrap();
    bitcoin::Address::p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(x), bitcoin::Network::Regtest).to_string()
}

/// A validator home with a complete, valid config (no chain is contacted by `check`).
fn home() -> Validator {
    let v = Validator::init(&crate::common::node_bin(), "v0");
    let setup = Setup {
        btc_url: "http://127.0.0.1:18443".into(),
        btc_user: "u".into(),
        btc_password: "secret-password".into(),
        vault: vault(),
        start_height: 0,
        evm: vec![crate::common::EvmChain {
            name: "ethereum".into(),
            chain_id: 31337,
            url: "http://127.0.0.1:8545".into(),
            bridge: "0x00000000000000000000000000000000000000b1".into(),
        }],
        extra: String::new(),
    };
    v.write_config(&[&v], &setup);
    v
}

fn check(v: &Validator, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(node_bin());
    c.args(["config", "check", "--home"]).arg(v.home.path());
    c.envs(env.iter().copied());
    c.output().unwrap()
}

/// `run` on `v`, which must exit by itself within a deadline.
fn run_exits(v: &Validator, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(node_bin());
    c.args(["run", "--home"]).arg(v.home.path()).envs(env.iter().copied());
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("run kept running on a broken config");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn edit(v: &Validator, from: &str, to: &str) {
    let path = v.home.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_broken_config_is_named_by_check_and_refused_by_run() {
    let v = home();
    let ok = check(&v, &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let shown = String::from_utf8_lossy(&ok.stdout);
    assert!(shown.contains("rpc_password = \"***\"") && !shown.contains("secret-password"), "secret masked: {shown}");

    // Two bad values in the file: both named, with the reason; `run` refuses too.
    edit(&v, "confirmations = 2", "confirmations = 0");
    edit(&v, "[bitcoin]\n", "[signing]\ntimeout_ms = 5\n\n[bitcoin]\n");
    let bad = check(&v, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bitcoin.confirmations") && err.contains("signing.timeout_ms"), "{err}");
    let refused = run_exits(&v, &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("bitcoin.confirmations") && err.contains("signing.timeout_ms"), "{err}");
    edit(&v, "confirmations = 0", "confirmations = 2");
    edit(&v, "[signing]\ntimeout_ms = 5\n\n", "");

    // A value of the wrong form: named by its key.
    edit(&v, &format!("listen = \"127.0.0.1:{}\"", v.api_port), "listen = \"not-an-address\"");
    let bad = check(&v, &[]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("api.listen"), "{}", String::from_utf8_lossy(&bad.stderr));
    let refused = run_exits(&v, &[]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("api.listen"));
    edit(&v, "listen = \"not-an-address\"", &format!("listen = \"127.0.0.1:{}\"", v.api_port));

    // Fine in the file, broken from the environment: named by its key too.
    assert!(check(&v, &[]).status.success());
    let env = [("BTCFI_BITCOIN__MIN_DEPOSIT", "lots")];
    let bad = check(&v, &env);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bitcoin.min_deposit"), "{err}");
    let refused = run_exits(&v, &env);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bitcoin.min_deposit"));

    // An unknown key is a mistake, not something to ignore.
    edit(&v, "[bitcoin]\n", "[bitcoin]\nconfirmatons = 3\n");
    let bad = check(&v, &[]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("confirmatons"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn backup_writes_a_checkpoint_that_opens_as_the_database() {
    let v = home();
    let data = v.home.path().join("data");
    {
        let store = Store::open(&data).unwrap();
        let mut b = Batch::new();
        b.put(Cf::Attestations, b"event-1", b"certified");
        b.put(Cf::Releases, b"rel/1", b"confirmed");
        store.commit(b).unwrap();
    }
    let out = v.home.path().join("backup-1");
    let backup = |to: &std::path::Path| {
        Command::new(node_bin()).args(["backup", "--home"]).arg(v.home.path()).arg("--out").arg(to).output().unwrap()
    };
    let done = backup(&out);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    // Restored in place of data/, the backup is the database as it was.
    let restored = Store::open(&out).unwrap();
    assert_eq!(restored.get(Cf::Attestations, b"event-1").unwrap().as_deref(), Some(&b"certified"[..]));
    assert_eq!(restored.get(Cf::Releases, b"rel/1").unwrap().as_deref(), Some(&b"confirmed"[..]));
    drop(restored);
    // An existing directory is never overwritten.
    let again = backup(&out);
    assert!(!again.status.success(), "backup over an existing directory");
    // A running node holds the database: backup says to stop it.
    let held = Store::open(&data).unwrap();
    let locked = backup(&v.home.path().join("backup-2"));
    assert!(!locked.status.success());
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("stop the node"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    drop(held);
}
