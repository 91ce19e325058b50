//! The Kubernetes "restricted" Pod Security Standard: the security settings Warren gives the pods
//! it writes, and a checker of every rule of the profile (used by tests, so that a change to the
//! worker Deployment that a namespace enforcing `restricted` would refuse fails here first).
//!
//! Rules from <https://kubernetes.io/docs/concepts/security/pod-security-standards/> (baseline and
//! restricted, v1.3x): host namespaces, privileged, capabilities, hostPath volumes, host ports,
//! AppArmor, SELinux, `/proc` mount, seccomp, sysctls; then volume types, privilege escalation,
//! running as non-root, non-root user, seccomp RuntimeDefault/Localhost, dropping ALL capabilities.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};

/// The uid and gid Warren's images run as (the Dockerfile's `USER 65532:65532`).
pub const NON_ROOT_ID: i64 = 65532;
/// The writable scratch directory of a pod whose root filesystem is read-only.
pub const TMP_VOLUME: &str = "tmp";
pub const TMP_PATH: &str = "/tmp";

/// Pod-level defaults: non-root uid/gid, the runtime's default seccomp profile.
pub fn pod_defaults() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        fs_group: Some(NON_ROOT_ID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

/// Container-level defaults: no privilege escalation, no capabilities, a read-only root
/// filesystem (with [`tmp_volume`] mounted at `/tmp`).
pub fn container_defaults() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

/// The `emptyDir` behind `/tmp`.
pub fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume { name: TMP_VOLUME.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        VolumeMount { name: TMP_VOLUME.into(), mount_path: TMP_PATH.into(), ..VolumeMount::default() },
    )
}

/// Volume types the restricted profile allows.
const RESTRICTED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Every rule of the restricted profile that `pod` breaks, one line each naming the field.
pub fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let psc = pod.security_context.clone().unwrap_or_default();
    for (flag, name) in [(pod.host_network, "hostNetwork"), (pod.host_pid, "hostPID"), (pod.host_ipc, "hostIPC")] {
        if flag == Some(true) {
            out.push(format!("spec.{name} must not be true"));
        }
    }
    if psc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.push("spec.securityContext.windowsOptions.hostProcess must not be true".into());
    }
    for sysctl in psc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            out.push(format!("spec.securityContext.sysctls: {} is not a safe sysctl", sysctl.name));
        }
    }
    if psc.run_as_user == Some(0) {
        out.push("spec.securityContext.runAsUser must not be 0".into());
    }
    check_selinux(psc.se_linux_options.as_ref().and_then(|o| o.type_.as_deref()), "spec.securityContext", &mut out);
    check_apparmor(psc.app_armor_profile.as_ref().map(|p| p.type_.as_str()), "spec.securityContext", &mut out);
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if pod_seccomp == Some("Unconfined") {
        out.push("spec.securityContext.seccompProfile.type must not be Unconfined".into());
    }
    for volume in pod.volumes.iter().flatten() {
        let kind = volume_kind(volume);
        if !RESTRICTED_VOLUMES.contains(&kind) {
            out.push(format!("spec.volumes[{}]: volume type {kind} is not allowed", volume.name));
        }
    }
    let containers =
        pod.init_containers.iter().flatten().map(|c| ("initContainers", c)).chain(pod.containers.iter().map(|c| ("containers", c)));
    for (list, c) in containers {
        check_container(list, c, &psc, &mut out);
    }
    for c in pod.ephemeral_containers.iter().flatten() {
        let as_container = Container {
            name: c.name.clone(),
            security_context: c.security_context.clone(),
            ports: c.ports.clone(),
            ..Container::default()
        };
        check_container("ephemeralContainers", &as_container, &psc, &mut out);
    }
    out
}

fn check_container(list: &str, c: &Container, psc: &PodSecurityContext, out: &mut Vec<String>) {
    let at = format!("spec.{list}[{}]", c.name);
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.privileged == Some(true) {
        out.push(format!("{at}.securityContext.privileged must not be true"));
    }
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.push(format!("{at}.securityContext.windowsOptions.hostProcess must not be true"));
    }
    if sc.allow_privilege_escalation != Some(false) {
        out.push(format!("{at}.securityContext.allowPrivilegeEscalation must be false"));
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        out.push(format!("{at}.securityContext.capabilities.drop must include ALL"));
    }
    for add in caps.add.iter().flatten() {
        if add != "NET_BIND_SERVICE" {
            out.push(format!("{at}.securityContext.capabilities.add: {add} is not allowed"));
        }
    }
    let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
    if non_root != Some(true) {
        out.push(format!("{at}.securityContext.runAsNonRoot must be true (here or in the pod's securityContext)"));
    }
    if sc.run_as_user == Some(0) {
        out.push(format!("{at}.securityContext.runAsUser must not be 0"));
    }
    let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()).or(psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()));
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        out.push(format!("{at}.securityContext.seccompProfile.type must be RuntimeDefault or Localhost (here or in the pod's)"));
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        out.push(format!("{at}.securityContext.procMount must be Default"));
    }
    check_selinux(sc.se_linux_options.as_ref().and_then(|o| o.type_.as_deref()), &format!("{at}.securityContext"), out);
    check_apparmor(sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()), &format!("{at}.securityContext"), out);
    for port in c.ports.iter().flatten() {
        if port.host_port.is_some_and(|p| p != 0) {
            out.push(format!("{at}.ports: hostPort {} is not allowed", port.host_port.unwrap_or_default()));
        }
    }
}

fn check_selinux(type_: Option<&str>, at: &str, out: &mut Vec<String>) {
    if let Some(t) = type_
        && !matches!(t, "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t")
    {
        out.push(format!("{at}.seLinuxOptions.type {t} is not allowed"));
    }
}

fn check_apparmor(type_: Option<&str>, at: &str, out: &mut Vec<String>) {
    if type_ == Some("Unconfined") {
        out.push(format!("{at}.appArmorProfile.type must not be Unconfined"));
    }
}

/// The volume source a volume uses, by its field name.
fn volume_kind(v: &Volume) -> &'static str {
    let sources: [(bool, &'static str); 8] = [
        (v.config_map.is_some(), "configMap"),
        (v.csi.is_some(), "csi"),
        (v.downward_api.is_some(), "downwardAPI"),
        (v.empty_dir.is_some(), "emptyDir"),
        (v.ephemeral.is_some(), "ephemeral"),
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.projected.is_some(), "projected"),
        (v.secret.is_some(), "secret"),
    ];
    if let Some((_, kind)) = sources.iter().find(|(set, _)| *set) {
        return kind;
    }
    if v.host_path.is_some() { "hostPath" } else { "other" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restricted_pod() -> PodSpec {
        let (volume, mount) = tmp_volume();
        PodSpec {
            security_context: Some(pod_defaults()),
            volumes: Some(vec![volume]),
            containers: vec![Container {
                name: "c".into(),
                security_context: Some(container_defaults()),
                volume_mounts: Some(vec![mount]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }
    }

    #[test]
    fn the_defaults_satisfy_the_restricted_profile() {
        assert_eq!(restricted_violations(&restricted_pod()), Vec::<String>::new());
    }

    #[test]
    fn each_rule_is_checked() {
        let cases: Vec<(Box<dyn Fn(&mut PodSpec)>, &str)> = vec![
            (Box::new(|p| p.host_network = Some(true)), "hostNetwork"),
            (Box::new(|p| p.containers[0].security_context.as_mut().unwrap().privileged = Some(true)), "privileged"),
            (
                Box::new(|p| p.containers[0].security_context.as_mut().unwrap().allow_privilege_escalation = None),
                "allowPrivilegeEscalation",
            ),
            (Box::new(|p| p.containers[0].security_context.as_mut().unwrap().capabilities = None), "drop must include ALL"),
            (
                Box::new(|p| {
                    p.containers[0].security_context.as_mut().unwrap().capabilities =
                        Some(Capabilities { drop: Some(vec!["ALL".into()]), add: Some(vec!["SYS_ADMIN".into()]) })
                }),
                "SYS_ADMIN",
            ),
            (
                Box::new(|p| {
                    p.security_context.as_mut().unwrap().run_as_non_root = None;
                    p.containers[0].security_context.as_mut().unwrap().run_as_non_root = None;
                }),
                "runAsNonRoot",
            ),
            (Box::new(|p| p.security_context.as_mut().unwrap().run_as_user = Some(0)), "runAsUser must not be 0"),
            (Box::new(|p| p.security_context.as_mut().unwrap().seccomp_profile = None), "seccompProfile"),
            (
                Box::new(|p| {
                    p.volumes.as_mut().unwrap().push(Volume {
                        name: "host".into(),
                        host_path: Some(Default::default()),
                        ..Volume::default()
                    })
                }),
                "hostPath",
            ),
            (
                Box::new(|p| {
                    p.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                        container_port: 80,
                        host_port: Some(80),
                        ..Default::default()
                    }])
                }),
                "hostPort",
            ),
            (Box::new(|p| p.containers[0].security_context.as_mut().unwrap().proc_mount = Some("Unmasked".into())), "procMount"),
        ];
        for (break_it, expected) in cases {
            let mut pod = restricted_pod();
            break_it(&mut pod);
            let violations = restricted_violations(&pod);
            assert!(violations.iter().any(|v| v.contains(expected)), "{expected}: {violations:?}");
        }
    }
}
