//! The operator's Kubernetes Events: one reporter name for every controller, so that
//! `kubectl get events --field-selector reportingComponent=warren-operator` finds them all.

/// The recorder of the Events the operator emits (scaling, Job transitions).
pub fn recorder(client: kube::Client) -> kube::runtime::events::Recorder {
    let reporter = kube::runtime::events::Reporter { controller: "warren-operator".into(), instance: None };
    kube::runtime::events::Recorder::new(client, reporter)
}
