//! The table of served kinds. Everything the API machinery does is driven by one row of this
//! table; per-kind behaviour is limited to the hooks in [`Strategy`].

use crate::api::table::Columns;
use crate::vocab::resource::Resource;
use crate::vocab::status::Cause;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Per-kind behaviour. Every hook has a generic default.
#[derive(Clone, Copy)]
pub struct Strategy {
    /// Fills defaulted fields (after decoding, before validation), as upstream defaulting does.
    pub defaults: fn(&mut Value),
    /// Validates an object about to be written (`old` on updates). Metadata is checked generically.
    pub validate: fn(&Value, Option<&Value>, &mut Vec<Cause>),
    /// Value of a kind-specific field selector (`spec.nodeName`, `status.phase`, ...).
    pub field: fn(&Value, &str) -> Option<String>,
    /// What names must look like (a DNS-1123 subdomain for most kinds).
    pub name: crate::vocab::validation::NameRule,
    /// `metadata.generation` is maintained (bumped when anything but metadata/status changes).
    pub generation: bool,
    /// Status reset on create (object -> fresh status).
    pub initial_status: Option<fn(&Value) -> Value>,
    /// An update without `metadata.resourceVersion` overwrites whatever is current (true for
    /// the built-in kinds, as upstream; custom resources require one).
    pub unconditional_update: bool,
    /// Sets what a create takes from its requester (a CSR's `spec.username`, ...).
    pub creator: Option<fn(&mut Value, &crate::vocab::user::UserInfo)>,
}

fn no_defaults(_: &mut Value) {}
fn no_validation(_: &Value, _: Option<&Value>, _: &mut Vec<Cause>) {}
fn no_fields(_: &Value, _: &str) -> Option<String> {
    None
}

impl Strategy {
    pub const PLAIN: Strategy = Strategy {
        defaults: no_defaults,
        validate: no_validation,
        field: no_fields,
        name: crate::vocab::validation::NameRule::Subdomain,
        generation: false,
        initial_status: None,
        unconditional_update: true,
        creator: None,
    };
    /// Kinds with a spec/status split.
    pub const WORKLOAD: Strategy = Strategy { generation: true, ..Strategy::PLAIN };
}

/// The answer of a review kind to a create: the request body and who asks.
pub type Review = fn(&crate::api::Api, &crate::vocab::user::UserInfo, Value) -> Result<Value, crate::vocab::status::ApiError>;

/// The answer of a read-only kind computed on request (resource metrics) to a get or list.
pub type Provider = fn(&crate::api::Api, &crate::api::request::ResourceReq, &crate::api::request::Query) -> Result<crate::api::Reply, crate::vocab::status::ApiError>;

/// Subresources a kind serves beside the main resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
    /// A CSR's approval conditions.
    Approval,
}

/// What a custom resource kind carries beside the table columns (from its CRD).
#[derive(Debug)]
pub struct Custom {
    /// Name of the CRD that defines the kind.
    pub crd: String,
    /// `openAPIV3Schema` of this version (structural), if given.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of this version.
    pub columns: Vec<Value>,
    /// Scale subresource paths: spec replicas, status replicas, label selector.
    pub scale: Option<(String, String, Option<String>)>,
}

/// One served resource: its identity (shared with clients, [`Resource`]) and how the API
/// machinery serves it.
pub struct Kind {
    pub res: Resource,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Sub],
    pub strategy: Strategy,
    /// Table columns (`kubectl get`); custom kinds take theirs from [`Custom`].
    pub columns: &'static Columns,
    /// For review kinds (SelfSubjectReview, access reviews): the answer to a create, which
    /// is computed from the request and its caller and never stored. Such kinds serve
    /// `create` only.
    pub review: Option<Review>,
    /// For kinds whose objects are computed, never stored (NodeMetrics, PodMetrics): the
    /// answer to a get or list. Such kinds serve `get` and `list` only.
    pub provider: Option<Provider>,
    /// Set for kinds defined by a CustomResourceDefinition.
    pub custom: Option<Custom>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.plural)
    }
}

impl std::ops::Deref for Kind {
    type Target = Resource;
    fn deref(&self) -> &Resource {
        &self.res
    }
}

impl Kind {
    /// Group segment of store keys (`core` for the legacy group).
    pub fn store_group(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }
    /// Store key prefix of all objects of this kind, or of one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/{}/{}/{}/", self.store_group(), self.plural, ns),
            _ => format!("/{}/{}/", self.store_group(), self.plural),
        }
    }
    /// Store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(namespace), name)
    }
    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }
    /// Verbs listed in discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.review.is_some() {
            &["create"]
        } else if self.provider.is_some() {
            &["get", "list"]
        } else {
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
    }
}

macro_rules! kind {
    ($res:ident, [$($short:expr),*], [$($cat:expr),*], [$($sub:ident),*], $strategy:expr, $columns:ident) => {
        Kind {
            res: r::$res, short_names: &[$($short),*], categories: &[$($cat),*],
            subresources: &[$(Sub::$sub),*], strategy: $strategy, columns: &table::$columns, review: None, provider: None, custom: None,
        }
    };
    ($res:ident, review $review:expr) => {
        Kind {
            res: r::$res, short_names: &[], categories: &[], subresources: &[], strategy: Strategy::PLAIN,
            columns: &table::DEFAULT, review: Some($review), provider: None, custom: None,
        }
    };
    ($res:ident, provider $provider:expr, $columns:ident) => {
        Kind {
            res: r::$res, short_names: &[], categories: &[], subresources: &[], strategy: Strategy::PLAIN,
            columns: &table::$columns, review: None, provider: Some($provider), custom: None,
        }
    };
}

use crate::api::strategies as s;
use crate::api::table;
use crate::vocab::resource::builtin as r;

/// Every kind served, in discovery order.
pub static KINDS: &[Kind] = &[
    kind!(NAMESPACES, ["ns"], [], [Status], s::NAMESPACE, NAMESPACES),
    kind!(PODS, ["po"], ["all"], [Status], s::POD, PODS),
    kind!(SERVICES, ["svc"], ["all"], [Status], s::SERVICE, SERVICES),
    kind!(ENDPOINTS, ["ep"], [], [], Strategy::PLAIN, DEFAULT),
    kind!(CONFIGMAPS, ["cm"], [], [], s::CONFIGMAP, CONFIGMAPS),
    kind!(SECRETS, [], [], [], s::SECRET, SECRETS),
    kind!(SERVICEACCOUNTS, ["sa"], [], [], Strategy::PLAIN, SERVICEACCOUNTS),
    kind!(EVENTS, ["ev"], [], [], s::EVENT, EVENTS),
    kind!(NODES, ["no"], [], [Status], s::NODE, NODES),
    kind!(PERSISTENTVOLUMES, ["pv"], [], [Status], s::PV, PVS),
    kind!(PERSISTENTVOLUMECLAIMS, ["pvc"], [], [Status], s::PVC, PVCS),
    kind!(LIMITRANGES, ["limits"], [], [], Strategy::PLAIN, DEFAULT),
    kind!(RESOURCEQUOTAS, ["quota"], [], [Status], Strategy::PLAIN, DEFAULT),
    kind!(PODTEMPLATES, [], [], [], s::PODTEMPLATE, DEFAULT),
    kind!(REPLICATIONCONTROLLERS, ["rc"], ["all"], [Status, Scale], s::RC, REPLICAS),
    kind!(DEPLOYMENTS, ["deploy"], ["all"], [Status, Scale], s::DEPLOYMENT, DEPLOYMENTS),
    kind!(REPLICASETS, ["rs"], ["all"], [Status, Scale], s::REPLICASET, REPLICAS),
    kind!(STATEFULSETS, ["sts"], ["all"], [Status, Scale], s::STATEFULSET, STATEFULSETS),
    kind!(DAEMONSETS, ["ds"], ["all"], [Status], s::DAEMONSET, DAEMONSETS),
    kind!(CONTROLLERREVISIONS, [], [], [], Strategy::PLAIN, CONTROLLERREVISIONS),
    kind!(JOBS, [], ["all"], [Status], s::JOB, JOBS),
    kind!(CRONJOBS, ["cj"], ["all"], [Status], s::CRONJOB, CRONJOBS),
    kind!(HORIZONTALPODAUTOSCALERS, ["hpa"], ["all"], [Status], s::HPA, HPAS),
    kind!(LEASES, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(ENDPOINTSLICES, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(EVENTS_V1, ["ev"], [], [], Strategy::PLAIN, DEFAULT),
    kind!(INGRESSES, ["ing"], [], [Status], Strategy::WORKLOAD, DEFAULT),
    kind!(INGRESSCLASSES, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(NETWORKPOLICIES, ["netpol"], [], [], s::NETWORKPOLICY, NETWORKPOLICIES),
    kind!(PODDISRUPTIONBUDGETS, ["pdb"], [], [Status], Strategy::WORKLOAD, PDBS),
    kind!(CLUSTERROLES, [], [], [], super::strategies::RBAC, DEFAULT),
    kind!(CLUSTERROLEBINDINGS, [], [], [], super::strategies::RBAC, DEFAULT),
    kind!(ROLES, [], [], [], super::strategies::RBAC, DEFAULT),
    kind!(ROLEBINDINGS, [], [], [], super::strategies::RBAC, DEFAULT),
    kind!(PRIORITYCLASSES, ["pc"], [], [], Strategy::PLAIN, DEFAULT),
    kind!(STORAGECLASSES, ["sc"], [], [], Strategy::PLAIN, STORAGECLASSES),
    kind!(VOLUMEATTACHMENTS, [], [], [Status], Strategy::WORKLOAD, DEFAULT),
    kind!(CSIDRIVERS, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(CSINODES, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(CSISTORAGECAPACITIES, [], [], [], Strategy::PLAIN, DEFAULT),
    kind!(SELFSUBJECTREVIEWS, review super::reviews::self_subject),
    kind!(TOKENREVIEWS, review super::reviews::token),
    kind!(SELFSUBJECTACCESSREVIEWS, review super::reviews::self_subject_access),
    kind!(SELFSUBJECTRULESREVIEWS, review super::reviews::self_subject_rules),
    kind!(SUBJECTACCESSREVIEWS, review super::reviews::subject_access),
    kind!(LOCALSUBJECTACCESSREVIEWS, review super::reviews::local_subject_access),
    kind!(CERTIFICATESIGNINGREQUESTS, ["csr"], [], [Status, Approval], super::certificates::CSR, CSRS),
    kind!(APISERVICES, [], ["api-extensions"], [Status], super::apiservices::APISERVICE, APISERVICES),
    kind!(MUTATINGWEBHOOKCONFIGURATIONS, [], ["api-extensions"], [], super::admissionregistration::MUTATING, WEBHOOKS),
    kind!(VALIDATINGWEBHOOKCONFIGURATIONS, [], ["api-extensions"], [], super::admissionregistration::VALIDATING, WEBHOOKS),
    kind!(CUSTOMRESOURCEDEFINITIONS, ["crd", "crds"], ["api-extensions"], [Status], crate::api::custom::CRD, DEFAULT),
    kind!(NODEMETRICS, provider crate::api::resourcemetrics::serve, METRICS),
    kind!(PODMETRICS, provider crate::api::resourcemetrics::serve, METRICS),
];

/// Custom kinds currently served, and a counter bumped whenever that set changes.
static CUSTOM: RwLock<Vec<&'static Kind>> = RwLock::new(Vec::new());
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Every kind served now: the built-in table, then custom kinds.
pub fn all() -> Vec<&'static Kind> {
    let custom = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
    KINDS.iter().chain(custom.iter().copied()).collect()
}

/// Changes whenever the served custom kinds change (for caches of discovery documents).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Replaces the custom kinds defined by CRD `crd` with `kinds`.
pub fn set_custom(crd: &str, kinds: Vec<&'static Kind>) {
    let mut custom = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    custom.retain(|k| k.custom.as_ref().is_none_or(|c| c.crd != crd));
    custom.extend(kinds);
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Looks a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    all().into_iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Groups in discovery order, each with its served versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in all() {
        if !out.iter().any(|(g, v)| *g == k.group && *v == k.version) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// The kind an `apiVersion` + `kind` pair (as in an owner reference) names.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    all().into_iter().find(|k| k.group == group && k.version == version && k.kind == kind)
}
