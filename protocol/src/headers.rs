//! Message headers and the stable reasons they carry: what a dead-lettered, retried or suspect
//! task says about itself on the broker. Written here once; the worker sets them, the operator
//! and `warren dlq` read them. Headers arrive from the broker as untrusted input: readers bound
//! and validate what they parse.

/// Reasons a task is dead-lettered with (header `warren-reason`, and the `reason` of a
/// `DeadLettered` disposition). Stable: the operator and users match on them.
pub mod dead_letter_reason {
    /// The handler returned a permanent error (or exec exit code 65).
    pub const PERMANENT: &str = "permanent";
    /// A retryable failure on the last allowed attempt.
    pub const ATTEMPTS_EXHAUSTED: &str = "attempts-exhausted";
    /// The message is not a Warren task envelope of a version this worker speaks.
    pub const MALFORMED: &str = "malformed";
    /// The task names a `taskType` no handler is registered for (and there is no default).
    pub const NO_HANDLER: &str = "no-handler";
    /// The handler succeeded but returned a result over [`crate::MAX_RESULT_BYTES`].
    pub const RESULT_TOO_LARGE: &str = "result-too-large";
    /// The task's worker was lost (killed, out of memory, its channel closed) during as many of
    /// its runs as its delivery limit allows, the last ones while it ran alone (see the worker's `lost` module).
    pub const WORKER_LOST: &str = "worker-lost";
    /// The message carries no task signature, and this worker runs only tasks its pool's key
    /// signed (see [`crate::signature`]). Not run, not reported.
    pub const UNSIGNED: &str = "unsigned";
    /// The message's task signature is not its pool's: another pool's key, a forgery, a body
    /// changed on the way, or a key rotated since it was signed. Not run, not reported.
    pub const BAD_SIGNATURE: &str = "bad-signature";
}

/// Headers of a dead-lettered message.
pub mod dead_letter_header {
    pub const REASON: &str = "warren-reason";
    pub const LAST_ERROR: &str = "warren-last-error";
    pub const ATTEMPTS: &str = "warren-attempts";
    pub const JOB_UID: &str = "warren-job-uid";
    pub const TASK_INDEX: &str = "warren-task-index";
    /// Runs of the task whose worker was lost (reason `worker-lost`).
    pub const LOST_RUNS: &str = "warren-lost-runs";
}

/// Header of a message published to the retry exchange: the delay tier (milliseconds, as a
/// string) that selects the retry queue.
pub const RETRY_TIER_HEADER: &str = "warren-retry-tier";

/// Set (`"true"`) on a task moved to the pool's suspect queue (its worker was lost while it ran).
pub const SUSPECT_HEADER: &str = "warren-suspect";

/// Header of a report message: its signature under the pool's report key
/// ([`crate::signature`]).
pub const REPORT_SIGNATURE: &str = "warren-signature";

/// Header of a task message: its signature under the pool's key
/// ([`crate::signature::sign_task`]).
pub const TASK_SIGNATURE: &str = "warren-task-signature";

/// Header of a control message: the operator's Ed25519 signature of the body
/// ([`crate::control_signature`]).
pub const CONTROL_SIGNATURE: &str = "warren-control-signature";
