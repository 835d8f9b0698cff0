//! MQTT codec (placeholder: being written).
