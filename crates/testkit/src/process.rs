use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
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

/// A loopback port that was free a moment ago. Callers retry start-up on a clash.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
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
