//! The protobuf codec of every kh service: prost's, except that a message
//! that does not decode is `INVALID_ARGUMENT` instead of `INTERNAL`.
//!
//! tonic-prost reports any decode failure as `INTERNAL`, which tells a
//! caller that sent a string field that is not UTF-8 (or a truncated
//! message) that the server is broken, and makes the server's own error
//! accounting count the caller's mistake. A server only decodes requests, so
//! for it the failure is always the sender's input. The generated clients
//! use the same codec (tonic-build sets one path for both); for them a
//! response that does not decode comes from a kh peer of another version,
//! and the message says so.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode failures as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct KhCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for KhCodec<T, U> {
    fn default() -> Self {
        KhCodec {
            inner: ProstCodec::new(),
        }
    }
}

impl<T, U> Codec for KhCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KhDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KhDecoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

/// [`ProstDecoder`] with decode failures as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct KhDecoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for KhDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|s| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {}. Every string field must be UTF-8; a kh peer sending this runs an incompatible version",
                message_name::<U>(),
                s.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// `kh.v1.HeartbeatRequest` for the generated `kh::proto::HeartbeatRequest`.
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    format!("kh.v1.{}", rust.rsplit("::").next().unwrap_or(rust))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Facts, HeartbeatRequest};

    #[test]
    fn names_the_wire_message() {
        assert_eq!(message_name::<HeartbeatRequest>(), "kh.v1.HeartbeatRequest");
        assert_eq!(message_name::<Facts>(), "kh.v1.Facts");
    }
}
