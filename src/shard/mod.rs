//! shard (placeholder: being written).
