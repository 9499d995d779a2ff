//! A client of a validator's HTTP API, for tests: plain HTTP/1.0 over loopback, so
//! that what the test reads is what any client would.

use serde_json::Value;
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// The API of the validator listening on `127.0.0.1:port`.
#[derive(Debug, Clone, Copy)]
pub struct ApiClient {
    pub port: u16,
}

impl ApiClient {
    pub fn new(port: u16) -> Self {
        Self { port }
    }

    /// `GET path`: the body as JSON (or as a string), `None` if the API does not answer.
    pub fn get(&self, path: &str) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (_, b) = body.split_once("\r\n\r\n")?;
        serde_json::from_str(b).ok().or_else(|| Some(Value::String(b.to_owned())))
    }

    /// One raw request: the status code and the body as JSON (or as a string). Panics
    /// if the API cannot be reached.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("API reachable");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}", body.len()).expect("request sent");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let (head, b) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, serde_json::from_str(b).unwrap_or_else(|_| Value::String(b.to_owned())))
    }

    /// A counter or gauge from `/metrics`, summed over its label sets matching `filter`
    /// (0 when none has been counted yet). An API that does not answer, a family it
    /// does not export, or a label in `filter` that no series of it has, fails the
    /// test: a dead node, or a misspelt name, must not pass an `== 0.0`.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        let m = self.get("/metrics").unwrap_or_else(|| panic!("port {}: /metrics did not answer", self.port));
        let text = m.as_str().unwrap_or_else(|| panic!("port {}: /metrics is not text", self.port)).to_owned();
        metric_in(&text, name, filter).unwrap_or_else(|e| panic!("port {}: {e}", self.port))
    }
}

/// `name` summed over the series of a Prometheus text page whose labels contain
/// `filter`; an error if the page holds no `btcfi_` series or no such family (a
/// histogram's `_bucket`, `_sum` and `_count` series belong to their family).
pub fn metric_in(text: &str, name: &str, filter: &str) -> Result<f64, String> {
    if !text.contains("btcfi_") {
        return Err("/metrics holds no btcfi_ series".into());
    }
    let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    if !text.lines().any(|l| l.starts_with("# TYPE ") && l.split_whitespace().nth(2) == Some(family)) {
        return Err(format!("/metrics exports no metric family {family}"));
    }
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect();
    // A label the filter names must exist on the family (a misspelt label, or a family
    // without it, is an error, not 0); a value no series has yet reads 0.
    for label in filter.split(',').filter_map(|p| p.split_once('=')).map(|(k, _)| k.trim()) {
        if !label.is_empty()
            && !series.iter().any(|l| l.contains(&format!("{{{label}=")) || l.contains(&format!(",{label}=")))
        {
            return Err(format!("no series of {name} has a label {label}"));
        }
    }
    Ok(series
        .iter()
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE btcfi_signed_total counter\nbtcfi_signed_total{key=\"evm\"} 3\nbtcfi_signed_total{key=\"btc\"} 2\n# TYPE btcfi_sign_seconds histogram\nbtcfi_sign_seconds_count 4\n";

    #[test]
    fn a_metric_sums_its_series_and_a_missing_family_is_an_error_not_zero() {
        assert_eq!(metric_in(PAGE, "btcfi_signed_total", ""), Ok(5.0));
        assert_eq!(metric_in(PAGE, "btcfi_signed_total", "key=\"btc\""), Ok(2.0));
        assert_eq!(metric_in(PAGE, "btcfi_sign_seconds_count", ""), Ok(4.0));
        assert!(metric_in(PAGE, "btcfi_signd_total", "").is_err(), "a misspelt name read as 0");
        assert!(metric_in("", "btcfi_signed_total", "").is_err(), "an empty page read as 0");
        assert_eq!(metric_in(PAGE, "btcfi_signed_total", "key=\"none\""), Ok(0.0), "a value not counted yet");
        assert!(metric_in(PAGE, "btcfi_signed_total", "kye=\"evm\"").is_err(), "a misspelt label read as 0");
    }
}
