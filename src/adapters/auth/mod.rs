//! Authentication primitives for the cloud adapters: each turns credential material plus the
//! parts of a request (and a time, passed in) into the header value or token the cloud expects.
//!
//! - [`sigv4`]: AWS Signature Version 4 headers (AWS IoT Core HTTPS publish, Lambda Invoke).
//! - [`sas`]: Azure Shared Access Signature tokens (IoT Hub, Event Hubs, Service Bus).
//! - [`google`]: the Google service-account JWT bearer grant (RS256 assertion, token request and
//!   response) for Pub/Sub.
//! - [`basic`]: HTTP Basic credentials (Things Cloud / Cumulocity, plain HTTPS servers).
//!
//! What these modules do not do: IO of any kind (the token request is built and its response
//! parsed here; sending it is the control plane's job), reading a clock, caching or refreshing
//! credentials, or reading secrets from config. Secrets never appear in `Debug` output or in
//! error messages: key types redact themselves, errors name the field or step that failed.

#![forbid(unsafe_code)]

pub mod basic;
pub mod google;
pub mod sas;
pub mod sigv4;
