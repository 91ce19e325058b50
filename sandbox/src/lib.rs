//! Warren's local control plane: an in-memory Kubernetes-compatible API server (`server`) and
//! a local process runner in place of kubelet (`runner`).

pub mod runner;
pub mod server;

pub use server::{ApiServer, SandboxError, ServerOptions};
