//! The heartbeat: a validator's periodic "I am alive, here is how far I see".
//!
//! ```text
//! heartbeat = version_len u8 | version (UTF-8, <= 64 bytes)
//!           | count u16 | count × (chain_id u64 | head u64 | finalized u64)   (count <= 64)
//! ```
//!
//! Integers are big-endian; no trailing bytes. Operators read heartbeats to see which
//! validator runs which release and which one lags on which chain; the node may use the
//! heights to decide whom to ask for catch-up. Heights are what the sender claims, not
//! proofs: nothing is ever certified or signed because of a heartbeat.

use crate::P2pError;

/// Longest version string carried.
pub const MAX_VERSION_LEN: usize = 64;
/// Most chains in one heartbeat.
pub const MAX_CHAINS: usize = 64;
/// Largest encoded heartbeat.
pub const MAX_HEARTBEAT_LEN: usize = 1 + MAX_VERSION_LEN + 2 + MAX_CHAINS * 24;

/// Head and finalized heights of one chain, as the sending validator sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHeights {
    /// The chain (the node's chain id: EVM chain id, or the id it gives Bitcoin).
    pub chain_id: u64,
    /// Best block height seen.
    pub head: u64,
    /// Highest height treated as final (confirmation depth or `finalized` tag).
    pub finalized: u64,
}

impl From<(u64, u64, u64)> for ChainHeights {
    fn from((chain_id, head, finalized): (u64, u64, u64)) -> Self {
        ChainHeights { chain_id, head, finalized }
    }
}

/// A decoded heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Heartbeat {
    /// The sender's version string (e.g. `btcfi-node/0.1.0`).
    pub version: String,
    /// Heights per chain.
    pub chains: Vec<ChainHeights>,
}

impl Heartbeat {
    /// Encodes the heartbeat. A version longer than [`MAX_VERSION_LEN`] is cut (at a
    /// character boundary) and chains beyond [`MAX_CHAINS`] are left out, so the
    /// encoding always decodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut version = self.version.as_str();
        if version.len() > MAX_VERSION_LEN {
            let mut cut = MAX_VERSION_LEN;
            while !version.is_char_boundary(cut) {
                cut = cut.saturating_sub(1);
            }
            version = version.get(..cut).unwrap_or("");
        }
        let chains = self.chains.iter().take(MAX_CHAINS);
        let count = chains.len();
        let mut out = Vec::with_capacity(1 + version.len() + 2 + count * 24);
        // Both fit: version.len() <= 64 and count <= 64.
        out.push(u8::try_from(version.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(&u16::try_from(count).unwrap_or(0).to_be_bytes());
        for c in chains {
            out.extend_from_slice(&c.chain_id.to_be_bytes());
            out.extend_from_slice(&c.head.to_be_bytes());
            out.extend_from_slice(&c.finalized.to_be_bytes());
        }
        out
    }

    /// Decodes [`Heartbeat::encode`]'s output. Never panics; allocates at most
    /// [`MAX_HEARTBEAT_LEN`] bytes' worth.
    pub fn decode(bytes: &[u8]) -> Result<Self, P2pError> {
        if bytes.len() > MAX_HEARTBEAT_LEN {
            return Err(P2pError::Oversize { what: "heartbeat", len: bytes.len(), max: MAX_HEARTBEAT_LEN });
        }
        let mut r = Reader(bytes);
        let version_len = usize::from(r.u8("version length")?);
        if version_len > MAX_VERSION_LEN {
            return Err(P2pError::Oversize { what: "heartbeat version", len: version_len, max: MAX_VERSION_LEN });
        }
        let version = std::str::from_utf8(r.take("version", version_len)?)
            .map_err(|_| P2pError::Malformed("heartbeat version (not UTF-8)"))?
            .to_owned();
        let count = usize::from(r.u16("chain count")?);
        if count > MAX_CHAINS {
            return Err(P2pError::Oversize { what: "heartbeat chain count", len: count, max: MAX_CHAINS });
        }
        let mut chains = Vec::with_capacity(count);
        for _ in 0..count {
            chains.push(ChainHeights {
                chain_id: r.u64("chain id")?,
                head: r.u64("head height")?,
                finalized: r.u64("finalized height")?,
            });
        }
        if !r.0.is_empty() {
            return Err(P2pError::TrailingBytes(r.0.len()));
        }
        Ok(Heartbeat { version, chains })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], P2pError> {
        if self.0.len() < n {
            return Err(P2pError::Truncated { field, needed: n.saturating_sub(self.0.len()) });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], P2pError> {
        let bytes = self.take(field, N)?;
        bytes.try_into().map_err(|_| P2pError::Truncated { field, needed: N })
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, P2pError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, P2pError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, P2pError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot_of_the_format() {
        let hb = Heartbeat { version: "v1".into(), chains: vec![(1, 10, 4).into()] };
        let bytes = hb.encode();
        let mut expected = vec![2, b'v', b'1', 0, 1];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(&4u64.to_be_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(Heartbeat::decode(&bytes).unwrap(), hb);
    }

    #[test]
    fn long_fields_are_cut_so_the_encoding_decodes() {
        let hb = Heartbeat {
            version: "é".repeat(40), // 80 bytes, cut at a char boundary
            chains: (0..100).map(|i| (i, i, i).into()).collect(),
        };
        let back = Heartbeat::decode(&hb.encode()).unwrap();
        assert_eq!(back.version, "é".repeat(32));
        assert_eq!(back.chains.len(), MAX_CHAINS);
    }

    #[test]
    fn refusals() {
        assert!(matches!(Heartbeat::decode(&[]), Err(P2pError::Truncated { .. })));
        assert!(matches!(Heartbeat::decode(&[65]), Err(P2pError::Oversize { .. })));
        assert!(matches!(Heartbeat::decode(&[1, 0xff, 0, 0]), Err(P2pError::Malformed(_))));
        assert!(matches!(Heartbeat::decode(&[0, 0, 65]), Err(P2pError::Oversize { .. })));
        assert!(matches!(Heartbeat::decode(&[0, 0, 1, 0]), Err(P2pError::Truncated { .. })));
        assert!(matches!(Heartbeat::decode(&[0, 0, 0, 0]), Err(P2pError::TrailingBytes(1))));
    }

    fn heartbeat() -> impl Strategy<Value = Heartbeat> {
        ("[ -~]{0,64}", proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..=MAX_CHAINS)).prop_map(
            |(version, chains)| Heartbeat { version, chains: chains.into_iter().map(ChainHeights::from).collect() },
        )
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn round_trip(hb in heartbeat()) {
            prop_assert_eq!(Heartbeat::decode(&hb.encode())?, hb);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(hb) = Heartbeat::decode(&bytes) {
                prop_assert_eq!(hb.encode(), bytes);
            }
        }
    }
}
