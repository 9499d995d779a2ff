//! Real test chains (see the crate description).
