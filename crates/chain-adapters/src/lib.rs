//! Chain adapters.
