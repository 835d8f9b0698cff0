//! config (placeholder: being written).
