//! API errors and their rendering as Kubernetes `Status` objects.
//!
//! Every failure the API server answers is one of these variants; `code()` and `reason()` are
//! the HTTP status and the stable Kubernetes `StatusReason`. This module does no I/O.

use serde_json::{Value, json};

/// What a request was about, for `Status.details`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub group: String,
    /// The resource (plural) name, which Kubernetes puts in `details.kind`.
    pub resource: String,
    pub name: String,
}

impl Target {
    pub fn new(group: &str, resource: &str, name: &str) -> Self {
        Target { group: group.to_string(), resource: resource.to_string(), name: name.to_string() }
    }

    /// `pods` or `deployments.apps`, as the real server names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) }
    }

    fn details(&self) -> Value {
        let mut d = serde_json::Map::new();
        if !self.name.is_empty() {
            d.insert("name".into(), json!(self.name));
        }
        if !self.group.is_empty() {
            d.insert("group".into(), json!(self.group));
        }
        if !self.resource.is_empty() {
            d.insert("kind".into(), json!(self.resource));
        }
        Value::Object(d)
    }
}

/// One field-level cause of an `Invalid` or `Conflict` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error("{} \"{}\" not found", .0.qualified(), .0.name)]
    NotFound(Target),
    #[error("{message}")]
    NotFoundMessage { message: String },
    #[error("{} \"{}\" already exists", .0.qualified(), .0.name)]
    AlreadyExists(Target),
    #[error("Operation cannot be fulfilled on {} \"{}\": {message}", .target.qualified(), .target.name)]
    Conflict { target: Target, message: String },
    #[error("{message}")]
    ApplyConflict { target: Target, message: String, causes: Vec<Cause> },
    /// `kind_group` is e.g. `Job.warren.dev`; the message lists the causes like the real server.
    #[error("{}", invalid_message(.kind_group, &.target.name, .causes))]
    Invalid { kind_group: String, target: Target, causes: Vec<Cause> },
    #[error("{0}")]
    BadRequest(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// An object over what etcd stores (`--max-request-bytes`, 1.5 MiB by default): a real API
    /// server answers 413 (older ones a 500 with the same message).
    #[error("etcdserver: request is too large")]
    RequestEntityTooLarge,
    #[error("{0}")]
    Internal(String),
}

fn invalid_message(kind_group: &str, name: &str, causes: &[Cause]) -> String {
    let parts: Vec<String> =
        causes.iter().map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) }).collect();
    let list = if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) };
    format!("{kind_group} \"{name}\" is invalid: {list}")
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) | ApiError::NotFoundMessage { .. } => 404,
            ApiError::AlreadyExists(_) | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Expired { .. } => 410,
            ApiError::RequestEntityTooLarge => 413,
            ApiError::Internal(_) => 500,
        }
    }

    /// The Kubernetes `StatusReason`, stable across releases.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::NotFoundMessage { .. } => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Expired { .. } => "Expired",
            ApiError::RequestEntityTooLarge => "RequestEntityTooLarge",
            ApiError::Internal(_) => "InternalError",
        }
    }

    pub fn invalid(kind_group: &str, target: Target, causes: Vec<Cause>) -> Self {
        ApiError::Invalid { kind_group: kind_group.to_string(), target, causes }
    }

    pub fn invalid_field(kind_group: &str, target: Target, field: &str, reason: &str, message: &str) -> Self {
        Self::invalid(kind_group, target, vec![Cause { reason: reason.into(), message: message.into(), field: field.into() }])
    }

    /// The `Status` object the API answers with.
    pub fn to_status(&self) -> Value {
        let details = match self {
            ApiError::NotFound(t) | ApiError::AlreadyExists(t) | ApiError::Conflict { target: t, .. } => Some(t.details()),
            ApiError::ApplyConflict { target, causes, .. } | ApiError::Invalid { target, causes, .. } => {
                let mut d = target.details();
                d["causes"] = causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
                Some(d)
            }
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_qualified_resource() {
        let e = ApiError::NotFound(Target::new("apps", "deployments", "web"));
        let s = e.to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
    }

    #[test]
    fn invalid_lists_one_cause_without_brackets_and_many_with() {
        let c = |f: &str| Cause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: f.into() };
        let one = ApiError::invalid("Job.warren.dev", Target::new("warren.dev", "jobs", "x"), vec![c("spec.a")]);
        assert_eq!(one.to_string(), "Job.warren.dev \"x\" is invalid: spec.a: Required value");
        let two = ApiError::invalid("Job.warren.dev", Target::new("warren.dev", "jobs", "x"), vec![c("spec.a"), c("spec.b")]);
        assert_eq!(two.to_string(), "Job.warren.dev \"x\" is invalid: [spec.a: Required value, spec.b: Required value]");
        assert_eq!(two.to_status()["details"]["causes"][1]["field"], "spec.b");
    }
}
