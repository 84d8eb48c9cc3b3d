//! Seeded fuzzing on stable Rust (`cargo test`): every decoder, and the whole request path,
//! fed mutations of valid inputs. A panic fails the test with the inputs that caused it; each
//! target prints how many inputs it tried. `FUZZ_SCALE=n` runs n times as many inputs,
//! `FUZZ_SEED` starts another sequence (the default one is fixed, so CI is repeatable).

use crate::api::front::negotiate::{decode_object, BodyType};
use crate::api::front::protobuf::bytes_field as pb_field;
use crate::api::policy::kinds;
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A xorshift64* generator: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d_u64);
        Rng((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, s: &'a [T]) -> &'a T {
        &s[self.below(s.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn scale() -> usize {
    std::env::var("FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

/// Bytes that often matter to parsers.
const BYTES: &[&str] = &["\0", "\u{7f}", "\u{fffd}", "é", "\\", "\"", "'", "\n", " ", "{", "}", "[", "]", ",", ":", "-", "+", ".", "e", "E", "9", "0", "=", "!", "(", ")", "%", "%zz", "/", "*", "?", "#"];

/// 1 to 4 byte-level mutations of `seed`: flips, inserts (random or from `dict`), deletions,
/// duplications, truncation, splices of another seed.
fn mutate_bytes(rng: &mut Rng, seed: &[u8], dict: &[&str], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(8) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.insert(at, rng.next() as u8),
            2 => {
                let t = if rng.chance(50) && !dict.is_empty() { *rng.pick(dict) } else { *rng.pick(BYTES) };
                b.splice(at..at, t.bytes());
            }
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                b.drain(at.min(end)..end);
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let piece = b[at.min(end)..end].to_vec();
                let most = if rng.chance(5) { 200 } else { 3 };
                let n = 1 + rng.below(most);
                for _ in 0..n {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            5 => b.truncate(at),
            6 if !others.is_empty() => {
                let o = rng.pick(others);
                let from = rng.below(o.len() + 1);
                b.splice(at..at, o[from..].iter().take(1 + rng.below(32)).copied());
            }
            _ => {
                let t = *rng.pick(BYTES);
                b.splice(at..at, t.bytes());
            }
        }
    }
    b
}

/// Field names the API's kinds use, for structure-aware mutations.
const NAMES: &[&str] = &[
    "metadata", "name", "namespace", "labels", "annotations", "finalizers", "ownerReferences", "generateName", "resourceVersion", "uid", "deletionTimestamp",
    "spec", "status", "data", "stringData", "binaryData", "type", "containers", "initContainers", "ephemeralContainers", "image", "command", "args", "env",
    "envFrom", "valueFrom", "fieldRef", "fieldPath", "resourceFieldRef", "ports", "containerPort", "hostPort", "protocol", "resources", "limits", "requests",
    "volumes", "volumeMounts", "mountPath", "configMap", "secret", "emptyDir", "hostPath", "projected", "sources", "securityContext", "privileged",
    "capabilities", "add", "runAsUser", "runAsNonRoot", "seccompProfile", "nodeName", "nodeSelector", "affinity", "tolerations", "key", "operator",
    "value", "effect", "tolerationSeconds", "selector", "matchLabels", "matchExpressions", "values", "template", "replicas", "strategy", "rollingUpdate",
    "maxSurge", "maxUnavailable", "minReadySeconds", "revisionHistoryLimit", "clusterIP", "clusterIPs", "externalIPs", "targetPort", "port", "nodePort",
    "ipFamilies", "ipFamilyPolicy", "sessionAffinity", "schedule", "timeZone", "jobTemplate", "completions", "parallelism", "backoffLimit", "podFailurePolicy",
    "serviceName", "volumeClaimTemplates", "updateStrategy", "rules", "apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs", "subjects",
    "roleRef", "kind", "apiGroup", "aggregationRule", "clusterRoleSelectors", "hard", "scopes", "scopeSelector", "limits", "default", "defaultRequest",
    "max", "min", "maxLimitRequestRatio", "minAvailable", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "priority", "priorityClassName",
    "storageClassName", "accessModes", "capacity", "claimRef", "volumeName", "persistentVolumeReclaimPolicy", "lifecycle", "preStop", "exec",
    "livenessProbe", "httpGet", "path", "periodSeconds", "automountServiceAccountToken", "serviceAccountName", "hostNetwork", "hostPID", "dnsPolicy",
    "audiences", "expirationSeconds", "boundObjectRef", "target", "user", "groups", "resourceAttributes", "verb", "group", "subresource",
    "conditions", "phase", "podIP", "podIPs", "containerStatuses", "$patch", "$retainKeys", "$setElementOrder/containers", "$deleteFromPrimitiveList/finalizers",
];

/// Scalars with meaning somewhere: quantities, times, selectors, names, extremes.
const SCALARS: &[&str] = &[
    "", "x", "a-b", "UPPER", "-lead", "1", "-1", "0", "100m", "1Gi", "1e3", "1.5Ki", "9999999999999999999999Ei", "0.000000001", "NaN", "Infinity",
    "2026-12-02T20:00:00Z", "not-a-time", "*/5 * * * *", "@every 1m", "app in (a,b)", "!x", "a=b,c!=d", "metadata.name=x", "TCP", "UDP", "SCTP", "Always",
    "IfNotPresent", "Never", "None", "ClientIP", "10.43.0.10", "::1", "300.1.1.1", "/", "../etc", "%2F", "\u{0}", "é", "system:masters", "*",
];

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(rng.next() as i64 >> rng.below(64)),
        1 => json!(*rng.pick(&[0.5_f64, -1e300, 1e300, 1e-300, 3.0])),
        2 => json!(rng.chance(50)),
        3 => Value::Null,
        _ => json!(*rng.pick(SCALARS)),
    }
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    if depth == 0 || rng.chance(50) {
        return random_scalar(rng);
    }
    if rng.chance(50) {
        Value::Array((0..rng.below(4)).map(|_| random_json(rng, depth - 1)).collect())
    } else {
        let mut m = Map::new();
        for _ in 0..rng.below(4) {
            m.insert(rng.pick(NAMES).to_string(), random_json(rng, depth - 1));
        }
        Value::Object(m)
    }
}

/// A random node of `v` (any depth), to mutate in place.
fn random_node<'a>(rng: &mut Rng, v: &'a mut Value) -> &'a mut Value {
    let go_deeper = rng.chance(75);
    let len = match &*v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if len == 0 || !go_deeper {
        return v;
    }
    let i = rng.below(len);
    match v {
        Value::Object(m) => random_node(rng, m.values_mut().nth(i).expect("index below len")),
        Value::Array(a) => random_node(rng, &mut a[i]),
        _ => unreachable!("only containers have children"),
    }
}

/// 1 to 3 structure-aware mutations: a node replaced (often by one of another type), a field
/// added or removed, an array element duplicated.
fn mutate_json(rng: &mut Rng, v: &mut Value) {
    for _ in 0..1 + rng.below(3) {
        let node = random_node(rng, v);
        match rng.below(5) {
            0 => *node = random_json(rng, 3),
            1 => *node = random_scalar(rng),
            2 => {
                if let Value::Object(m) = node {
                    m.insert(rng.pick(NAMES).to_string(), random_json(rng, 2));
                } else {
                    *node = json!({ *rng.pick(NAMES): random_json(rng, 2) });
                }
            }
            3 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
                    m.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    let e = a[rng.below(a.len())].clone();
                    a.push(e);
                }
                _ => *node = json!([node.clone()]),
            },
            _ => {
                if let Value::Array(a) = node {
                    a.push(random_json(rng, 2));
                } else {
                    *node = Value::Array(vec![node.clone(), random_scalar(rng)]);
                }
            }
        }
    }
}

/// Feeds `iters` inputs made by `make` to `run`, each under `catch_unwind`; fails with the
/// inputs that panicked.
fn fuzz<I: std::fmt::Debug>(name: &str, iters: usize, mut make: impl FnMut(&mut Rng) -> I, run: impl Fn(&I)) {
    let mut rng = Rng::new(name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut panicked = Vec::new();
    for _ in 0..iters {
        let input = make(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            panicked.push(format!("{input:?}"));
        }
    }
    println!("fuzz {name}: {iters} inputs tried, {} panicked", panicked.len());
    assert!(panicked.is_empty(), "{name}: {} inputs panicked, e.g. {:?}", panicked.len(), &panicked[..panicked.len().min(5)]);
}

/// Fuzzes a decoder of bytes (text decoders take them lossily as UTF-8) from seeds, with
/// byte mutations.
fn fuzz_bytes(name: &str, iters: usize, seeds: &[&[u8]], dict: &[&str], run: impl Fn(&[u8])) {
    let owned: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    fuzz(name, iters, |rng| {
        let seed = rng.pick(&owned).clone();
        let mut b = mutate_bytes(rng, &seed, dict, &owned);
        if rng.chance(20) {
            b = mutate_bytes(rng, &b, dict, &owned);
        }
        Bytes(b)
    }, |b| run(&b.0));
}

/// Bytes shown as text where they are text.
struct Bytes(Vec<u8>);
impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Valid objects of several kinds: the seeds of the body decoders, the patches and the API.
fn object_seeds() -> Vec<Value> {
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "sleep 1"], "ports": [{"containerPort": 80, "name": "http"}],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}, "volumeMounts": [{"name": "v", "mountPath": "/v"}],
        "securityContext": {"runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "v", "configMap": {"name": "cm"}}], "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}],
        "nodeSelector": {"kubernetes.io/os": "linux"}});
    let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": pod_spec});
    let sel = json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]});
    vec![
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "a"}, "annotations": {"x": "y"}}, "spec": pod_spec}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}, "binaryData": {"b": "AAE="}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}, "stringData": {"t": "x"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"selector": {"app": "a"}, "type": "NodePort", "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}}),
        json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "l"}, "spec": {"limits": [{"type": "Container", "default": {"cpu": "100m"}, "max": {"memory": "1Gi"}, "maxLimitRequestRatio": {"cpu": "4"}}]}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fz", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 2, "selector": sel, "template": template, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "st"}, "spec": {"serviceName": "svc", "selector": sel, "template": template,
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"}, "spec": {"selector": sel, "template": template}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "timeZone": "Europe/Paris", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"completions": 3, "parallelism": 2, "backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["secrets", "pods/log"], "resourceNames": ["s"], "verbs": ["get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}, {"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "fz-cr"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}, "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb"}, "spec": {"minAvailable": "50%", "selector": sel}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}, "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}}),
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "default"}}}),
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "jane", "groups": ["g"], "nonResourceAttributes": {"path": "/api", "verb": "get"}}}),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "abc.def.ghi", "audiences": ["x"]}}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15, "renewTime": "2026-12-02T20:00:00.000000Z"}}),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "message": "m", "type": "Normal", "count": 2}),
    ]
}

fn pb_object(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut tm = Vec::new();
    pb_field(1, api_version.as_bytes(), &mut tm);
    pb_field(2, kind.as_bytes(), &mut tm);
    let mut body = b"k8s\0".to_vec();
    pb_field(1, &tm, &mut body);
    pb_field(2, raw, &mut body);
    body
}

#[test]
fn body_decoders() {
    let n = 4000 * scale();
    let seeds: Vec<Vec<u8>> = object_seeds().iter().map(|o| o.to_string().into_bytes()).collect();
    let refs: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    let json_dict = ["true", "null", "1e999", "-0", "\\u0000", "\\ud800", "{\"a\":", "[[[[[[[[", "\"metadata\":", "\"spec\":"];
    fuzz_bytes("JSON bodies", n, &refs, &json_dict, |b| drop(decode_object(b, BodyType::Json)));
    let yamls: Vec<Vec<u8>> = object_seeds().iter().map(|o| serde_yaml::to_string(o).unwrap_or_default().into_bytes()).collect();
    let yrefs: Vec<&[u8]> = yamls.iter().map(|s| s.as_slice()).collect();
    let yaml_dict = ["---\n", "&a ", "*a", "!!binary ", "!!str ", "? ", "- ", ": ", "|\n", ">-\n", "<<: *a\n", "~", "0x1F", "1e3", ".inf", "\t"];
    fuzz_bytes("YAML bodies", n, &yrefs, &yaml_dict, |b| drop(decode_object(b, BodyType::Yaml)));
    // Protobuf: a ConfigMap and a Pod envelope, byte-mutated.
    let mut meta = Vec::new();
    pb_field(1, b"cm", &mut meta);
    let mut entry = Vec::new();
    pb_field(1, b"k", &mut entry);
    pb_field(2, b"v", &mut entry);
    let mut cm = Vec::new();
    pb_field(1, &meta, &mut cm);
    pb_field(2, &entry, &mut cm);
    let mut container = Vec::new();
    pb_field(1, b"c", &mut container);
    pb_field(2, b"busybox", &mut container);
    let mut spec = Vec::new();
    pb_field(2, &container, &mut spec);
    let mut pod = Vec::new();
    pb_field(1, &meta, &mut pod);
    pb_field(2, &spec, &mut pod);
    let pbs = [pb_object("v1", "ConfigMap", &cm), pb_object("v1", "Pod", &pod), pb_object("apps/v1", "Deployment", &pod)];
    let prefs: Vec<&[u8]> = pbs.iter().map(|s| s.as_slice()).collect();
    fuzz_bytes("protobuf bodies", n, &prefs, &["\u{8}", "\u{12}", "\u{1a}", "\u{ff}\u{ff}\u{ff}\u{ff}\u{f}", "\u{80}"], |b| drop(crate::api::protobuf::decode(b)));
}

#[test]
fn patches() {
    let n = 3000 * scale();
    let bases = object_seeds();
    let kind_of = |o: &Value| kinds::find_kind(o["apiVersion"].as_str().unwrap_or(""), o["kind"].as_str().unwrap_or(""));
    let ops = ["add", "remove", "replace", "move", "copy", "test", "nope"];
    let paths = ["/metadata/labels/app", "/spec/containers/0/image", "/spec/containers/-", "/spec/replicas", "/metadata/annotations/a~1b", "/spec/template/spec/containers/0", "", "/", "/data/k", "/spec/ports/1", "/x~2", "/spec/containers/99999999999999999999"];
    fuzz("patches (JSON, merge, strategic)", n, |rng| {
        let base = rng.pick(&bases).clone();
        let (bt, body) = match rng.below(3) {
            0 => {
                let patch: Vec<Value> = (0..1 + rng.below(3))
                    .map(|_| {
                        let mut op = json!({"op": rng.pick(&ops), "path": rng.pick(&paths), "value": random_json(rng, 2), "from": rng.pick(&paths)});
                        if rng.chance(30) {
                            mutate_json(rng, &mut op);
                        }
                        op
                    })
                    .collect();
                (BodyType::JsonPatch, json!(patch))
            }
            which => {
                let mut p = base.clone();
                mutate_json(rng, &mut p);
                if which == 2 && rng.chance(50) {
                    let node = random_node(rng, &mut p);
                    if let Value::Object(m) = node {
                        m.insert((*rng.pick(&["$patch", "$retainKeys", "$setElementOrder/containers", "$deleteFromPrimitiveList/args"])).into(), random_json(rng, 1));
                    }
                }
                (if which == 1 { BodyType::MergePatch } else { BodyType::StrategicMergePatch }, p)
            }
        };
        let mut bytes = body.to_string().into_bytes();
        if rng.chance(15) {
            bytes = mutate_bytes(rng, &bytes, &[], &[]);
        }
        (base, bt, Bytes(bytes))
    }, |(base, bt, body)| {
        if let Some(k) = kind_of(base) {
            drop(crate::api::machinery::patch::apply(*bt, k, base, &body.0));
        }
    });
}

#[test]
fn selectors_quantities_cron_and_field_paths() {
    use crate::vocab::selector::{FieldSelector, LabelSelector};
    let n = 4000 * scale();
    let sels: &[&[u8]] = &[b"app=a,tier!=db", b"env in (prod, qa),!legacy", b"x notin (a),y", b"a==b", b"k8s.io/name=x-y_z.1", b"metadata.name=x,status.phase!=Running", b"spec.nodeName="];
    let dict = ["in", "notin", "(", ")", "!", "=", "==", "!=", ",", " ", "a/b/c", ".", "-"];
    fuzz_bytes("label selectors", n, sels, &dict, |b| {
        if let Ok(s) = LabelSelector::parse(&lossy(b)) {
            let _ = s.matches(&json!({"app": "a", "tier": "web"}));
            let _ = LabelSelector::parse(&s.to_string_form());
        }
    });
    fuzz_bytes("field selectors", n, sels, &dict, |b| drop(FieldSelector::parse(&lossy(b))));
    let sel_obj = json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}, {"key": "x", "operator": "DoesNotExist"}]});
    fuzz("label selector objects", n, |rng| {
        let mut o = sel_obj.clone();
        mutate_json(rng, &mut o);
        o
    }, |o| {
        if let Ok(s) = LabelSelector::from_object(o) {
            let _ = s.matches(&json!({"app": "a"}));
        }
    });
    let qs: &[&[u8]] = &[b"100m", b"1.5Gi", b"2e3", b"-1Ki", b"0.5", b"12345678901234567890", b"1E", b"+3M"];
    fuzz_bytes("quantities", n, qs, &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "u", "n", "k", "M", "G", "E", "e", "e-", ".", "+", "-"], |b| {
        let v = json!(lossy(b));
        let _ = (crate::vocab::quantity::parse(&v), crate::vocab::quantity::millis(&v), crate::vocab::quantity::units(&v));
    });
    let crons: &[&[u8]] = &[b"*/5 * * * *", b"0 0 1 1 *", b"@hourly", b"15,45 9-17 * * mon-fri", b"0 0 L * *", b"CRON_TZ=UTC 0 * * * *", b"TZ=Europe/Paris 1 2 3 4 5", b"0 0 29 2 *"];
    let start = chrono::NaiveDate::from_ymd_opt(2026, 12, 2).and_then(|d| d.and_hms_opt(20, 0, 0)).expect("a valid time");
    fuzz_bytes("cron schedules", n / 4, crons, &["*", "/", ",", "-", "?", "L", "W", "#", "@", "sun", "dec", "60", "24", "32", "13", "8", "0/0", "99999999999999999999"], |b| {
        if let Ok(s) = crate::vocab::cron::Schedule::parse(&lossy(b)) {
            let _ = s.next_after(start);
        }
    });
    let pod = object_seeds().remove(0);
    let fps: &[&[u8]] = &[b"metadata.name", b"metadata.labels['app']", b"metadata.annotations['x']", b"spec.nodeName", b"status.podIP", b"status.podIPs", b"spec.serviceAccountName"];
    fuzz_bytes("downward API field paths", n, fps, &["['", "']", "[", "]", ".", "'", "metadata.", "labels"], |b| drop(crate::kubelet::status::field_ref(&pod, &lossy(b), "10.42.0.5")));
}

#[test]
fn url_paths_and_queries() {
    let n = 4000 * scale();
    let paths: &[&[u8]] = &[
        b"/api/v1/namespaces/default/pods/p/log", b"/apis/apps/v1/namespaces/d/deployments/x/scale", b"/api/v1/pods", b"/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        b"/api/v1/watch/namespaces/default/configmaps", b"/apis/apps/v1", b"/api", b"/openapi/v3/api/v1", b"/api/v1/namespaces/a/services/https:s:443/proxy/x",
    ];
    let queries: &[&[u8]] = &[b"watch=true&resourceVersion=5&allowWatchBookmarks=true", b"labelSelector=a%3Db&limit=5&continue=abc", b"fieldSelector=metadata.name%3Dx&timeoutSeconds=10", b"dryRun=All&fieldManager=m&force=true"];
    let dict = ["/", "//", "%", "%2F", "%00", "..", "namespaces", "watch", "proxy", "status", "api", "apis", "v1", "?", "&", "=", ";", "+"];
    fuzz_bytes("URL paths", n, paths, &dict, |b| {
        let p = lossy(b);
        let _ = crate::api::front::request::route(&p);
        for m in ["GET", "POST", "PATCH", "DELETE"] {
            let _ = crate::api::authz::Attributes::of(m, &p, Some("watch=1"), false);
        }
    });
    fuzz_bytes("queries", n, queries, &dict, |b| {
        let q = crate::api::front::request::Query::parse(Some(&lossy(b)));
        let _ = (q.uint("limit"), q.uint("resourceVersion"), q.dry_run(), q.flag("watch"));
        let _ = crate::api::authz::Attributes::of("GET", "/api/v1/pods", Some(&lossy(b)), false);
    });
}

/// The whole request path, in-process: every kind created, replaced and patched (three patch
/// types) with mutated bodies, as the admin and as a user with no grants. No panic, no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_every_kind() {
    use crate::api::{Api, Body, Call};
    use crate::vocab::user::UserInfo;
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = crate::store::Store::open(&dir.path().join("db"), 1000).expect("a store");
    let api = Api::new(store, "127.0.0.1:6443".into());
    api.bootstrap().await.expect("bootstrap");
    let seeds = object_seeds();
    let n = 1500 * scale();
    let mut rng = Rng::new(7);
    let (admin, jane) = (UserInfo::apiserver(), UserInfo::authenticated("jane", &["system:authenticated"]));
    let (mut tried, mut failures, mut codes) = (0usize, Vec::new(), std::collections::BTreeMap::<u16, usize>::new());
    for i in 0..n {
        let seed = rng.pick(&seeds).clone();
        let api_version = seed["apiVersion"].as_str().unwrap_or("v1").to_string();
        let Some(k) = kinds::find_kind(&api_version, seed["kind"].as_str().unwrap_or("")) else { continue };
        let base = if k.group.is_empty() { "/api/v1".to_string() } else { format!("/apis/{}/{}", k.group, k.version) };
        let collection = if k.namespaced { format!("{base}/namespaces/default/{}", k.plural) } else { format!("{base}/{}", k.plural) };
        let mut body = seed.clone();
        // Every object gets a name of its own so that creates mostly succeed and later
        // replaces and patches have something to work on.
        if body["metadata"].is_object() {
            body["metadata"]["name"] = json!(format!("fz{}", rng.below(40)));
        }
        let name = body["metadata"]["name"].as_str().unwrap_or("x").to_string();
        mutate_json(&mut rng, &mut body);
        let (method, path, ct, bytes) = match rng.below(5) {
            0 | 1 => ("POST", collection.clone(), "application/json", body.to_string().into_bytes()),
            2 => ("PUT", format!("{collection}/{name}"), "application/json", body.to_string().into_bytes()),
            3 => ("PATCH", format!("{collection}/{name}"), *rng.pick(&["application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"]), body.to_string().into_bytes()),
            _ => {
                let patch = json!([{"op": rng.pick(&["add", "replace", "remove", "test"]), "path": rng.pick(&["/metadata/labels", "/spec", "/spec/replicas", "/data", "/metadata/finalizers/0", "/status"]), "value": random_json(&mut rng, 2)}]);
                ("PATCH", format!("{collection}/{name}{}", if rng.chance(30) { "/status" } else { "" }), "application/json-patch+json", patch.to_string().into_bytes())
            }
        };
        let bytes = if rng.chance(10) { mutate_bytes(&mut rng, &bytes, &[], &[]) } else { bytes };
        // Kinds whose objects change how later requests are served (webhooks, aggregated
        // groups, custom kinds) go through everything but the write.
        let dry = if matches!(k.group, "admissionregistration.k8s.io" | "apiregistration.k8s.io" | "apiextensions.k8s.io") { "dryRun=All&fieldManager=fz" } else { "fieldManager=fz" };
        let user = if i % 4 == 0 { jane.clone() } else { admin.clone() };
        let (api2, path2, body2) = (api.clone(), path.clone(), bytes.clone());
        let handle = tokio::spawn(async move {
            let r = api2.call(Call { method, path: &path2, query: Some(dry), accept: None, content_type: Some(ct), user_agent: Some("fuzz"), user: &user, impersonator: None, source_ip: None, body: body2.into() }).await;
            let text = match r.body {
                Body::Full(b) => String::from_utf8_lossy(&b).into_owned(),
                Body::Stream(_) => String::new(),
            };
            (r.code, text)
        });
        tried += 1;
        let done = handle.await;
        if let Ok((code, _)) = &done {
            *codes.entry(*code).or_default() += 1;
        }
        match done {
            Ok((code, _)) if code < 500 => {}
            Ok((code, text)) => failures.push(format!("{code} {method} {path} {}: {text}", lossy(&bytes))),
            Err(e) => failures.push(format!("panic ({e}) {method} {path} {}", lossy(&bytes))),
        }
    }
    println!("fuzz requests: {tried} requests tried, {} failed; answers by code: {codes:?}", failures.len());
    assert!(failures.is_empty(), "{} requests failed, e.g. {:#?}", failures.len(), &failures[..failures.len().min(5)]);
}
