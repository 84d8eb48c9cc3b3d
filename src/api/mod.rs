//! The Kubernetes API, in four parts: the HTTP [`front`] (TLS, authentication, paths,
//! negotiation, discovery, OpenAPI), the generic resource [`machinery`] (verbs, watches,
//! patches, apply, Tables) over the table of kinds, per-kind [`policy`] (the table itself and
//! what differs by kind), and what it serves from a [`node`] (logs, exec, port-forward). This
//! file routes a call to them and renders the reply.

pub mod aggregator;
pub mod authz;
pub mod front;
pub mod machinery;
pub mod kubelet;
pub mod policy;
pub mod resourcemetrics;

// Each piece by its short name within the API (`crate::api::kinds`, `crate::api::handlers`).
pub use front::{discovery, http, negotiate, openapi, protobuf, request};
pub use machinery::{fieldcheck, fieldset, handlers, managed, object, patch, schema, table};
pub use policy::{custom, eviction, kinds, services, strategies, tokens};

use crate::store::Store;
use bytes::Bytes;
use kinds::Kind;
use negotiate::{body_type, response_format, response_format_for, Format, Shape};
use request::{route, Query, ResourceReq, Target};
use serde_json::{json, Value};
use crate::vocab::status::ApiError;
use crate::vocab::user::UserInfo;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Store outcomes the handlers did not turn into something more specific.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError as E;
        match e {
            E::Expired { requested, oldest } => ApiError::gone_watch(requested, oldest),
            E::TooNew { requested, current } => ApiError::timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            ))
            .with_retry(1),
            // As kube-apiserver answers when etcd does not: 504 for a deadline, 503 else.
            E::Timeout(m) => ApiError::timeout(format!("Timeout: request did not complete within requested timeout - {m}")),
            E::Unavailable(m) => ApiError::unavailable(m),
            other => ApiError::internal(other.to_string()),
        }
    }
}


/// Largest request body accepted (upstream's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The API server state shared by all requests.
pub struct Api {
    pub store: Store,
    /// Address clients reach the server at (for `/api`).
    pub advertise: String,
    /// Set once startup finished; `/readyz` reports it.
    pub ready: std::sync::atomic::AtomicBool,
    /// Handle on itself, for background work started by a request.
    me: std::sync::Weak<Api>,
    /// The credentials the API server reaches kubelets with (logs, exec, attach, port-forward,
    /// node proxy); unset, those answer an error.
    pub kubelet: std::sync::OnceLock<kubelet::KubeletClient>,
    /// The service-account token key (a process-lifetime one unless the server sets it).
    pub tokens: std::sync::OnceLock<tokens::TokenIssuer>,
    /// Read-modify-write requests on the same object queue here (sharded by key) instead of
    /// racing each other into conflicts and retries.
    rmw: Vec<tokio::sync::Mutex<()>>,
    /// Service ranges (set by the server from its flags; defaults otherwise).
    pub service_ranges_set: std::sync::OnceLock<services::ServiceRanges>,
    /// Held while a Service's addresses are chosen and written.
    service_alloc: tokio::sync::Mutex<()>,
    /// The aggregation layer: APIServices and how to reach extension API servers.
    pub aggregator: aggregator::Aggregator,
    /// Who may do what: the privileged group, then RBAC.
    pub authz: authz::Authorizer,
    /// The admission webhooks in force.
    pub webhooks: policy::webhooks::Webhooks,
    /// The audit policy and log, when the server keeps one.
    pub audit: std::sync::OnceLock<Arc<front::audit::Auditor>>,
    /// Resource usage scraped from the kubelets (`metrics.k8s.io`).
    pub resource_metrics: resourcemetrics::ResourceMetrics,
    /// The API server's own request counts and latencies (`/metrics`).
    pub instruments: front::instruments::Instruments,
}

const RMW_SHARDS: usize = 64;

/// What a handler produced, before rendering.
pub enum Reply {
    /// A stored object's JSON, untouched.
    Raw(u16, Bytes),
    /// An object built in memory.
    Object(u16, Value),
    /// A list of stored objects.
    List { kind: &'static Kind, revision: u64, cont: Option<String>, remaining: Option<u64>, items: Vec<Bytes> },
    /// A stream of watch events.
    Stream(mpsc::Receiver<Bytes>),
    /// Another reply, with warnings for the client (`Warning` headers).
    Warn(Vec<String>, Box<Reply>),
    /// Plain text (logs).
    Text(Bytes),
    /// Plain text, streamed (`logs -f`).
    TextStream(mpsc::Receiver<Bytes>),
}

impl Reply {
    /// Wraps the reply with warnings, if there are any.
    pub fn with_warnings(self, warnings: Vec<String>) -> Reply {
        if warnings.is_empty() {
            self
        } else {
            Reply::Warn(warnings, Box::new(self))
        }
    }
}

/// A request as the HTTP layer hands it over.
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// Who asks (authenticated by the HTTP front, or the in-process client's identity).
    pub user: &'a UserInfo,
    /// Who asked to act as `user` (impersonation headers).
    pub impersonator: Option<&'a UserInfo>,
    /// The client's address (none in-process).
    pub source_ip: Option<std::net::IpAddr>,
    pub body: Bytes,
}

/// `v` as JSON followed by a newline.
fn json_line(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Stored JSON followed by a newline (a copy: stored bytes are shared).
fn raw_line(raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + 1);
    out.extend_from_slice(raw);
    out.push(b'\n');
    Bytes::from(out)
}

/// A rendered response.
pub struct Rendered {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// Sent as `Warning: 299 - "..."` headers.
    pub warnings: Vec<String>,
}

/// Response body: complete or streamed.
pub enum Body {
    Full(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

impl Rendered {
    /// A JSON answer; like kube-apiserver's encoder, the document ends with a newline.
    pub fn json(code: u16, v: &Value) -> Rendered {
        Rendered { code, content_type: "application/json", body: Body::Full(json_line(v)), warnings: Vec::new() }
    }
    pub fn error(e: &ApiError) -> Rendered {
        Rendered::json(e.code, &e.to_status())
    }
}

/// The in-process transport: components living in the server process call the API through
/// the same entry point as HTTPS requests (authentication aside: the client's identity is
/// the one it was made with), so admission and validation are the same for every writer.
pub struct Local {
    pub api: Arc<Api>,
    pub user: UserInfo,
}

impl crate::runtime::client::Transport for Local {
    fn send<'a>(&'a self, req: crate::runtime::client::Request<'a>) -> crate::runtime::client::BoxFuture<'a, Result<crate::runtime::client::Response, ApiError>> {
        use crate::runtime::client::{Response, ResponseBody};
        Box::pin(async move {
            let query = (!req.query.is_empty()).then_some(req.query);
            let call = Call { method: req.method, path: req.path, query, accept: None, content_type: req.content_type, user_agent: Some(req.user_agent), user: &self.user, impersonator: None, source_ip: None, body: req.body };
            let r = self.api.call(call).await;
            let body = match r.body {
                Body::Full(b) => ResponseBody::Full(b),
                Body::Stream(rx) => ResponseBody::Stream(rx),
            };
            Ok(Response { code: r.code, body })
        })
    }
}

impl Api {
    /// A client of this API in the same process, as the API server itself (`agent`: its
    /// User-Agent).
    pub fn client(self: &Arc<Self>, agent: &str) -> crate::runtime::Client {
        self.client_as(agent, UserInfo::apiserver())
    }

    /// A client of this API in the same process, as `user`.
    pub fn client_as(self: &Arc<Self>, agent: &str, user: UserInfo) -> crate::runtime::Client {
        crate::runtime::Client::new(Arc::new(Local { api: self.clone(), user }), agent)
    }

    pub fn new(store: Store, advertise: String) -> Arc<Api> {
        Arc::new_cyclic(|me| Api { advertise, ready: std::sync::atomic::AtomicBool::new(false), me: me.clone(), kubelet: std::sync::OnceLock::new(), tokens: std::sync::OnceLock::new(), rmw: (0..RMW_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(), service_ranges_set: std::sync::OnceLock::new(), service_alloc: tokio::sync::Mutex::new(()), aggregator: aggregator::Aggregator::new(), authz: authz::Authorizer::new(store.clone()), webhooks: Default::default(), audit: std::sync::OnceLock::new(), resource_metrics: Default::default(), instruments: Default::default(), store })
    }

    /// The service CIDR and node port range in force.
    pub fn service_ranges(&self) -> services::ServiceRanges {
        self.service_ranges_set.get().copied().unwrap_or_default()
    }

    /// The lock under which Service addresses are allocated and written.
    pub(crate) fn service_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.service_alloc
    }

    /// The lock that orders read-modify-write requests on the object at `key`.
    pub(crate) fn rmw_lock(&self, key: &str) -> &tokio::sync::Mutex<()> {
        &self.rmw[(crate::vocab::hash::fnv64(key.as_bytes()) % RMW_SHARDS as u64) as usize]
    }

    /// Serves one API call.
    pub async fn call(self: &Arc<Self>, c: Call<'_>) -> Rendered {
        let started = std::time::Instant::now();
        let _inflight = self.instruments.begin(c.method);
        let mut labels = front::instruments::Labels::path(c.method);
        let r = match self.audit.get() {
            Some(auditor) => self.call_audited(auditor, &c, &mut labels).await,
            None => {
                let answer = match self.authz.check_request(c.user, c.method, c.path, c.query, false) {
                    Ok(()) => self.dispatch(&c, &mut labels).await,
                    Err(e) => Err(e),
                };
                answer.unwrap_or_else(|e| Rendered::error(&e))
            }
        };
        let long_running = matches!(r.body, Body::Stream(_)) || labels.verb == "CONNECT";
        self.instruments.done(labels, r.code, (!long_running).then(|| started.elapsed()));
        r
    }

    /// [`Api::call`] with an audit record of the request, its authorization and its answer.
    async fn call_audited(self: &Arc<Self>, auditor: &Arc<front::audit::Auditor>, c: &Call<'_>, labels: &mut front::instruments::Labels) -> Rendered {
        let attrs = authz::Attributes::of(c.method, c.path, c.query, false);
        let (user, impersonated) = match c.impersonator {
            Some(original) => (original, Some(c.user)),
            None => (c.user, None),
        };
        let seen = front::audit::Seen { method: c.method, path: c.path, query: c.query, user: Some(user), impersonated, source_ip: c.source_ip, user_agent: c.user_agent };
        let Some(mut record) = auditor.begin(&seen, &attrs).await else {
            let answer = match self.authz.check(c.user, &attrs) {
                Ok(()) => self.dispatch(c, labels).await,
                Err(e) => Err(e),
            };
            return answer.unwrap_or_else(|e| Rendered::error(&e));
        };
        let decision = self.authz.decide(c.user, &attrs);
        let answer = match decision {
            authz::Decision::Allow => {
                record.authorized(true, "");
                record.request_object(&c.body, c.content_type);
                self.dispatch(c, labels).await
            }
            authz::Decision::Deny(reason) => {
                record.authorized(false, &reason);
                Err(authz::forbidden(c.user, &attrs, &reason))
            }
        };
        let mut r = answer.unwrap_or_else(|e| Rendered::error(&e));
        match r.body {
            Body::Full(ref b) => {
                record.response(r.code, r.content_type, b);
                record.emit(front::audit::Stage::ResponseComplete).await;
            }
            Body::Stream(ref mut rx) => {
                record.response(r.code, r.content_type, b"");
                record.emit(front::audit::Stage::ResponseStarted).await;
                r.body = Body::Stream(front::audit::relay(record, std::mem::replace(rx, mpsc::channel(1).1)));
            }
        }
        r
    }

    /// Routes and answers an authorized call; `labels` learns what it was for the metrics.
    async fn dispatch(self: &Arc<Self>, c: &Call<'_>, labels: &mut front::instruments::Labels) -> Result<Rendered, ApiError> {
        let target = route(c.path)?;
        let rr = match target {
            Target::Resource(rr) => rr,
            other => return self.serve_static(c, other),
        };
        let mut q = Query::parse(c.query);
        q.1 = managed::manager_from_user_agent(c.user_agent);
        q.2 = c.user.clone();
        let collection = rr.name.is_none();
        let watching = rr.watch_prefix || q.flag("watch");
        let apply = c.method == "PATCH" && c.content_type.is_some_and(|t| t.starts_with("application/apply-patch"));
        *labels = front::instruments::Labels::resource(c.method, rr.kind, rr.sub.as_deref(), rr.name.is_some(), rr.namespace.is_some(), watching, apply, q.get("dryRun").is_some());
        let shape = if collection && !watching && c.method == "GET" { Shape::List } else { Shape::Object };
        let format = response_format_for(c.accept, shape)?;
        if let Some(review) = rr.kind.review {
            // Review kinds answer a create and serve nothing else.
            if (c.method, collection) != ("POST", true) {
                return Err(ApiError::method_not_allowed(c.method, c.path));
            }
            let mut request = negotiate::decode_object(&c.body, body_type(c.content_type)?)?;
            if let Some(ns) = rr.namespace.as_deref() {
                match request["metadata"]["namespace"].as_str() {
                    Some(given) if !given.is_empty() && given != ns => return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request")),
                    _ => request["metadata"]["namespace"] = serde_json::json!(ns),
                }
            }
            return render(&rr, &q, Reply::Object(201, review(self, c.user, request)?), format);
        }
        if let Some(provider) = rr.kind.provider {
            // Computed kinds answer gets and lists, nothing else.
            if c.method != "GET" || watching || rr.sub.is_some() {
                return Err(ApiError::method_not_allowed(c.method, c.path));
            }
            return render(&rr, &q, provider(self, &rr, &q)?, format);
        }
        let reply = match (c.method, collection) {
            ("GET", false) if rr.sub.as_deref() == Some("log") && rr.kind.is("", "pods") => {
                let (pod, _) = self.load(&ResourceReq { sub: None, ..rr.clone() })?;
                self.logs(&pod, &q).await?
            }
            ("GET", _) if watching => Reply::Stream(self.watch(&rr, &q, format, self.instruments.watching(*labels)).await?),
            ("GET", true) => self.list(&rr, &q).await?,
            ("GET", false) => self.get(&rr, &q).await?,
            ("POST", false) if rr.sub.as_deref() == Some("binding") && rr.kind.is("", "pods") => self.bind(&rr, &c.body).await?,
            ("POST", false) if rr.sub.as_deref() == Some("eviction") && rr.kind.is("", "pods") => self.evict(&rr, &c.body, body_type(c.content_type)?).await?,
            ("POST", false) if rr.sub.as_deref() == Some("token") && rr.kind.is("", "serviceaccounts") => self.token_request(&rr, &c.body, body_type(c.content_type)?).await?,
            ("POST", _) => self.create(&rr, &q, &c.body, body_type(c.content_type)?).await?,
            ("PUT", false) => self.update(&rr, &q, &c.body, body_type(c.content_type)?).await?,
            ("PATCH", false) => self.patch(&rr, &q, &c.body, body_type(c.content_type)?).await?,
            ("DELETE", false) => self.delete(&rr, &q, &c.body, body_type(c.content_type)?).await?,
            ("DELETE", true) => self.delete_collection(&rr, &q, &c.body, body_type(c.content_type)?).await?,
            (m, _) => return Err(ApiError::method_not_allowed(m, c.path)),
        };
        render(&rr, &q, reply, format)
    }

    fn serve_static(&self, c: &Call<'_>, t: Target) -> Result<Rendered, ApiError> {
        if c.method != "GET" && c.method != "HEAD" {
            return Err(ApiError::method_not_allowed(c.method, c.path));
        }
        let aggregated = discovery::wants_aggregated(c.accept);
        let agg = |v: Value| Rendered {
            code: 200,
            content_type: "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            body: Body::Full(json_line(&v)),
            warnings: Vec::new(),
        };
        Ok(match t {
            Target::Version => Rendered::json(200, &discovery::version()),
            Target::Health(_) => {
                let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
                let (code, text) = if ready { (200, "ok") } else { (503, "not ready") };
                Rendered { code, content_type: "text/plain; charset=utf-8", body: Body::Full(Bytes::from(text)), warnings: Vec::new() }
            }
            Target::LegacyRoot if aggregated => agg(discovery::aggregated(true, &self.aggregator)),
            Target::GroupsRoot if aggregated => agg(discovery::aggregated(false, &self.aggregator)),
            Target::LegacyRoot => Rendered::json(200, &discovery::legacy_root(&self.advertise)),
            Target::GroupsRoot => Rendered::json(200, &discovery::groups_root(&self.aggregator)),
            Target::Group(g) => Rendered::json(200, &discovery::group(&g, &self.aggregator).ok_or_else(|| ApiError::not_found_path(c.path))?),
            Target::GroupVersion(g, v) => Rendered::json(200, &discovery::resource_list(&g, &v).ok_or_else(|| ApiError::not_found_path(c.path))?),
            Target::OpenApi(p) => match p.trim_end_matches('/') {
                "/openapi/v3" => Rendered::json(200, &openapi::index(&self.aggregator)),
                "/openapi/v2" => match front::openapi_v2pb::wanted(c.accept) {
                    // client-go's OpenAPISchema() (kubectl's validation of a List, helm).
                    // kube-apiserver answers it as application/octet-stream (Go's MIME
                    // parser refuses the `@` of the asked-for type).
                    Some(_) => Rendered { code: 200, content_type: "application/octet-stream", body: Body::Full(openapi::v2_protobuf()), warnings: Vec::new() },
                    None => {
                        response_format(c.accept)?;
                        Rendered { code: 200, content_type: "application/json", body: Body::Full(openapi::v2()), warnings: Vec::new() }
                    }
                },
                other => match other.strip_prefix("/openapi/v3/").and_then(openapi::group_version) {
                    Some(text) => Rendered { code: 200, content_type: "application/json", body: Body::Full(text), warnings: Vec::new() },
                    None => return Err(ApiError::not_found_path(c.path)),
                },
            },
            Target::OidcConfig => Rendered::json(200, &json!({
                "issuer": tokens::ISSUER,
                "jwks_uri": format!("https://{}/openid/v1/jwks", self.advertise),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            })),
            Target::Metrics => Rendered {
                code: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: Body::Full(Bytes::from(self.instruments.render(self.store.commit_latency(), self.store.engine()))),
                warnings: Vec::new(),
            },
            Target::Jwks => Rendered {
                code: 200,
                content_type: "application/jwk-set+json",
                body: Body::Full(Bytes::from(self.tokens().jwks().to_string())),
                warnings: Vec::new(),
            },
            Target::Resource(_) => return Err(ApiError::not_found_path(c.path)),
        })
    }
}

fn yaml(v: &Value) -> Result<Rendered, ApiError> {
    let text = serde_yaml::to_string(v).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Rendered { code: 200, content_type: "application/yaml", body: Body::Full(Bytes::from(text)), warnings: Vec::new() })
}

fn render(rr: &ResourceReq, q: &Query, reply: Reply, format: Format) -> Result<Rendered, ApiError> {
    let include = q.get("includeObject");
    match reply {
        Reply::Warn(warnings, inner) => render(rr, q, *inner, format).map(|r| Rendered { warnings, ..r }),
        Reply::Text(b) => Ok(Rendered { code: 200, content_type: "text/plain", body: Body::Full(b), warnings: Vec::new() }),
        Reply::TextStream(rx) => Ok(Rendered { code: 200, content_type: "text/plain", body: Body::Stream(rx), warnings: Vec::new() }),
        Reply::Stream(rx) => Ok(Rendered { code: 200, content_type: "application/json", body: Body::Stream(rx), warnings: Vec::new() }),
        Reply::Raw(code, raw) => match format {
            Format::Json => Ok(Rendered { code, content_type: "application/json", body: Body::Full(raw_line(&raw)), warnings: Vec::new() }),
            _ => render(rr, q, Reply::Object(code, object::parse_stored(&raw)?), format),
        },
        Reply::Object(code, v) => match format {
            Format::Json => Ok(Rendered::json(code, &v)),
            Format::Yaml => yaml(&v).map(|r| Rendered { code, ..r }),
            Format::Table if v["kind"] == rr.kind.kind => Ok(Rendered::json(code, &table::render(rr.kind, &[v], json!({}), include))),
            // A list built in memory (computed kinds).
            Format::Table if v["kind"].as_str() == Some(&format!("{}List", rr.kind.kind)) => {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                Ok(Rendered::json(code, &table::render(rr.kind, &items, v["metadata"].clone(), include)))
            }
            Format::Metadata { yaml: as_yaml } if v["kind"] == rr.kind.kind => {
                let partial = table::partial(&v);
                if as_yaml {
                    yaml(&partial).map(|r| Rendered { code, ..r })
                } else {
                    Ok(Rendered::json(code, &partial))
                }
            }
            // Anything else (a Status, a Scale) is answered as itself.
            Format::Table | Format::Metadata { .. } => Ok(Rendered::json(code, &v)),
        },
        Reply::List { kind, revision, cont, remaining, items } => {
            let mut meta = json!({"resourceVersion": revision.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            if let Some(r) = remaining {
                meta["remainingItemCount"] = json!(r);
            }
            match format {
                Format::Json => {
                    // Items are spliced in as stored: no re-encoding of each object.
                    let head = json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": meta}).to_string();
                    let mut out = Vec::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16);
                    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
                    out.extend_from_slice(b",\"items\":[");
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(item);
                    }
                    out.extend_from_slice(b"]}\n");
                    Ok(Rendered { code: 200, content_type: "application/json", body: Body::Full(Bytes::from(out)), warnings: Vec::new() })
                }
                Format::Table | Format::Yaml | Format::Metadata { .. } => {
                    let objs = items.iter().map(|i| object::parse_stored(i)).collect::<Result<Vec<_>, _>>()?;
                    match format {
                        Format::Table => Ok(Rendered::json(200, &table::render(kind, &objs, meta, include))),
                        Format::Metadata { yaml: as_yaml } => {
                            let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": objs.iter().map(table::partial).collect::<Vec<_>>()});
                            if as_yaml {
                                yaml(&list)
                            } else {
                                Ok(Rendered::json(200, &list))
                            }
                        }
                        _ => yaml(&json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": meta, "items": objs})),
                    }
                }
            }
        }
    }
}
