//! reactor (placeholder: being written).
