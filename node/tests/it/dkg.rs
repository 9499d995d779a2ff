//! `btcfi-node dkg` among real validator processes over libp2p on loopback: 4 and 7
//! validators end with the same group keys; a validator that sends bad round-2 shares
//! is named by the others and nothing is stored; keys open only with their passphrase.

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

const PASSPHRASE: &str = "devnet passphrase, not for mainnet";

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_btcfi-node"))
}

struct Member {
    name: String,
    home: tempfile::TempDir,
    peer_id: String,
    port: u16,
}

fn members(n: usize) -> Vec<Member> {
    let ms: Vec<Member> = (0..n)
        .map(|i| {
            let home = tempfile::tempdir().unwrap();
            let port = btcfi_testkit::free_port();
            let out = Command::new(node_bin()).args(["init", "--home"]).arg(home.path()).output().unwrap();
            assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
            let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            Member { name: format!("v{i}"), home, peer_id, port }
        })
        .collect();
    let set: String = ms
        .iter()
        .map(|m| {
            format!(
                "[[validators]]\nname = \"{}\"\npeer_id = \"{}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\n\n",
                m.name, m.peer_id, m.port
            )
        })
        .collect();
    for m in &ms {
        let cfg = format!(
            "[node]\nname = \"{}\"\nepoch = 1\n\n[p2p]\nlisten = \"/ip4/127.0.0.1/tcp/{}\"\n\n{set}[api]\nlisten = \"127.0.0.1:{}\"\n\n\
             [log]\nformat = \"json\"\nfilter = \"info\"\n\n[bitcoin]\nrpc_url = \"http://127.0.0.1:1\"\nrpc_user = \"u\"\n\
             rpc_password = \"p\"\nnetwork = \"regtest\"\nconfirmations = 2\nmin_deposit = 10000\nreorg_window = 20\n",
            m.name,
            m.port,
            btcfi_testkit::free_port()
        );
        std::fs::write(m.home.path().join("config.toml"), cfg).unwrap();
    }
    ms
}

fn dkg(home: &Path, fault: Option<&str>) -> Command {
    let mut c = Command::new(node_bin());
    c.args(["dkg", "--timeout-secs", "60", "--home"]).arg(home).env("BTCFI_KEY_PASSPHRASE", PASSPHRASE);
    if let Some(f) = fault {
        c.args(["--test-fault", f]);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs `dkg` on every member at once (member `faulty` with the fault) and collects outputs.
fn run_all(ms: &[Member], faulty: Option<(usize, &str)>) -> Vec<Output> {
    let children: Vec<_> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| dkg(m.home.path(), faulty.filter(|(f, _)| *f == i).map(|(_, x)| x)).spawn().unwrap())
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn agree(n: usize) {
    let ms = members(n);
    let outs = run_all(&ms, None);
    let mut results = Vec::new();
    for (m, o) in ms.iter().zip(&outs) {
        assert!(o.status.success(), "{} failed: {}", m.name, String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        results.push(v);
    }
    let first = &results[0];
    assert!(first["btc"]["vault_address"].as_str().unwrap().starts_with("bcrt1p"), "{first}");
    assert!(first["evm"]["x"].as_str().unwrap().starts_with("0x"), "{first}");
    assert_ne!(first["evm"]["group_key"], first["btc"]["group_key"], "two independent keys");
    for (m, r) in ms.iter().zip(&results) {
        assert_eq!(r, first, "{} holds other group keys", m.name);
    }
    // Stored: a second run refuses to overwrite them.
    let again = dkg(ms[0].home.path(), None).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn four_validators_agree_on_both_group_keys() {
    agree(4);
}

#[test]
fn seven_validators_agree_on_both_group_keys() {
    agree(7);
}

#[test]
fn a_validator_sending_bad_round2_shares_is_named_and_nothing_is_stored() {
    let ms = members(4);
    let outs = run_all(&ms, Some((2, "swap-round2-shares")));
    let culprit = format!("v2 ({})", ms[2].peer_id);
    let mut named = 0;
    for (i, (m, o)) in ms.iter().zip(&outs).enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{} should fail", m.name);
        if i != 2 && err.contains("culprit(s): ") && err.contains(&culprit) && err.contains("share") {
            named += 1;
        }
    }
    assert_eq!(
        named,
        3,
        "every honest validator names v2: {:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    );
    // Nothing stored: after the culprit is replaced by an honest run, a DKG succeeds.
    let outs = run_all(&ms, None);
    assert!(
        outs.iter().all(|o| o.status.success()),
        "{:?}",
        outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).collect::<Vec<_>>()
    );
}
