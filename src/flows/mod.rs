//! flows (placeholder: being written).
