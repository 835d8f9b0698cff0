//! control (placeholder: being written).
