//! The devnet end to end, as an operator runs it: `scripts/devnet/up.sh --validators 4`
//! on free ports in a private directory (bitcoind, four anvil chains, the bridges, a DKG
//! among four `btcfi-node` validators, the EVM group key registered in every bridge),
//! then `scripts/devnet/demo.sh` (a deposit to every chain, minted, burned back to
//! Bitcoin, paid out). Afterwards the chains themselves and every validator's API and
//! metrics are checked against what the demo reports: each deposit minted exactly once
//! with the right amount and recipient, each burn paid exactly `amount - peg_out_fee`
//! from the vault, every validator certified and signed what happened.
//! `scripts/devnet/down.sh` runs at the end whatever happens (a drop guard).

use btcfi_types::{ChainId, DepositMemo, EventId, EvmAddress, TxHash};
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const VALIDATORS: usize = 4;
/// Statuses of an event that is not (or no longer) certified; anything else (certified,
/// signed, and what follows) means the quorum certified it.
const NOT_CERTIFIED: [&str; 5] = ["", "unknown", "observed", "rejected", "reorged"];

// ---------------------------------------------------------------- the devnet

/// A devnet in its own directory; stopped (down.sh) on drop. The directory (logs) is
/// removed after a passing test and kept after a failing one.
struct Devnet {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Devnet {
    fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("btcfi-devnet-e2e-{}-{nanos}", std::process::id()));
        let mut taken = BTreeSet::new();
        let btc = free_block(1, &mut taken);
        let evm = free_block(4, &mut taken);
        let p2p = free_block(VALIDATORS as u16, &mut taken);
        let api = free_block(VALIDATORS as u16, &mut taken);
        let mut env = vec![
            ("BTCFI_DEVNET_DIR".to_owned(), dir.display().to_string()),
            ("BTCFI_DEVNET_BTC_RPC_PORT".to_owned(), btc.to_string()),
            ("BTCFI_DEVNET_EVM_BASE_PORT".to_owned(), evm.to_string()),
            ("BTCFI_DEVNET_P2P_BASE_PORT".to_owned(), p2p.to_string()),
            ("BTCFI_DEVNET_API_BASE_PORT".to_owned(), api.to_string()),
            ("BTCFI_DEVNET_BLOCK_INTERVAL".to_owned(), "2".to_owned()),
        ];
        // Build (or find up to date) the node in the target dir this test was built in,
        // not in a second one.
        if std::env::var_os("CARGO_TARGET_DIR").is_none()
            && let Ok(exe) = std::env::current_exe()
            && exe.parent().and_then(Path::file_name).is_some_and(|n| n == "deps")
            && let Some(target) = exe.ancestors().nth(3)
        {
            env.push(("CARGO_TARGET_DIR".to_owned(), target.display().to_string()));
        }
        Self { dir, env }
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(btcfi_testkit::repo_root().join("scripts/devnet").join(name));
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn description(&self) -> Value {
        let path = self.dir.join("devnet.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .expect("devnet.json is JSON")
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        match self.script("down.sh").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("down.sh failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("down.sh did not run: {e}"),
        }
        if std::thread::panicking() {
            for i in 0..VALIDATORS {
                let log = self.dir.join(format!("logs/v{i}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- last lines of {}:", log.display());
                for l in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{}", l.chars().take(400).collect::<String>());
                }
            }
            eprintln!("devnet state and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `len` consecutive loopback ports, free a moment ago, below the kernel's ephemeral
/// range (where outgoing connections land), distinct from `taken`, and reserved for this
/// process as `free_port()` reserves its ports, so no other test is handed them.
fn free_block(len: u16, taken: &mut BTreeSet<u16>) -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (low, high) =
        if ephemeral_low > 12_000 { (10_000u64, u64::from(ephemeral_low) - 100) } else { (40_000, 60_000) };
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        ^ u64::from(std::process::id()).rotate_left(32);
    loop {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let base = u16::try_from(low + (seed >> 33) % (high - low - u64::from(len))).expect("below 65536");
        let range = base..base + len;
        if range.clone().all(|p| {
            !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() && btcfi_testkit::reserve_port(p)
        }) {
            taken.extend(range);
            return base;
        }
    }
}

/// Runs a child to completion within `limit` (killed and failed otherwise).
fn run(what: &str, mut child: Child, limit: Duration) {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("waiting for a child") {
            Some(status) => {
                assert!(status.success(), "{what} failed ({status}); its output is above");
                return;
            }
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ---------------------------------------------------------------- HTTP and JSON-RPC

/// One HTTP/1.0 request to a loopback URL; (status, body).
fn http(method: &str, url: &str, body: Option<&str>, auth: Option<(&str, &str)>) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("{url}: only http://"));
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr = host.to_socket_addrs().ok().and_then(|mut a| a.next()).unwrap_or_else(|| panic!("{url}: bad host"));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{url}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!("Authorization: Basic {}\r\n", base64(&format!("{u}:{p}"))));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap_or_else(|e| panic!("{url}: {e}"));
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn get_json(url: &str) -> Value {
    let (status, body) = http("GET", url, None, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

fn rpc(url: &str, auth: Option<(&str, &str)>, method: &str, params: Value) -> Value {
    let req =
        json!({"jsonrpc": if auth.is_some() { "1.0" } else { "2.0" }, "id": 1, "method": method, "params": params});
    let (status, body) = http("POST", url, Some(&req.to_string()), auth);
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} on {url}: HTTP {status} {e}: {body}"));
    assert!(v["error"].is_null(), "{method} on {url}: {}", v["error"]);
    v["result"].clone()
}

fn keccak_selector(sig: &str) -> String {
    alloy::primitives::keccak256(sig.as_bytes()).to_string()
}

fn word(data: &str, i: usize) -> String {
    let d = data.trim_start_matches("0x");
    d.get(64 * i..64 * (i + 1)).unwrap_or_else(|| panic!("ABI data too short: {data}")).to_owned()
}

fn word_u64(data: &str, i: usize) -> u64 {
    let w = word(data, i);
    assert!(w[..48].chars().all(|c| c == '0'), "{w} does not fit u64");
    u64::from_str_radix(&w[48..], 16).unwrap()
}

fn topic_address(t: &Value) -> String {
    format!("0x{}", &t.as_str().unwrap()[26..])
}

fn sats(btc: &Value) -> u64 {
    (btc.as_f64().unwrap_or_else(|| panic!("{btc} is not an amount")) * 1e8).round() as u64
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

// ---------------------------------------------------------------- the test

#[test]
fn devnet_round_trip_on_every_chain() {
    let devnet = Devnet::new();
    let t0 = Instant::now();
    let up = devnet.script("up.sh").args(["--validators", &VALIDATORS.to_string()]).spawn().expect("bash up.sh");
    run("scripts/devnet/up.sh", up, Duration::from_secs(300));
    eprintln!("up.sh done in {:?}", t0.elapsed());

    // devnet.json keeps its documented shape.
    let d = devnet.description();
    for k in ["rpc_url", "rpc_user", "rpc_password", "vault_address", "confirmations"] {
        assert!(!d["bitcoin"][k].is_null(), "devnet.json bitcoin.{k} missing: {d}");
    }
    let evm = d["evm"].as_array().expect("devnet.json evm");
    assert_eq!(evm.len(), 4, "four EVM chains");
    for c in evm {
        for k in ["name", "chain_id", "rpc_url", "bridge_address", "token_address"] {
            assert!(!c[k].is_null(), "devnet.json evm[].{k} missing: {c}");
        }
    }
    let validators = d["validators"].as_array().expect("devnet.json validators");
    assert_eq!(validators.len(), VALIDATORS);
    for v in validators {
        for k in ["name", "api_url", "metrics_url", "peer_id", "home"] {
            assert!(!v[k].is_null(), "devnet.json validators[].{k} missing: {v}");
        }
    }
    let vault = d["bitcoin"]["vault_address"].as_str().unwrap().to_owned();
    assert!(vault.starts_with("bcrt1p"), "the vault is the DKG's P2TR address: {vault}");
    let fee = d["bitcoin"]["peg_out_fee"].as_u64().expect("devnet.json bitcoin.peg_out_fee");

    // The DKG's EVM key is every bridge's group key.
    let (x, y) = (d["evm_group_key"]["x"].as_str().unwrap(), d["evm_group_key"]["y"].as_str().unwrap());
    for c in evm {
        let r = rpc(
            c["rpc_url"].as_str().unwrap(),
            None,
            "eth_call",
            json!([{"to": c["bridge_address"], "data": &keccak_selector("groupKey()")[..10]}, "latest"]),
        );
        let r = r.as_str().unwrap();
        assert_eq!(format!("0x{}", word(r, 0)), x, "{}: groupKey().px", c["name"]);
        assert_eq!(format!("0x{}", word(r, 1)), y, "{}: groupKey().py", c["name"]);
    }

    // A burn that would leave less than its script type's dust after the peg-out fee
    // (2,400 sat to P2PKH: 400 sat, below P2PKH's 546) is refused by every bridge, with
    // the minimum it needs; the round trips right after it are paid.
    let p2pkh = format!("76a914{}88ac", "11".repeat(20));
    let calldata = format!(
        "{}{:064x}{:064x}{:064x}{}{}",
        &keccak_selector("burnToBitcoin(uint64,bytes)")[..10],
        fee + 400,
        64,
        25,
        p2pkh,
        "0".repeat(14)
    );
    let below = &keccak_selector("AmountBelowMinimum(uint64)")[..10];
    for c in evm {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
            "params": [{"to": c["bridge_address"], "from": format!("0x{}", "ab".repeat(20)), "data": calldata}, "latest"]});
        let (_, body) = http("POST", c["rpc_url"].as_str().unwrap(), Some(&req.to_string()), None);
        let v: Value = serde_json::from_str(&body).unwrap();
        let data =
            v["error"]["data"].as_str().unwrap_or_else(|| panic!("{}: the small burn must revert: {v}", c["name"]));
        assert!(data.starts_with(below), "{}: AmountBelowMinimum expected: {v}", c["name"]);
        assert_eq!(word_u64(&data[10..], 0), fee + 546, "{}: the minimum to P2PKH", c["name"]);
    }

    // The round trips.
    let summary_path = devnet.dir.join("demo-summary.json");
    let demo =
        devnet.script("demo.sh").args(["--timeout", "240", "--json"]).arg(&summary_path).spawn().expect("bash demo.sh");
    run("scripts/devnet/demo.sh", demo, Duration::from_secs(600));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    let chains = summary["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 4, "a round trip per chain: {summary}");
    let recipient = summary["recipient"].as_str().unwrap().to_lowercase();
    let relayers: Vec<String> =
        validators.iter().filter_map(|v| v["relayer_address"].as_str().map(str::to_lowercase)).collect();

    let btc_url = d["bitcoin"]["rpc_url"].as_str().unwrap();
    let btc_auth = Some((d["bitcoin"]["rpc_user"].as_str().unwrap(), d["bitcoin"]["rpc_password"].as_str().unwrap()));
    let btc = |method: &str, params: Value| rpc(btc_url, btc_auth, method, params);

    let minted_topic = keccak_selector("Minted(bytes32,address,uint64)");
    let burn_topic = keccak_selector("BurnToBitcoin(uint64,address,uint64,bytes)");
    let transfer_topic = keccak_selector("Transfer(address,address,uint256)");
    let zero_topic = format!("0x{}", "0".repeat(64));
    let mut amounts = BTreeSet::new();
    let mut burn_addresses = BTreeSet::new();
    let mut release_txs = BTreeSet::new();
    let mut deposited = 0u64;
    let mut paid = 0u64;

    for s in chains {
        let name = s["name"].as_str().unwrap();
        let c = evm.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} not in devnet.json"));
        let url = c["rpc_url"].as_str().unwrap();
        let chain_id = c["chain_id"].as_u64().unwrap();
        let amount = s["amount_sats"].as_u64().unwrap();
        assert!(amounts.insert(amount), "distinct amounts per chain: {summary}");
        deposited += amount;
        assert_eq!(s["recipient"].as_str().unwrap().to_lowercase(), recipient);

        // The deposit on Bitcoin: `amount` to the vault at vout, with this chain's memo.
        let (txid, vout) = (s["deposit"]["txid"].as_str().unwrap(), s["deposit"]["vout"].as_u64().unwrap());
        let tx = btc("getrawtransaction", json!([txid, true]));
        let out = &tx["vout"][vout as usize];
        assert_eq!(out["scriptPubKey"]["address"], vault.as_str(), "{name}: the deposit pays the vault");
        assert_eq!(sats(&out["value"]), amount, "{name}: deposit amount");
        let memo = DepositMemo { dest_chain: ChainId(chain_id), recipient: recipient.parse::<EvmAddress>().unwrap() };
        let memo_hex = hex::encode(memo.encode());
        assert!(
            tx["vout"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["scriptPubKey"]["hex"].as_str().unwrap().ends_with(&memo_hex)),
            "{name}: the deposit carries the memo {memo_hex}"
        );
        let event = EventId::new(ChainId::BITCOIN, txid.parse::<TxHash>().unwrap(), u32::try_from(vout).unwrap());
        let contract_id = format!("0x{}", hex::encode(event.contract_id()));

        // Minted exactly once, for this deposit, to the recipient, by a validator's relayer.
        let bridge = c["bridge_address"].as_str().unwrap();
        let minted = rpc(
            url,
            None,
            "eth_getLogs",
            json!([{"address": bridge, "fromBlock": "0x0", "toBlock": "latest", "topics": [&minted_topic]}]),
        );
        let minted = minted.as_array().unwrap();
        assert_eq!(minted.len(), 1, "{name}: one Minted event on the bridge: {minted:?}");
        let m = &minted[0];
        assert_eq!(m["topics"][1], contract_id.as_str(), "{name}: minted for the deposit's event id");
        assert_eq!(topic_address(&m["topics"][2]), recipient, "{name}: minted to the recipient");
        assert_eq!(word_u64(m["data"].as_str().unwrap(), 0), amount, "{name}: minted amount");
        assert_eq!(m["transactionHash"], s["mint"]["tx_hash"], "{name}: the mint demo.sh saw");
        let mint_tx = rpc(url, None, "eth_getTransactionByHash", json!([m["transactionHash"]]));
        let relayer = mint_tx["from"].as_str().unwrap().to_lowercase();
        assert!(
            relayers.is_empty() || relayers.contains(&relayer),
            "{name}: mint relayed by {relayer}, not a validator"
        );

        // Burned once, the whole amount, to the demo's script.
        let burns = rpc(
            url,
            None,
            "eth_getLogs",
            json!([{"address": bridge, "fromBlock": "0x0", "toBlock": "latest", "topics": [&burn_topic]}]),
        );
        let burns = burns.as_array().unwrap();
        assert_eq!(burns.len(), 1, "{name}: one BurnToBitcoin event: {burns:?}");
        let data = burns[0]["data"].as_str().unwrap();
        assert_eq!(word_u64(data, 0), amount, "{name}: burned amount");
        let script_len = usize::try_from(word_u64(data, 2)).unwrap();
        let script = &data.trim_start_matches("0x")[192..192 + 2 * script_len];
        assert_eq!(script, s["burn"]["script_pubkey"].as_str().unwrap(), "{name}: burn script");

        // The token: one mint and one burn of `amount`; nothing left.
        let token = c["token_address"].as_str().unwrap();
        let transfers = rpc(
            url,
            None,
            "eth_getLogs",
            json!([{"address": token, "fromBlock": "0x0", "toBlock": "latest", "topics": [&transfer_topic]}]),
        );
        let transfers: Vec<(String, String, u64)> = transfers
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    topic_address(&l["topics"][1]),
                    topic_address(&l["topics"][2]),
                    word_u64(l["data"].as_str().unwrap(), 0),
                )
            })
            .collect();
        let zero = topic_address(&json!(zero_topic));
        assert_eq!(
            transfers,
            vec![(zero.clone(), recipient.clone(), amount), (recipient.clone(), zero, amount)],
            "{name}: token transfers"
        );
        let supply = rpc(
            url,
            None,
            "eth_call",
            json!([{"to": token, "data": &keccak_selector("totalSupply()")[..10]}, "latest"]),
        );
        assert_eq!(word_u64(supply.as_str().unwrap(), 0), 0, "{name}: total supply after the burn");

        // The payout: in a block, exactly amount - fee to the burn's address, from the vault.
        let address = s["burn"]["address"].as_str().unwrap();
        burn_addresses.insert(address.to_owned());
        let payout = s["payout"]["txid"].as_str().unwrap();
        release_txs.insert(payout.to_owned());
        let ptx = btc("getrawtransaction", json!([payout, 2]));
        assert!(ptx["confirmations"].as_u64().unwrap_or(0) >= 1, "{name}: payout {payout} in a block");
        let to_user: Vec<u64> = ptx["vout"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["scriptPubKey"]["address"] == address)
            .map(|o| sats(&o["value"]))
            .collect();
        assert_eq!(to_user, vec![amount - fee], "{name}: one payment of amount - peg_out_fee ({fee}) to {address}");
        paid += amount - fee;
        let received = rpc(&format!("{btc_url}/wallet/demo"), btc_auth, "getreceivedbyaddress", json!([address, 0]));
        assert_eq!(sats(&received), amount - fee, "{name}: {address} received nothing else, not even unconfirmed");

        // Every validator: the deposit certified and signed (the signature it shows is one
        // the bridge accepts for this mint), the burn certified.
        let mint_message = rpc(
            url,
            None,
            "eth_call",
            json!([{"to": bridge, "data": format!(
                "{}{}{:0>64}{amount:064x}",
                &keccak_selector("mintMessage(bytes32,address,uint64)")[..10],
                contract_id.trim_start_matches("0x"),
                recipient.trim_start_matches("0x"),
            )}, "latest"]),
        );
        let mint_message = mint_message.as_str().unwrap().to_owned();
        for v in validators {
            let who = format!("{} {name}", v["name"].as_str().unwrap());
            let api = v["api_url"].as_str().unwrap();
            let dep = get_json(&format!("{api}/v1/deposits/{txid}:{vout}"));
            let status = dep["status"].as_str().unwrap_or_default();
            assert!(!NOT_CERTIFIED.contains(&status), "{who}: deposit not certified: {dep}");
            assert!(dep["certificate"]["signatures"].as_array().is_some_and(|s| s.len() >= 3), "{who}: {dep}");
            assert_eq!(dep["amount_sats"], amount, "{who}: {dep}");
            assert_eq!(dep["destination_chain"], chain_id, "{who}: {dep}");
            assert_eq!(dep["attestation"]["recipient"], recipient.as_str(), "{who}: {dep}");
            assert_eq!(dep["contract_event_id"], contract_id.as_str(), "{who}: {dep}");
            let sig = &dep["signature"];
            let part = |k: &str| {
                let h =
                    sig[k].as_str().unwrap_or_else(|| panic!("{who}: the deposit's mint signature lacks {k}: {dep}"));
                format!("{:0>64}", h.trim_start_matches("0x"))
            };
            let verify = format!(
                "{}{}{}{}{}{}{}",
                &keccak_selector("verify(bytes32,uint256,uint256,uint256,uint256,uint256)")[..10],
                mint_message.trim_start_matches("0x"),
                x.trim_start_matches("0x"),
                y.trim_start_matches("0x"),
                part("rx"),
                part("ry"),
                part("z"),
            );
            let ok = rpc(url, None, "eth_call", json!([{"to": bridge, "data": verify}, "latest"]));
            assert_eq!(
                word_u64(ok.as_str().unwrap(), 0),
                1,
                "{who}: the bridge rejects the signature the API shows: {dep}"
            );
            eprintln!("{who}: deposit {status}, gate {}", dep["gate"]);

            let burn_id = s["burn"]["event_id"].as_str().unwrap();
            let b = get_json(&format!("{api}/v1/attestations/{burn_id}"));
            let status = b["status"].as_str().unwrap_or_default();
            assert!(!NOT_CERTIFIED.contains(&status), "{who}: burn not certified: {b}");
            assert_eq!(b["attestation"]["type"], "peg_out", "{who}: {b}");
            assert_eq!(b["amount_sats"], amount, "{who}: {b}");
            assert_eq!(b["attestation"]["script_pubkey"], s["burn"]["script_pubkey"], "{who}: {b}");
            eprintln!("{who}: burn {status}");
        }
    }

    // What the validators recorded: one of them relayed each mint (the tx on chain), and
    // each release is confirmed under the txid that paid. Others learn that the mint is
    // done when their takeover turn comes, releases reach the confirmation depth: wait.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut pending = Vec::new();
        for s in chains {
            let name = s["name"].as_str().unwrap();
            let mut relayed = Vec::new();
            for v in validators {
                let api = v["api_url"].as_str().unwrap();
                let who = format!("{} {name}", v["name"].as_str().unwrap());
                let dep = get_json(&format!("{api}/v1/deposits/{}", s["deposit"]["outpoint"].as_str().unwrap()));
                if dep["relay"]["outcome"] == "mined" {
                    assert_eq!(dep["relay"]["tx_hash"], s["mint"]["tx_hash"], "{who}: relayed another mint tx: {dep}");
                    relayed.push(who.clone());
                }
                let b = get_json(&format!("{api}/v1/attestations/{}", s["burn"]["event_id"].as_str().unwrap()));
                if b["release"]["txid"] != s["payout"]["txid"] || b["release"]["status"] != "confirmed" {
                    pending.push(format!("{who}: burn {} release {}", b["status"], b["release"]));
                }
            }
            assert!(relayed.len() <= 1, "{name}: several validators say they mined the mint: {relayed:?}");
            if relayed.is_empty() {
                pending.push(format!("{name}: no validator records the mint {} as relayed", s["mint"]["tx_hash"]));
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the validators' records disagree with the chains:\n{}", pending.join("\n"));
        std::thread::sleep(Duration::from_secs(1));
    }

    // The release transactions spend only vault outputs and pay only the burns' addresses
    // and change back to the vault; what the vault keeps is the fees minus mining fees.
    let mut mining_fees = 0u64;
    for txid in &release_txs {
        let tx = btc("getrawtransaction", json!([txid, 2]));
        let mut inputs = 0u64;
        for i in tx["vin"].as_array().unwrap() {
            assert_eq!(
                i["prevout"]["scriptPubKey"]["address"],
                vault.as_str(),
                "release {txid} spends a vault output: {i}"
            );
            inputs += sats(&i["prevout"]["value"]);
        }
        let mut outputs = 0u64;
        for o in tx["vout"].as_array().unwrap() {
            let a = o["scriptPubKey"]["address"].as_str().unwrap_or("");
            assert!(a == vault || burn_addresses.contains(a), "release {txid} pays {a}, neither a burn nor the vault");
            outputs += sats(&o["value"]);
        }
        mining_fees += inputs - outputs;
    }
    let vault_left = deposited - paid - mining_fees;
    eprintln!(
        "deposited {deposited}, paid {paid} in {} release tx(s) (mining fees {mining_fees}); the vault keeps {vault_left}",
        release_txs.len()
    );

    // Metrics: every validator certified the 4 deposits and the 4 burns, and (once the
    // change is final) holds the vault balance the chain shows.
    for v in validators {
        let url = v["metrics_url"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, text) = http("GET", url, None, None);
            assert_eq!(status, 200, "GET {url}");
            let certified = metric(&text, "btcfi_consensus_certified_attestations_total").unwrap_or(0.0);
            let balance = metric(&text, "btcfi_vault_balance_sats");
            if certified >= 8.0 && balance == Some(vault_left as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: certified {certified} (want >= 8), vault balance {balance:?} (want {vault_left})",
                v["name"]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("devnet round trip checked in {:?}", t0.elapsed());
}
