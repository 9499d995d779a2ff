//! Request-response framing: `len u32 BE | len bytes` (an [envelope](crate::Envelope)).
//!
//! The length is checked against the limit **before** anything is allocated, so a peer
//! announcing four gigabytes costs four bytes of reading. Oversize frames are counted
//! and fail the stream; the body is decoded by the service, which counts and drops
//! malformed ones.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};

use crate::{DropReason, Metrics, envelope::HEADER_LEN};

/// The request-response protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/btcfi/req/1");

/// Length-prefixed raw frames, bounded.
#[derive(Debug, Clone)]
pub struct RequestCodec {
    max_frame: usize,
    metrics: Option<Metrics>,
}

impl RequestCodec {
    /// A codec accepting envelopes with payloads up to `max_payload` bytes; oversize
    /// frames are counted in `metrics` if given.
    pub fn new(max_payload: usize, metrics: Option<Metrics>) -> Self {
        RequestCodec { max_frame: max_payload.saturating_add(HEADER_LEN), metrics }
    }

    /// Largest frame body accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Reads one frame. Never allocates more than [`RequestCodec::max_frame`].
    pub async fn read_frame<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if len > self.max_frame {
            if let Some(metrics) = &self.metrics {
                metrics.on_dropped(DropReason::Oversize);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes above the limit of {}", self.max_frame),
            ));
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Writes one frame, refusing frames the peer would refuse.
    pub async fn write_frame<T: AsyncWrite + Unpin + Send>(&self, io: &mut T, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|len| usize::try_from(*len).is_ok_and(|len| len <= self.max_frame))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("frame of {} bytes above the limit of {}", body.len(), self.max_frame),
                )
            })?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(body).await?;
        io.close().await
    }
}

impl request_response::Codec for RequestCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{executor::block_on, io::Cursor};

    #[test]
    fn frames_round_trip_and_oversize_is_refused_before_allocating() {
        let metrics = Metrics::unregistered().unwrap();
        let codec = RequestCodec::new(8, Some(metrics.clone()));
        let mut buf = Cursor::new(Vec::new());
        block_on(codec.write_frame(&mut buf, b"BTCFI\x01\x04abc")).unwrap();
        let bytes = buf.into_inner();
        assert_eq!(&bytes[..4], &10u32.to_be_bytes());
        assert_eq!(block_on(codec.read_frame(&mut Cursor::new(bytes))).unwrap(), b"BTCFI\x01\x04abc");

        let huge = u32::MAX.to_be_bytes().to_vec();
        assert!(block_on(codec.read_frame(&mut Cursor::new(huge))).is_err());
        assert_eq!(metrics.oversize(), 1);

        let mut sink = Cursor::new(Vec::new());
        assert!(block_on(codec.write_frame(&mut sink, &[0u8; 16])).is_err());
    }

    #[test]
    fn truncated_frames_are_errors() {
        let codec = RequestCodec::new(8, None);
        assert!(block_on(codec.read_frame(&mut Cursor::new(vec![0, 0]))).is_err());
        assert!(block_on(codec.read_frame(&mut Cursor::new(vec![0, 0, 0, 3, 1]))).is_err());
    }
}
