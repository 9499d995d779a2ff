//! Sans-IO attestation consensus (see docs/architecture.md).
