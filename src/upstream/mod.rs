//! upstream (placeholder: being written).
