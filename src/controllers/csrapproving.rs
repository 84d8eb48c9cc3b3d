//! Automatic approval of node certificate requests (kube-controller-manager's
//! `csrapproving`): a `kubernetes.io/kube-apiserver-client-kubelet` request for
//! `system:node:<name>` in `system:nodes` is approved when a SubjectAccessReview says its
//! requester may create `certificatesigningrequests/nodeclient` (a new node, with a
//! bootstrap token) or, asking for its own name, `certificatesigningrequests/selfnodeclient`
//! (a renewal). Two approvals are ferrokube's, so that a joined node works with no operator
//! step, as k3s's do: a node's `kubernetes.io/kubelet-serving` request for its own name, and
//! a node's `kubernetes.io/kube-apiserver-client` request for the identity of its service
//! proxy or cluster DNS. Anything else is left for `kubectl certificate approve|deny`.

use super::certificates::{node_subject, KUBELET_SERVING, KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET};
use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::csr::Requested;
use crate::vocab::resource::builtin::{CERTIFICATESIGNINGREQUESTS, SUBJECTACCESSREVIEWS};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};

/// The identities a node's own components act as (service proxy, cluster DNS), for which a
/// node's client-certificate requests are approved.
pub const NODE_COMPONENTS: &[&str] = &["system:kube-proxy", "system:serviceaccount:kube-system:coredns", "system:ferrokube:network-policy", "system:ferrokube:csi-controller"];

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let q = queue.clone();
    s.informers.on(&CERTIFICATESIGNINGREQUESTS.all(), move |c| {
        if !c.is_delete() {
            q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "csrapproving", queue, 1, move |name| {
        let ctl = ctl.clone();
        async move { reconcile(&ctl, &name).await }
    });
}

fn decided(csr: &Value) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
}

/// What approval a request may get: the subresource whose `create` the requester must be
/// allowed (a SubjectAccessReview decides), or a decision made here; None: not ours.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Review(&'static str, &'static str),
    Approve(&'static str),
}

/// The verdict for a request of `signer` asking for `asked` with `usages`, sent by `username`.
pub fn verdict(signer: &str, asked: &Requested, usages: &[&str], username: &str, groups: &[&str]) -> Option<Verdict> {
    let node_requester = username.starts_with(crate::vocab::user::NODE_PREFIX) && groups.contains(&crate::vocab::user::NODES);
    match signer {
        KUBE_APISERVER_CLIENT_KUBELET => {
            let plain = usages.iter().all(|u| ["client auth", "digital signature", "key encipherment"].contains(u)) && usages.contains(&"client auth");
            if !plain || node_subject(asked, false).is_err() {
                return None;
            }
            Some(if asked.common_name == username {
                Verdict::Review("selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview.")
            } else {
                Verdict::Review("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview.")
            })
        }
        KUBELET_SERVING => {
            let plain = usages.iter().all(|u| ["server auth", "digital signature", "key encipherment"].contains(u)) && usages.contains(&"server auth");
            (plain && node_requester && asked.common_name == username && node_subject(asked, true).is_ok())
                .then_some(Verdict::Approve("Auto approving kubelet serving certificate: the requester is the node it names."))
        }
        KUBE_APISERVER_CLIENT => {
            let plain = usages.iter().all(|u| ["client auth", "digital signature", "key encipherment"].contains(u)) && usages.contains(&"client auth");
            let component = NODE_COMPONENTS.contains(&asked.common_name.as_str()) && asked.organizations.is_empty() && asked.dns_names.is_empty() && asked.ip_addresses.is_empty() && asked.other_names.is_empty();
            (plain && node_requester && component).then_some(Verdict::Approve("Auto approving a node component's client certificate: requested by a node."))
        }
        _ => None,
    }
}

async fn reconcile(ctl: &Ctl, name: &str) -> Result<Next, ApiError> {
    let target = CERTIFICATESIGNINGREQUESTS.name(name);
    let Some(mut csr) = not_found_ok(ctl.client.get(target.clone()).await)? else { return Ok(Next::Idle) };
    if decided(&csr) || csr["status"]["certificate"].is_string() {
        return Ok(Next::Idle);
    }
    let Ok(pem) = crate::vocab::csr::request_pem(&csr) else { return Ok(Next::Idle) };
    let Ok(asked) = Requested::from_pem(&pem) else { return Ok(Next::Idle) };
    let spec = csr["spec"].clone();
    let usages: Vec<&str> = spec["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let groups: Vec<&str> = spec["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let username = spec["username"].as_str().unwrap_or("").to_string();
    let username = username.as_str();
    let message = match verdict(spec["signerName"].as_str().unwrap_or(""), &asked, &usages, username, &groups) {
        None => return Ok(Next::Idle),
        Some(Verdict::Approve(m)) => m,
        Some(Verdict::Review(sub, m)) => {
            let review = json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {
                    "user": username, "uid": spec["uid"], "groups": spec["groups"], "extra": spec["extra"],
                    "resourceAttributes": {"group": "certificates.k8s.io", "resource": "certificatesigningrequests", "subresource": sub, "verb": "create"},
                },
            });
            let answer = ctl.client.create(SUBJECTACCESSREVIEWS.all(), &review).await?;
            if answer["status"]["allowed"] != true {
                // Not ours to approve: an administrator decides.
                return Ok(Next::Idle);
            }
            m
        }
    };
    let now = crate::vocab::object::now();
    let condition = json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message, "lastUpdateTime": now, "lastTransitionTime": now});
    match csr["status"]["conditions"].as_array_mut() {
        Some(c) => c.push(condition),
        None => csr["status"]["conditions"] = json!([condition]),
    }
    tracing::info!(csr = name, signer = %csr["spec"]["signerName"], requester = username, "certificate request approved");
    not_found_ok(ctl.client.replace(target.sub("approval"), &csr).await)?;
    Ok(Next::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(cn: &str, orgs: &[&str], dns: &[&str]) -> Requested {
        Requested { common_name: cn.into(), organizations: orgs.iter().map(|s| s.to_string()).collect(), dns_names: dns.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn node_requests_get_the_approvals_upstream_and_ferrokube_give() {
        let node = asked("system:node:n1", &["system:nodes"], &[]);
        let client = ["digital signature", "client auth"];
        let boot = ("system:bootstrap:abcdef", ["system:bootstrappers"]);
        assert!(matches!(verdict(KUBE_APISERVER_CLIENT_KUBELET, &node, &client, boot.0, &boot.1), Some(Verdict::Review("nodeclient", _))));
        assert!(matches!(verdict(KUBE_APISERVER_CLIENT_KUBELET, &node, &client, "system:node:n1", &["system:nodes"]), Some(Verdict::Review("selfnodeclient", _))));
        assert_eq!(verdict(KUBE_APISERVER_CLIENT_KUBELET, &asked("jane", &["system:nodes"], &[]), &client, boot.0, &boot.1), None, "not a node subject");
        assert_eq!(verdict(KUBE_APISERVER_CLIENT_KUBELET, &asked("system:node:n1", &["system:masters"], &[]), &client, boot.0, &boot.1), None);
        assert_eq!(verdict(KUBE_APISERVER_CLIENT_KUBELET, &node, &["server auth"], boot.0, &boot.1), None);

        let serving = asked("system:node:n1", &["system:nodes"], &["n1"]);
        let usages = ["digital signature", "server auth"];
        assert!(matches!(verdict(KUBELET_SERVING, &serving, &usages, "system:node:n1", &["system:nodes"]), Some(Verdict::Approve(_))));
        assert_eq!(verdict(KUBELET_SERVING, &serving, &usages, "system:node:n2", &["system:nodes"]), None, "only for its own name");
        assert_eq!(verdict(KUBELET_SERVING, &serving, &usages, boot.0, &boot.1), None);

        let proxy = asked("system:kube-proxy", &[], &[]);
        assert!(matches!(verdict(KUBE_APISERVER_CLIENT, &proxy, &client, "system:node:n1", &["system:nodes"]), Some(Verdict::Approve(_))));
        assert_eq!(verdict(KUBE_APISERVER_CLIENT, &asked("system:kube-proxy", &["system:masters"], &[]), &client, "system:node:n1", &["system:nodes"]), None);
        assert_eq!(verdict(KUBE_APISERVER_CLIENT, &asked("admin", &[], &[]), &client, "system:node:n1", &["system:nodes"]), None);
        assert_eq!(verdict(KUBE_APISERVER_CLIENT, &proxy, &client, "jane", &[]), None);
    }
}
