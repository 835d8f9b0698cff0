//! tls (placeholder: being written).
