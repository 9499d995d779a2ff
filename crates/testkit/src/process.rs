use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    // At run time first: cargo and nextest set CARGO_MANIFEST_DIR for the test process
    // (the test's own package). A binary built in another clone that shares the target
    // dir would otherwise read that clone's tree, or a deleted one.
    let is_root = |p: &Path| p.join("Cargo.lock").is_file() && p.join("contracts").is_dir();
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let cwd = std::env::current_dir().ok();
    for start in runtime.iter().chain(cwd.iter()) {
        if let Some(root) = start.ancestors().find(|p| is_root(p)) {
            return root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

/// Path of a tool: `$ENV_VAR` if set, else `<repo>/.deps/bin/<name>`.
pub(crate) fn tool(env_var: &str, name: &str) -> eyre::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    let p = repo_root().join(".deps/bin").join(name);
    if p.exists() {
        Ok(p)
    } else {
        eyre::bail!("{name} not found at {}: run scripts/devnet/install-deps.sh or set {env_var}", p.display())
    }
}

/// A loopback port that was free a moment ago, picked at random *below* the kernel's
/// ephemeral range, and held for this process until it exits. Ports the kernel hands
/// out (port 0, and the local end of every outgoing connection) come from that range,
/// so a port taken from it can be grabbed by some connection before the process meant
/// to listen on it binds it. Below it, only another test picking the same random port
/// could clash, and [`reserve_port`] rules that out: each port handed out is locked in a
/// file that every test process checks, so a validator killed and restarted on its port
/// finds it still its own.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768);
    let (low, high) = if ephemeral_low > 12_000 { (10_000, ephemeral_low - 1) } else { (40_000, 60_000) };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut seed =
        nanos ^ (u64::from(std::process::id()) << 32) ^ NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    for _ in 0..1_000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let Ok(port) = u16::try_from(low + (seed >> 33) % (high - low)) else { continue };
        if reserve_port(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Takes `port` for this process: an exclusive lock on `<tmp>/btcfi-test-ports/<port>`,
/// held until the process exits (the kernel drops it then, so a crashed test leaves
/// nothing stale behind). False if another live process holds it. Children do not
/// inherit the lock (files are opened close-on-exec).
pub fn reserve_port(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("btcfi-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // no place to coordinate: fall back to the bind check alone
    }
    let Ok(file) =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
    else {
        return true;
    };
    if file.try_lock().is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
    true
}

/// Polls `cond` every 50 ms until it returns `Some`, or fails after `deadline`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut cond: F) -> eyre::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            eyre::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_handed_out_is_never_handed_out_again_while_its_holder_lives() {
        let port = free_port();
        // A second reservation opens the file anew, as another process would; the lock
        // is per open file, so it must be refused.
        assert!(!reserve_port(port), "port {port} was handed out twice");
        let others: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(!others.contains(&port), "port {port} came back from free_port");
        let mut unique = others.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), others.len(), "free_port repeated itself");
    }
}
