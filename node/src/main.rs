//! `btcfi-node`: the validator daemon of the btcfi bridge.
use btcfi_node::{LogFormat, NodeConfig, identity};
use clap::{Args, Parser, Subcommand};
use eyre::{WrapErr, bail};
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

/// The btcfi bridge validator daemon: watches Bitcoin and the EVM chains, agrees with the
/// other validators on what happened there, and serves an HTTP API and metrics.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format: human (default on a terminal) or json.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct HomeArg {
    /// The validator's home directory (config.toml, identity.key, data/).
    #[arg(long, env = "BTCFI_HOME")]
    home: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a home directory: config template and identity key; prints the peer id.
    Init {
        #[command(flatten)]
        home: HomeArg,
        /// This validator's name in the validator set.
        #[arg(long, default_value = "validator-0")]
        name: String,
        /// libp2p listen address written into the config.
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/9000")]
        p2p_listen: String,
        /// HTTP API address written into the config.
        #[arg(long, default_value = "127.0.0.1:8080")]
        api_listen: String,
    },
    /// Run the validator until SIGINT/SIGTERM.
    ///
    /// Signing needs the passphrase the keys were sealed with at `dkg`, in
    /// BTCFI_KEY_PASSPHRASE (or a file named by BTCFI_KEY_PASSPHRASE_FILE).
    Run {
        #[command(flatten)]
        home: HomeArg,
        /// Testing only, in builds with the `test-faults` feature (never a release
        /// binary): misbehave on purpose (invalid-signature-shares,
        /// withhold-signature-shares, silent-on-mints, split-release-proposals,
        /// greedy-fee-proposals, out-of-turn-proposals, no-payment-bound).
        #[cfg(feature = "test-faults")]
        #[arg(long, hide = true)]
        test_fault: Option<String>,
    },
    /// Print a summary of a running node (from its HTTP API).
    Status {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a consistent copy of the database (stop the node first); restore by
    /// replacing HOME/data with it.
    Backup {
        #[command(flatten)]
        home: HomeArg,
        /// Directory to create for the backup (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate this epoch's two group keys (evm, btc) with the other validators.
    ///
    /// Start it on every validator of the set (in any order, within --timeout-secs).
    /// The key shares are stored sealed under the passphrase in BTCFI_KEY_PASSPHRASE
    /// (or the file named by BTCFI_KEY_PASSPHRASE_FILE); `run` needs the same one.
    /// Prints the public result as JSON: the EVM group key (x, y) to register in every
    /// bridge contract, and the vault's P2TR address.
    Dkg {
        #[command(flatten)]
        home: HomeArg,
        /// Give up if the other validators have not all finished by then.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Testing only, in builds with the `test-faults` feature (never a release
        /// binary): misbehave on purpose (swap-round2-shares).
        #[cfg(feature = "test-faults")]
        #[arg(long, hide = true)]
        test_fault: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate HOME/config.toml (with BTCFI_* overrides) and print the effective
    /// configuration with secrets masked. Exit code 1 names every bad key.
    Check {
        #[command(flatten)]
        home: HomeArg,
    },
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BTCFI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn load(home: &Path) -> eyre::Result<NodeConfig> {
    Ok(NodeConfig::load(home, std::env::vars())?)
}

fn config_template(name: &str, peer_id: &str, p2p: &str, api: &str) -> String {
    let dial = p2p.replace("0.0.0.0", "127.0.0.1");
    format!(
        r#"# btcfi-node configuration. Every key can be overridden by an environment variable:
# BTCFI_<SECTION>__<KEY>, e.g. BTCFI_API__LISTEN=127.0.0.1:9090.
# See configs/ in the repository for annotated mainnet, testnet and devnet examples.

[node]
name = "{name}"
epoch = 1
bitcoin_poll_ms = 5000

[p2p]
listen = "{p2p}"

# The epoch's validator set, identical on every validator (this one included).
[[validators]]
name = "{name}"
peer_id = "{peer_id}"
address = "{dial}"

[api]
listen = "{api}"

[log]
format = "human"
filter = "info"

[bitcoin]
rpc_url = "http://127.0.0.1:18443"
rpc_user = "btcfi"
rpc_password = "btcfi-devnet"
network = "regtest"
vault_address = "REPLACE-WITH-VAULT-ADDRESS-FROM-DKG"
confirmations = 2
min_deposit = 10000
reorg_window = 20
start_height = 1
"#
    )
}

/// GET over plain HTTP/1.0 (the API listens on loopback or a private network).
fn http_get(addr: std::net::SocketAddr, path: &str) -> eyre::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .wrap_err_with(|| format!("no node answering at {addr}: is `btcfi-node run` running with this --home?"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(body))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> eyre::Result<()> {
    match cli.command {
        Command::Init { home, name, p2p_listen, api_listen } => {
            let home = home.home;
            std::fs::create_dir_all(&home).wrap_err_with(|| format!("creating {}", home.display()))?;
            let cfg_path = home.join("config.toml");
            if cfg_path.exists() {
                bail!("{} already exists; refusing to overwrite it", cfg_path.display());
            }
            let kp = identity::create(&identity::key_path(&home))?;
            let peer_id = kp.public().to_peer_id().to_string();
            std::fs::write(&cfg_path, config_template(&name, &peer_id, &p2p_listen, &api_listen))?;
            println!("{peer_id}");
            eprintln!(
                "initialised {}: edit config.toml (validators, chains), then `btcfi-node run --home {}`",
                home.display(),
                home.display()
            );
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { home } } => {
            let cfg = load(&home.home)?;
            print!("{}", cfg.redacted_toml());
            eprintln!("config ok");
            Ok(())
        }
        Command::Run {
            home,
            #[cfg(feature = "test-faults")]
            test_fault,
        } => {
            let cfg = load(&home.home)?;
            #[cfg(feature = "test-faults")]
            let faults = test_faults(test_fault.as_deref())?;
            #[cfg(not(feature = "test-faults"))]
            let faults = btcfi_node::pipeline::Faults::default();
            init_tracing(cli.log_format.unwrap_or(cfg.log.format), &cfg.log.filter);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let shutdown = async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                    }
                    tracing::info!(target: "node", "shutting down");
                };
                btcfi_node::run::run_with(cfg, &home.home, shutdown, faults).await
            })
        }
        Command::Status { home } => {
            let cfg = load(&home.home)?;
            let body = http_get(cfg.api.listen, "/v1/status")?;
            let v: serde_json::Value = serde_json::from_str(&body).wrap_err("the node's /v1/status is not JSON")?;
            println!(
                "{} ({}) epoch {} — {}",
                v["name"].as_str().unwrap_or("?"),
                v["peer_id"].as_str().unwrap_or("?"),
                v["epoch"],
                if v["ready"] == true { "ready" } else { "NOT READY" }
            );
            println!(
                "validators connected: {} of {} (quorum {})",
                v["peers_connected"].as_u64().unwrap_or(0) + 1,
                v["validators"],
                v["quorum"]
            );
            if let Some(why) = v["not_ready"].as_array().filter(|w| !w.is_empty()) {
                for w in why {
                    println!("  not ready: {}", w.as_str().unwrap_or("?"));
                }
            }
            println!("own votes: {}, certified: {}", v["own_votes"], v["certified"]);
            let sig = &v["signing"];
            if let Some(keys) = sig["keys"].as_object() {
                for (kind, k) in keys {
                    let state = match (k["group_key"].as_str(), k["usable"] == true) {
                        (None, _) => "none (run `btcfi-node dkg`)".to_owned(),
                        (Some(g), true) => format!("{g} (usable)"),
                        (Some(g), false) => format!("{g} (test signature pending)"),
                    };
                    println!("  {kind} key: {state}");
                }
                println!(
                    "  vault {}; peg-outs paid {}, pending {}; releases in flight {}; relaying {}",
                    sig["vault_address"].as_str().unwrap_or("?"),
                    sig["peg_outs_paid"],
                    sig["peg_outs_pending"],
                    sig["releases_in_flight"],
                    if sig["relayer"] == true { "yes" } else { "no (no relayer key)" }
                );
            }
            if let Some(chains) = v["chains"].as_object() {
                for (name, c) in chains {
                    println!(
                        "  {name:<10} head {} final {} cursor {}{}",
                        c["head"],
                        c["finalized"],
                        c["cursor"],
                        c["last_error"].as_str().map(|e| format!(" — error: {e}")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Command::Backup { home, out } => {
            let store = btcfi_store::Store::open(home.home.join("data"))
                .wrap_err("opening the database (stop the node first: a running node holds its lock)")?;
            store.checkpoint(&out)?;
            println!("backup written to {}", out.display());
            Ok(())
        }
        Command::Dkg {
            home,
            timeout_secs,
            #[cfg(feature = "test-faults")]
            test_fault,
        } => {
            let cfg = load(&home.home)?;
            init_tracing(cli.log_format.unwrap_or(cfg.log.format), &cfg.log.filter);
            #[cfg(feature = "test-faults")]
            let fault = match test_fault.as_deref() {
                None => None,
                Some("swap-round2-shares") => Some(btcfi_node::dkg::DkgFault::SwapRound2Shares),
                Some(other) => bail!("--test-fault {other}: unknown fault"),
            };
            #[cfg(not(feature = "test-faults"))]
            let fault = None;
            let passphrase = btcfi_node::keys::passphrase(cfg.keys.passphrase_file.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let records = rt.block_on(btcfi_node::dkg::run(
                &cfg,
                &home.home,
                &passphrase,
                std::time::Duration::from_secs(timeout_secs),
                fault,
            ))?;
            let mut out = serde_json::Map::new();
            out.insert("epoch".into(), cfg.node.epoch.into());
            for r in &records {
                let mut v = serde_json::json!({ "group_key": r.group_key });
                if let Some((x, y)) = &r.evm_xy {
                    v["x"] = x.clone().into();
                    v["y"] = y.clone().into();
                }
                if let Some(a) = &r.vault_address {
                    v["vault_address"] = a.clone().into();
                }
                out.insert(r.kind.as_str().into(), v);
            }
            println!("{}", serde_json::Value::Object(out));
            eprintln!(
                "keys stored sealed in {}; start the node with `btcfi-node run`",
                home.home.join("data").display()
            );
            Ok(())
        }
    }
}

/// The misbehaviour `--test-fault` names (builds with the `test-faults` feature only).
#[cfg(feature = "test-faults")]
fn test_faults(name: Option<&str>) -> eyre::Result<btcfi_node::pipeline::Faults> {
    use btcfi_node::{pipeline::ReleaseFault, signing::SigningFault};
    let (signing, release) = match name {
        None => (None, None),
        Some("invalid-signature-shares") => (Some(SigningFault::InvalidShares), None),
        Some("withhold-signature-shares") => (Some(SigningFault::WithholdShares), None),
        Some("silent-on-mints") => (Some(SigningFault::SilentOnMints), None),
        Some("split-release-proposals") => (None, Some(ReleaseFault::SplitProposals)),
        Some("greedy-fee-proposals") => (None, Some(ReleaseFault::GreedyFee)),
        Some("out-of-turn-proposals") => (None, Some(ReleaseFault::OutOfTurn)),
        Some("no-payment-bound") => (None, Some(ReleaseFault::NoPaymentBound)),
        Some(other) => bail!("--test-fault {other}: unknown fault"),
    };
    Ok(btcfi_node::pipeline::Faults { signing, release })
}
