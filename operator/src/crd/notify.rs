//! `spec.notify` of Jobs and Workflows (completion events) and the delivery records of
//! `status.notifications`. The delivery itself is `crate::notify`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most destinations in one object's `spec.notify`.
pub const MAX_NOTIFICATIONS: usize = 8;

/// One destination of completion events: a webhook, and the phases it is told about.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The HTTP endpoint that receives a signed CloudEvents 1.0 JSON POST
    /// (docs/notifications.md).
    pub webhook: Webhook,
    /// The phases that send an event, each at most once per object: `Succeeded`, `Failed`.
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q == p))").message("phases in on must be unique"))]
    pub on: Vec<NotifyPhase>,
}

/// A webhook destination.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// `http://` or `https://` URL the event is POSTed to. Its host must be allowed by the
    /// operator (`--notify-allowed-hosts`, chart `notify.allowedHosts`); cluster-internal
    /// addresses and the cloud metadata address are refused unless allowed explicitly.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#@ ]+([/?#].*)?$')").message("url must be an http:// or https:// URL with a host"))]
    pub url: String,
    /// The Secret (in the object's namespace) and its key holding the HMAC-SHA256 signing key:
    /// every event carries `webhook-signature: v1=<hex>` over `<webhook-timestamp>.<body>`.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the object's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data; its bytes are the signing key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A phase that sends a completion event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum NotifyPhase {
    /// The object ended `Succeeded`.
    Succeeded,
    /// The object ended `Failed`.
    Failed,
}

impl NotifyPhase {
    /// Lower case, as in the event type (`dev.warren.job.succeeded.v1`) and id.
    pub fn as_lower(self) -> &'static str {
        match self {
            NotifyPhase::Succeeded => "succeeded",
            NotifyPhase::Failed => "failed",
        }
    }
}

/// The delivery of one phase's event to one destination (`status.notifications`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// The destination: the webhook URL of `spec.notify`.
    pub destination: String,
    /// The phase whose event this is.
    pub phase: NotifyPhase,
    /// The event's `id` (the same in every attempt: receivers de-duplicate on it).
    #[serde(default)]
    pub id: String,
    /// Requests sent so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the last request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// When a request was answered with a 2xx: delivered, never sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Time>,
    /// When the operator gave up (the destination is refused, or every attempt failed): never
    /// sent again; `reason` and `lastError` say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<Time>,
    /// Why it was abandoned: `DestinationRefused` or `AttemptsExhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last failure (at most 512 bytes): the HTTP status, a connection error, a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
