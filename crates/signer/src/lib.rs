//! Threshold signing (see docs/architecture.md).
