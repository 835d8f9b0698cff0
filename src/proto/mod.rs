//! Sans-IO protocol codecs: synchronous, no sockets, no clock, no `unsafe`.
//!
//! Decoders return complete / incomplete / error; incomplete input is never an error. Limits are
//! checked before input is buffered. Decoded fields are `bytes::Bytes` slices of the receive
//! buffer, not copies.
#![forbid(unsafe_code)]

pub mod http1;
pub mod mqtt;
pub mod radius;
