//! The `warren` command line: `warren local up` (the local control plane: API server, pod
//! runner, operator), `warren dlq` (list and replay dead letters), `warren wait` (until a Job or
//! Workflow reaches a phase), `warren logs` (what a task's last attempts printed), `warren top`
//! (a live view of pools, Jobs and Workflows), `warren crds`. Its own crate so that the operator
//! (and its image) carries no local control plane.

pub mod local;
pub mod logs;
pub mod top;
pub mod wait;
