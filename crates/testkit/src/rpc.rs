//! Scriptable JSON-RPC endpoints on loopback, for tests of what a broken, slow, lying or
//! vanished node does to a client: [`FakeRpc`] answers each request from a script (or
//! forwards it to a real node unless the script rewrites it), and [`Forwarder`] is a
//! plain TCP relay that can be cut.
//!
//! Each connection is served on its own thread, so one reply that never comes
//! ([`Reply::Hang`]) does not hold up the others. Dropping the server closes the
//! listener and every connection it holds.

use serde_json::Value;
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// What the endpoint sends back for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Status 200 with this body, sent as is (it need not be valid JSON).
    Raw(String),
    /// This HTTP status with this body.
    Status(u16, String),
    /// Nothing: the connection stays open and silent until the server drops.
    Hang,
}

impl Reply {
    /// Status 200 with `v` as the body.
    pub fn json(v: Value) -> Self {
        Reply::Raw(v.to_string())
    }

    /// A JSON-RPC 2.0 result for request `req`.
    pub fn result(req: &Value, result: Value) -> Self {
        Reply::json(serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": result}))
    }

    /// A JSON-RPC 2.0 error for request `req`.
    pub fn error(req: &Value, code: i64, message: &str) -> Self {
        Reply::json(serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": code, "message": message}}))
    }
}

/// One request as the endpoint received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The JSON body (`Value::Null` if it did not parse).
    pub body: Value,
    /// The `Authorization` header, passed on when forwarding.
    pub authorization: Option<String>,
}

type Script = dyn Fn(&Request) -> Reply + Send + Sync;

/// A JSON-RPC endpoint whose answers a test scripts.
pub struct FakeRpc {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRpc").field("port", &self.port).finish_non_exhaustive()
    }
}

impl FakeRpc {
    /// An endpoint that answers every request with `script(body)`.
    pub fn start(script: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> eyre::Result<Self> {
        Self::serve(Arc::new(move |r: &Request| script(&r.body)))
    }

    /// An endpoint in front of the node at `upstream`: a request that `rewrite` answers
    /// gets that answer, every other one is forwarded (with its `Authorization`) and
    /// the node's answer relayed. An endpoint that agrees with its node except where
    /// the test says otherwise: the way to make two endpoints of one chain disagree.
    pub fn proxy(
        upstream: &str,
        rewrite: impl Fn(&Value) -> Option<Reply> + Send + Sync + 'static,
    ) -> eyre::Result<Self> {
        let upstream = upstream.to_owned();
        Self::serve(Arc::new(move |r: &Request| {
            rewrite(&r.body).unwrap_or_else(|| forward(&upstream, r.authorization.as_deref(), &r.body))
        }))
    }

    fn serve(script: Arc<Script>) -> eyre::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (served2, stop2, open2) = (served.clone(), stop.clone(), open.clone());
        let accept = std::thread::Builder::new().name(format!("fake-rpc-{port}")).spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    open2.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
                }
                let (script, served, stop) = (script.clone(), served2.clone(), stop2.clone());
                let _ = std::thread::Builder::new().name("fake-rpc-conn".into()).spawn(move || {
                    let _ = serve_one(stream, &*script, &served, &stop);
                });
            }
        })?;
        Ok(Self { port, served, stop, open, accept: Some(accept) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests answered so far (a hung one is not counted).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRpc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        stop_accepting(self.port, self.accept.take());
    }
}

/// Wakes an accept loop whose stop flag is set and waits until it has closed its
/// listener.
fn stop_accepting(port: u16, accept: Option<std::thread::JoinHandle<()>>) {
    let _ = TcpStream::connect(("127.0.0.1", port));
    if let Some(t) = accept {
        let _ = t.join();
    }
}

/// Reads one HTTP request (head, then the body its `Content-Length` announces).
fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(buf.get(..pos).unwrap_or_default()).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len = header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        while buf.len() < pos + 4 + len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        let body = serde_json::from_slice(buf.get(pos + 4..pos + 4 + len).unwrap_or_default()).unwrap_or(Value::Null);
        return Ok(Some(Request { body, authorization: header("authorization") }));
    }
}

fn serve_one(mut stream: TcpStream, script: &Script, served: &AtomicU64, stop: &AtomicBool) -> std::io::Result<()> {
    let Some(request) = read_request(&mut stream)? else { return Ok(()) };
    let (status, body) = match script(&request) {
        Reply::Raw(body) => (200, body),
        Reply::Status(code, body) => (code, body),
        Reply::Hang => {
            // Until the server drops (it shuts this connection down then).
            while !stop.load(Ordering::SeqCst) {
                let mut byte = [0u8; 1];
                stream.set_read_timeout(Some(Duration::from_millis(200)))?;
                if let Ok(0) = stream.read(&mut byte) {
                    return Ok(());
                }
            }
            return Ok(());
        }
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    served.fetch_add(1, Ordering::SeqCst);
    stream.shutdown(Shutdown::Write)
}

/// Posts `req` to the node at `upstream` (an `http://host:port` URL) and relays its
/// answer: its status and body, or a 502 if it cannot be reached.
pub fn forward(upstream: &str, authorization: Option<&str>, req: &Value) -> Reply {
    match post(upstream, authorization, &req.to_string()) {
        Ok((200, body)) => Reply::Raw(body),
        Ok((status, body)) => Reply::Status(status, body),
        Err(e) => Reply::Status(502, e.to_string()),
    }
}

/// One HTTP/1.1 POST (connection closed after it): the status and the body.
pub fn post(url: &str, authorization: Option<&str>, body: &str) -> eyre::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| eyre::eyre!("{url}: only http:// URLs"))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    Ok((status, if chunked { dechunk(body) } else { body.to_owned() }))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or_default());
        s = rest.get(n..).unwrap_or_default().trim_start_matches("\r\n");
    }
    out
}

/// A TCP relay on loopback in front of `target_port`; [`Forwarder::cut`] closes the
/// listener and every open connection, so the port refuses from then on.
#[derive(Debug)]
pub struct Forwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `port` (0: any free one) and relays each connection to `target_port`.
    pub fn start(port: u16, target_port: u16) -> eyre::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (stop2, open2) = (stop.clone(), open.clone());
        let accept = std::thread::Builder::new().name(format!("forwarder-{port}")).spawn(move || {
            for inbound in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) else { continue };
                {
                    let mut open = open2.lock().unwrap_or_else(|e| e.into_inner());
                    open.push(a);
                    open.push(b);
                }
                relay(inbound.try_clone(), outbound.try_clone());
                relay(Ok(outbound), Ok(inbound));
            }
        })?;
        Ok(Self { port, stop, open, accept: Some(accept) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listener and every connection relayed so far.
    pub fn cut(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        stop_accepting(self.port, self.accept.take());
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` into `to` on a thread of its own until either end closes.
fn relay(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else { return };
    let _ = std::thread::Builder::new().name("forwarder-conn".into()).spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_answers_and_a_proxy_rewrites_only_what_it_is_told() {
        let node =
            FakeRpc::start(|req| Reply::result(req, serde_json::json!(req["method"].as_str().unwrap_or("")))).unwrap();
        let (status, body) = post(&node.url(), None, r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}"#).unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((v["id"].as_u64(), v["result"].as_str()), (Some(7), Some("eth_chainId")));

        let liar = FakeRpc::proxy(&node.url(), |req| {
            (req["method"] == "eth_getLogs").then(|| Reply::result(req, serde_json::json!([])))
        })
        .unwrap();
        let ask = |m: &str| {
            let (_, b) = post(&liar.url(), None, &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#)).unwrap();
            serde_json::from_str::<Value>(&b).unwrap()["result"].clone()
        };
        assert_eq!(ask("eth_blockNumber"), "eth_blockNumber", "forwarded to the node");
        assert_eq!(ask("eth_getLogs"), serde_json::json!([]), "rewritten");
        assert_eq!(node.served(), 2, "the rewritten request never reached the node");
    }

    #[test]
    fn a_hung_reply_does_not_hold_up_the_next_request_and_a_cut_forwarder_refuses() {
        let slow =
            FakeRpc::start(|req| if req["id"] == 1 { Reply::Hang } else { Reply::result(req, Value::Null) }).unwrap();
        let url = slow.url();
        let hung = std::thread::spawn(move || post(&url, None, r#"{"id":1}"#));
        let (status, _) = post(&slow.url(), None, r#"{"id":2}"#).unwrap();
        assert_eq!(status, 200);
        drop(slow);
        assert!(hung.join().unwrap().map(|(s, _)| s).unwrap_or(0) == 0, "the hung request got an answer");

        let node = FakeRpc::start(|req| Reply::result(req, Value::Bool(true))).unwrap();
        let mut relay = Forwarder::start(0, node.port()).unwrap();
        assert_eq!(post(&relay.url(), None, r#"{"id":3}"#).unwrap().0, 200);
        relay.cut();
        assert!(post(&relay.url(), None, r#"{"id":4}"#).is_err(), "a cut forwarder still accepts");
        let again = Forwarder::start(relay.port(), node.port()).unwrap();
        assert_eq!(post(&again.url(), None, r#"{"id":5}"#).unwrap().0, 200, "the port is free again");
    }
}
