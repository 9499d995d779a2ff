//! Why an event waits (`waiting` in the view of one event or deposit), as the daemon
//! loop answers it: a stage of the pipeline, or a signing session's state.

use crate::records::ReleaseStatus;
use serde::Serialize;
use utoipa::ToSchema;

/// Why an event waits: a pipeline stage (`state` names it), or the signing session of
/// its mint (`state`: `queued`, `retrying` or `signing`, with its `batch`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Waiting {
    Stage(Stage),
    Session {
        #[serde(flatten)]
        session: SessionWait,
        #[serde(skip_serializing_if = "Option::is_none")]
        batch: Option<BatchWait>,
    },
}

/// A pipeline stage that holds an event.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "state")]
pub enum Stage {
    /// Reorged out past finality: never signed, relayed or paid.
    #[serde(rename = "reorged")]
    Reorged { detail: &'static str },
    /// A mint held until its bridge holds the epoch's key.
    #[serde(rename = "held")]
    Held { reason: Option<String> },
    /// A certified peg-out no release pays yet.
    #[serde(rename = "waiting for a release")]
    WaitingForRelease { certified_for_secs: Option<u64>, proposer_in_turn: usize, this_node_proposes_in_ms: u64 },
    /// A peg-out in a release being signed.
    #[serde(rename = "releasing")]
    Releasing {
        release: String,
        status: ReleaseStatus,
        inputs: usize,
        inputs_signed: usize,
        unsigned_inputs: Vec<UnsignedInput>,
    },
    /// A mint waiting to be put in a batch.
    #[serde(rename = "batching")]
    Batching {
        chain_id: u64,
        certified_for_ms: u64,
        proposer: usize,
        proposer_rank_of_this_node: usize,
        this_node_proposes_in_ms: u64,
    },
    #[serde(rename = "waiting for the evm key's test signature")]
    WaitingForEvmKey,
    /// A batch proposed, waiting for enough validators to hold it.
    #[serde(rename = "awaiting signers")]
    AwaitingSigners { batch: BatchWait, ready: Vec<usize>, needed: usize },
}

/// One unsigned input of a release, and its session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnsignedInput {
    pub input: usize,
    pub session: Option<SessionWait>,
}

/// The batch a mint is in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchWait {
    /// The Merkle root (`0x` + 32 bytes).
    pub root: String,
    pub mints: usize,
    pub proposer: usize,
    pub proposed_ms_ago: u64,
}

/// Where a message stands with its signer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionWait {
    /// Waiting for a session slot (or set aside for lack of signers).
    Queued {
        position: Option<usize>,
        queued: usize,
        sessions_in_flight: usize,
        max_sessions_in_flight: usize,
        set_aside: Option<SetAside>,
    },
    /// A round failed; the next starts in `next_round_in_ms`.
    Retrying { session: String, round: u32, failed_rounds: u32, next_round_in_ms: u64 },
    Signing {
        session: String,
        round: u32,
        attempt: Option<u32>,
        coordinator: Option<usize>,
        candidates: Option<Vec<usize>>,
        excluded: Option<Vec<usize>>,
        missing_commitments: Option<Vec<usize>>,
        missing_shares: Option<Vec<usize>>,
        running_for_ms: u64,
    },
}

/// A session set aside for lack of signers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SetAside {
    pub attempt: u32,
    /// Signers present in its attempt.
    pub committed: usize,
    pub held_messages: usize,
}
