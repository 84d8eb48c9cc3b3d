//! Pod Security admission: the Pod Security Standards (`privileged`, `baseline`,
//! `restricted`) a namespace asks for with its `pod-security.kubernetes.io/enforce` and
//! `warn` labels, checked as upstream's admission plugin checks them, with its reasons and
//! details. Pods that violate the enforce level are refused (403); violations of the warn
//! level, and of either level by a workload's pod template, come back as warnings.

use serde_json::Value;

pub const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
pub const WARN: &str = "pod-security.kubernetes.io/warn";
pub const AUDIT: &str = "pod-security.kubernetes.io/audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The capabilities a baseline container may add (the container runtime's defaults).
const DEFAULT_CAPS: &[&str] = &["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
];
const RESTRICTED_VOLUMES: &[&str] = &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

fn quote(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}
fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", plural("container", "containers", names.len()), quote(names))
}

/// Init containers, containers, ephemeral containers, in that order (upstream's visit order).
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|f| spec[*f].as_array().into_iter().flatten()).collect()
}
fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

/// The violations of `level` by a pod with `meta` and `spec`: (check id, reason, detail),
/// ordered by check id as upstream reports them.
pub fn violations(level: Level, meta: &Value, spec: &Value) -> Vec<(&'static str, &'static str, String)> {
    let mut out: Vec<(&'static str, &'static str, String)> = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let restricted = level == Level::Restricted;
    let cs = containers(spec);
    let psc = &spec["securityContext"];
    let names_where = |f: &dyn Fn(&Value) -> bool| -> Vec<String> { cs.iter().filter(|c| f(c)).map(|c| cname(c)).collect() };

    // Baseline.
    let ns: Vec<&str> = [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")].iter().filter(|(f, _)| spec[*f] == true).map(|(_, d)| *d).collect();
    if !ns.is_empty() {
        out.push(("hostNamespaces", "host namespaces", ns.join(", ")));
    }
    let privileged = names_where(&|c| c["securityContext"]["privileged"] == true);
    if !privileged.is_empty() {
        out.push(("privileged", "privileged", format!("{} must not set securityContext.privileged=true", containers_phrase(&privileged))));
    }
    let (mut cap_containers, mut caps) = (Vec::new(), Vec::<String>::new());
    for c in &cs {
        let mut bad = false;
        for cap in c["securityContext"]["capabilities"]["add"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
            let allowed = if restricted { cap == "NET_BIND_SERVICE" } else { DEFAULT_CAPS.contains(&cap) };
            if !allowed {
                bad = true;
                if !caps.iter().any(|x| x == cap) {
                    caps.push(cap.to_string());
                }
            }
        }
        if bad {
            cap_containers.push(cname(c));
        }
    }
    let add_detail = (!caps.is_empty()).then(|| format!("{} must not include {} in securityContext.capabilities.add", containers_phrase(&cap_containers), quote(&caps)));
    if restricted {
        let no_drop = names_where(&|c| !c["securityContext"]["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL")));
        let mut details = Vec::new();
        if !no_drop.is_empty() {
            details.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&no_drop)));
        }
        details.extend(add_detail);
        if !details.is_empty() {
            out.push(("capabilities_restricted", "unrestricted capabilities", details.join("; ")));
        }
    } else if let Some(d) = add_detail {
        out.push(("capabilities_baseline", "non-default capabilities", d));
    }
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    if restricted {
        let (mut names, mut types) = (Vec::new(), Vec::<String>::new());
        for v in &volumes {
            let Some(obj) = v.as_object() else { continue };
            for k in obj.keys().filter(|k| *k != "name") {
                if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                    names.push(v["name"].as_str().unwrap_or("").to_string());
                    if !types.contains(k) {
                        types.push(k.clone());
                    }
                }
            }
        }
        if !names.is_empty() {
            out.push(("restrictedVolumes", "restricted volume types", format!("{} {} {} {} {}", plural("volume", "volumes", names.len()), quote(&names), plural("uses", "use", names.len()), plural("restricted volume type", "restricted volume types", types.len()), quote(&types))));
        }
    } else {
        let host: Vec<String> = volumes.iter().filter(|v| v["hostPath"].is_object()).map(|v| v["name"].as_str().unwrap_or("").to_string()).collect();
        if !host.is_empty() {
            out.push(("hostPathVolumes", "hostPath volumes", format!("{} {}", plural("volume", "volumes", host.len()), quote(&host))));
        }
    }
    let (mut port_containers, mut ports) = (Vec::new(), Vec::new());
    for c in &cs {
        let hp: Vec<String> = c["ports"].as_array().into_iter().flatten().filter_map(|p| p["hostPort"].as_i64()).filter(|p| *p != 0).map(|p| p.to_string()).collect();
        if !hp.is_empty() {
            port_containers.push(cname(c));
            ports.extend(hp);
        }
    }
    if !ports.is_empty() {
        out.push(("hostPorts", "hostPort", format!("{} {} {} {}", containers_phrase(&port_containers), plural("uses", "use", port_containers.len()), plural("hostPort", "hostPorts", ports.len()), ports.join(", "))));
    }
    let mut apparmor = Vec::new();
    let bad_profile = |sc: &Value| sc["appArmorProfile"]["type"].as_str().is_some_and(|t| t != "RuntimeDefault" && t != "Localhost");
    if bad_profile(psc) {
        apparmor.push(format!("pod must not set appArmorProfile.type to {:?}", psc["appArmorProfile"]["type"].as_str().unwrap_or("")));
    }
    for c in &cs {
        if bad_profile(&c["securityContext"]) {
            apparmor.push(format!("container {:?} must not set appArmorProfile.type to {:?}", cname(c), c["securityContext"]["appArmorProfile"]["type"].as_str().unwrap_or("")));
        }
    }
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let v = v.as_str().unwrap_or("");
            if v != "runtime/default" && !v.starts_with("localhost/") {
                apparmor.push(format!("{k}={v:?}"));
            }
        }
    }
    if !apparmor.is_empty() {
        out.push(("appArmorProfile", "forbidden AppArmor profile", apparmor.join(", ")));
    }
    let selinux_bad = |sc: &Value| {
        let o = &sc["seLinuxOptions"];
        o.is_object() && (!SELINUX_TYPES.contains(&o["type"].as_str().unwrap_or("")) || o["user"].as_str().is_some_and(|s| !s.is_empty()) || o["role"].as_str().is_some_and(|s| !s.is_empty()))
    };
    let mut selinux = Vec::new();
    if selinux_bad(psc) {
        selinux.push("pod".to_string());
    }
    selinux.extend(names_where(&|c| selinux_bad(&c["securityContext"])).iter().map(|n| format!("container {n:?}")));
    if !selinux.is_empty() {
        out.push(("seLinuxOptions", "seLinuxOptions", format!("{} set forbidden securityContext.seLinuxOptions", selinux.join(", "))));
    }
    let proc_mount = names_where(&|c| c["securityContext"]["procMount"].as_str().is_some_and(|m| m != "Default"));
    if !proc_mount.is_empty() {
        out.push(("procMount", "procMount", format!("{} must not set securityContext.procMount to \"Unmasked\"", containers_phrase(&proc_mount))));
    }
    let seccomp = |sc: &Value| sc["seccompProfile"]["type"].as_str().map(String::from);
    let mut seccomp_details = Vec::new();
    let pod_type = seccomp(psc);
    if pod_type.as_deref() == Some("Unconfined") {
        seccomp_details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
    }
    let unconfined = names_where(&|c| seccomp(&c["securityContext"]).as_deref() == Some("Unconfined"));
    if !unconfined.is_empty() {
        seccomp_details.push(format!("{} must not set securityContext.seccompProfile.type to \"Unconfined\"", containers_phrase(&unconfined)));
    }
    if restricted && !matches!(pod_type.as_deref(), Some("RuntimeDefault" | "Localhost")) {
        let unset = names_where(&|c| seccomp(&c["securityContext"]).is_none());
        if !unset.is_empty() && pod_type.is_none() {
            seccomp_details.push(format!("pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", containers_phrase(&unset)));
        }
    }
    if !seccomp_details.is_empty() {
        out.push((if restricted { "seccompProfile_restricted" } else { "seccompProfile_baseline" }, "seccompProfile", seccomp_details.join("; ")));
    }
    let sysctls: Vec<String> = psc["sysctls"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).filter(|n| !SAFE_SYSCTLS.contains(n)).map(String::from).collect();
    if !sysctls.is_empty() {
        out.push(("sysctls", "forbidden sysctls", sysctls.join(", ")));
    }

    // Restricted.
    if restricted {
        let escalation = names_where(&|c| c["securityContext"]["allowPrivilegeEscalation"] != false);
        if !escalation.is_empty() {
            out.push(("allowPrivilegeEscalation", "allowPrivilegeEscalation != false", format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&escalation))));
        }
        let mut details = Vec::new();
        if psc["runAsNonRoot"] == false {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false = names_where(&|c| c["securityContext"]["runAsNonRoot"] == false);
        if !explicit_false.is_empty() {
            details.push(format!("{} must not set securityContext.runAsNonRoot=false", containers_phrase(&explicit_false)));
        }
        if psc["runAsNonRoot"] != true {
            let unset = names_where(&|c| c["securityContext"]["runAsNonRoot"].is_null());
            if !unset.is_empty() {
                details.push(format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&unset)));
            }
        }
        if !details.is_empty() {
            out.push(("runAsNonRoot", "runAsNonRoot != true", details.join("; ")));
        }
        let mut root = Vec::new();
        if psc["runAsUser"] == 0 {
            root.push("pod must not set runAsUser=0".to_string());
        }
        let root_containers = names_where(&|c| c["securityContext"]["runAsUser"] == 0);
        if !root_containers.is_empty() {
            root.push(format!("{} must not set runAsUser=0", containers_phrase(&root_containers)));
        }
        if !root.is_empty() {
            out.push(("runAsUser", "runAsUser=0", root.join("; ")));
        }
    }
    out.sort_by_key(|(id, _, _)| *id);
    out
}

/// `violates PodSecurity "restricted:latest": reason (detail), ...` (`prefix`: "violates" or
/// "would violate").
pub fn message(prefix: &str, level: Level, v: &[(&'static str, &'static str, String)]) -> String {
    let list: Vec<String> = v.iter().map(|(_, reason, detail)| format!("{reason} ({detail})")).collect();
    format!("{prefix} PodSecurity \"{}:latest\": {}", level.name(), list.join(", "))
}

/// The pod metadata and spec of an object of kind `plural` (`group`), if it has one: a pod,
/// or the template of a workload.
pub fn pod_parts<'a>(group: &str, plural: &str, o: &'a Value) -> Option<(&'a Value, &'a Value, bool)> {
    match (group, plural) {
        ("", "pods") => Some((&o["metadata"], &o["spec"], true)),
        ("", "replicationcontrollers") | ("", "podtemplates") | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") | ("batch", "jobs") => {
            let t = if plural == "podtemplates" { &o["template"] } else { &o["spec"]["template"] };
            Some((&t["metadata"], &t["spec"], false))
        }
        ("batch", "cronjobs") => {
            let t = &o["spec"]["jobTemplate"]["spec"]["template"];
            Some((&t["metadata"], &t["spec"], false))
        }
        _ => None,
    }
}

/// The levels a namespace's labels ask for: (enforce, warn); invalid values are the
/// namespace validation's to refuse and count as privileged here.
pub fn levels(ns: &Value) -> (Level, Level) {
    let l = |k: &str| ns["metadata"]["labels"][k].as_str().and_then(Level::parse).unwrap_or(Level::Privileged);
    (l(ENFORCE), l(WARN))
}

/// Validation of the namespace labels: each mode's level must be one upstream knows.
pub fn validate_namespace_labels(o: &Value, causes: &mut Vec<crate::vocab::status::Cause>) {
    for k in [ENFORCE, WARN, AUDIT] {
        if let Some(v) = o["metadata"]["labels"][k].as_str() {
            if Level::parse(v).is_none() {
                causes.push(crate::vocab::status::Cause::invalid(format!("metadata.labels[{k}]"), &serde_json::json!(v), "must be one of privileged, baseline, restricted"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bare_container_violates_restricted_as_upstream_words_it() {
        let spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        let v = violations(Level::Restricted, &json!({}), &spec);
        assert_eq!(message("violates", Level::Restricted, &v), "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")");
        assert!(violations(Level::Baseline, &json!({}), &spec).is_empty());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({"hostNetwork": true, "hostPID": true, "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        let v = violations(Level::Baseline, &json!({}), &spec);
        assert_eq!(message("violates", Level::Baseline, &v), "violates PodSecurity \"baseline:latest\": non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume \"root\"), hostPort (container \"a\" uses hostPort 8080), privileged (container \"a\" must not set securityContext.privileged=true)");
    }

    #[test]
    fn a_restricted_pod_passes() {
        let spec = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}, "volumes": [{"name": "t", "projected": {}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]});
        assert_eq!(violations(Level::Restricted, &json!({}), &spec), vec![]);
    }
}
