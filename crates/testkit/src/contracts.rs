//! Contract deployment helpers.
