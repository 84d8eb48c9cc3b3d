//! Cluster DNS, embedded (no extra pod): answers `cluster.local` names from Services,
//! EndpointSlices and pod addresses, and forwards every other name to the host's upstream
//! resolvers. Pods reach it through the `kube-dns` Service (its ClusterIP is their
//! nameserver); the proxy carries that address to this server's port on the node.

use crate::runtime::cache::{by_service, Cache};
use crate::runtime::informer::Informers;
use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::{ENDPOINTSLICES, SERVICES};
use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The cluster domain.
pub const DOMAIN: &str = crate::vocab::CLUSTER_DOMAIN;
const TTL: u32 = 5;

/// What the server knows: services by `namespace/name`, and their slices (indexed by
/// service).
pub struct Records<'a> {
    services: &'a Cache,
    slices: &'a Cache,
}

/// The answer to a name in the cluster domain.
#[derive(Debug, PartialEq)]
pub enum Answer {
    A(Vec<Ipv4Addr>),
    Srv(Vec<(u16, String)>),
    /// The name exists, with no records of the asked type.
    Empty,
    NxDomain,
}

impl Records<'_> {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.services.get(&format!("{ns}/{name}"))
    }

    /// Ready endpoints of a service: (ip, hostname).
    fn endpoints(&self, ns: &str, svc: &str) -> Vec<(Ipv4Addr, Option<String>)> {
        let mut out = Vec::new();
        for s in self.slices.by(SLICES_BY_SERVICE, &format!("{ns}/{svc}")) {
            for e in s["endpoints"].as_array().into_iter().flatten() {
                let ready = e["conditions"]["ready"] != Value::Bool(false);
                let published = self.service(ns, svc).is_some_and(|v| v["spec"]["publishNotReadyAddresses"] == Value::Bool(true));
                if let (true, Some(ip)) = (ready || published, e["addresses"][0].as_str().and_then(|i| i.parse().ok())) {
                    out.push((ip, e["hostname"].as_str().map(String::from)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Resolves `name` (lower case, no trailing dot) within the cluster domain.
    pub fn resolve(&self, name: &str, ty: RecordType) -> Answer {
        let Some(rest) = name.strip_suffix(DOMAIN).and_then(|r| r.strip_suffix('.')) else { return Answer::NxDomain };
        let labels: Vec<&str> = rest.split('.').collect();
        match labels.as_slice() {
            // a-b-c-d.<ns>.pod
            [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(addr) if ty == RecordType::A => Answer::A(vec![addr]),
                Ok(_) => Answer::Empty,
                Err(_) => Answer::NxDomain,
            },
            // _<port>._<proto>.<svc>.<ns>.svc
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(s) = self.service(ns, svc) else { return Answer::NxDomain };
                let want = (&port[1..], proto[1..].to_ascii_uppercase());
                let hit = s["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str() == Some(want.0) && p["protocol"].as_str().unwrap_or("TCP") == want.1);
                match (hit, ty) {
                    (Some(p), RecordType::SRV) => {
                        let port = p["port"].as_u64().unwrap_or(0) as u16;
                        let headless = s["spec"]["clusterIP"] == "None";
                        let targets: Vec<(u16, String)> = if headless {
                            self.endpoints(ns, svc).into_iter().map(|(ip, h)| (port, format!("{}.{svc}.{ns}.svc.{DOMAIN}", h.unwrap_or_else(|| ip.to_string().replace('.', "-"))))).collect()
                        } else {
                            vec![(port, format!("{svc}.{ns}.svc.{DOMAIN}"))]
                        };
                        Answer::Srv(targets)
                    }
                    (Some(_), _) => Answer::Empty,
                    (None, _) => Answer::NxDomain,
                }
            }
            // <svc>.<ns>.svc
            [svc, ns, "svc"] => {
                let Some(s) = self.service(ns, svc) else { return Answer::NxDomain };
                if ty != RecordType::A {
                    return Answer::Empty;
                }
                match s["spec"]["clusterIP"].as_str() {
                    Some("None") => Answer::A(self.endpoints(ns, svc).into_iter().map(|(ip, _)| ip).collect()),
                    Some(ip) => ip.parse().map(|ip| Answer::A(vec![ip])).unwrap_or(Answer::Empty),
                    None => Answer::Empty,
                }
            }
            // <hostname>.<svc>.<ns>.svc (pods of a headless service, such as StatefulSet pods)
            [host, svc, ns, "svc"] => {
                let ips: Vec<Ipv4Addr> = self.endpoints(ns, svc).into_iter().filter(|(_, h)| h.as_deref() == Some(*host)).map(|(ip, _)| ip).collect();
                match (ips.is_empty(), ty) {
                    (true, _) => Answer::NxDomain,
                    (false, RecordType::A) => Answer::A(ips),
                    (false, _) => Answer::Empty,
                }
            }
            [_, "svc"] | ["svc"] | [_, "pod"] | ["pod"] => Answer::Empty,
            _ => Answer::NxDomain,
        }
    }
}

/// Builds the response to `req` for a cluster name.
fn respond(req: &Message, records: &Records<'_>) -> Option<Message> {
    let q = req.queries.first()?;
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if !(name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"))) {
        return None;
    }
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    match records.resolve(&name, q.query_type()) {
        Answer::A(ips) => {
            for ip in ips {
                resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
            }
        }
        Answer::Srv(targets) => {
            for (port, target) in targets {
                if let Ok(t) = Name::from_ascii(format!("{target}.")) {
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::SRV(SRV::new(0, 100, port, t))));
                }
            }
        }
        Answer::Empty => {}
        Answer::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(resp)
}

/// Upstream resolvers from a resolv.conf (port 53), or `upstream` when given.
pub fn upstreams(resolv_conf: &str, upstream: Option<SocketAddr>) -> Vec<SocketAddr> {
    if let Some(u) = upstream {
        return vec![u];
    }
    std::fs::read_to_string(resolv_conf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Relays a query to the first upstream that answers.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for u in upstreams {
        let bind: SocketAddr = if u.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
        if sock.send_to(query, u).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The index of slices by their service.
const SLICES_BY_SERVICE: &str = "service";

/// A running DNS server: the caches it answers from.
#[derive(Clone)]
pub struct Handle {
    pub services: Cache,
    pub slices: Cache,
}

/// Serves DNS on UDP `listen` in `scope` (an error if it cannot listen).
pub async fn serve(client: Client, listen: SocketAddr, upstream: Vec<SocketAddr>, scope: &Scope) -> std::io::Result<Handle> {
    let sock = Arc::new(UdpSocket::bind(listen).await?);
    let mut informers = Informers::new();
    let services = informers.cache(&SERVICES.all());
    let slices = informers.indexed(&ENDPOINTSLICES.all(), SLICES_BY_SERVICE, by_service);
    informers.run(&client, scope);
    let upstream = Arc::new(upstream);
    tracing::info!(%listen, upstreams = ?upstream, "cluster DNS serving");
    let handle = Handle { services: services.clone(), slices: slices.clone() };
    let s = scope.clone();
    scope.spawn(async move { answer_loop(sock, services, slices, upstream, s).await });
    Ok(handle)
}

async fn answer_loop(sock: Arc<UdpSocket>, services: Cache, slices: Cache, upstream: Arc<Vec<SocketAddr>>, scope: Scope) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns receive");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let answer = match Message::from_vec(&packet) {
            Ok(req) => {
                let local = respond(&req, &Records { services: &services, slices: &slices });
                match local {
                    Some(resp) => resp.to_vec().ok(),
                    None => {
                        // Not ours: the host's resolvers answer, off the receive loop.
                        let (sock, upstream) = (sock.clone(), upstream.clone());
                        scope.spawn(async move {
                            if let Some(reply) = forward(&packet, &upstream).await {
                                let _ = sock.send_to(&reply, peer).await;
                            }
                        });
                        None
                    }
                }
            }
            Err(_) => None,
        };
        if let Some(bytes) = answer {
            let _ = sock.send_to(&bytes, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn maps() -> (Cache, Cache) {
        use crate::runtime::watcher::Event;
        let services = Cache::new();
        let slices = Cache::new().with_index(SLICES_BY_SERVICE, by_service);
        services.apply(Event::Apply(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})));
        services.apply(Event::Apply(json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})));
        slices.apply(Event::Apply(json!({"metadata": {"name": "db-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
            "endpoints": [{"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}}, {"addresses": ["10.42.0.8"], "hostname": "db-1", "conditions": {"ready": false}}]})));
        (services, slices)
    }

    #[test]
    fn service_pod_and_srv_names() {
        let (services, slices) = maps();
        let r = Records { services: &services, slices: &slices };
        assert_eq!(r.resolve("web.default.svc.cluster.local", RecordType::A), Answer::A(vec!["10.43.0.20".parse().unwrap()]));
        assert_eq!(r.resolve("web.default.svc.cluster.local", RecordType::AAAA), Answer::Empty);
        assert_eq!(r.resolve("nope.default.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(r.resolve("db.default.svc.cluster.local", RecordType::A), Answer::A(vec!["10.42.0.7".parse().unwrap()]), "headless: ready pod IPs");
        assert_eq!(r.resolve("db-0.db.default.svc.cluster.local", RecordType::A), Answer::A(vec!["10.42.0.7".parse().unwrap()]));
        assert_eq!(r.resolve("db-1.db.default.svc.cluster.local", RecordType::A), Answer::NxDomain, "not ready");
        assert_eq!(r.resolve("_http._tcp.web.default.svc.cluster.local", RecordType::SRV), Answer::Srv(vec![(80, "web.default.svc.cluster.local".into())]));
        assert_eq!(r.resolve("_pg._tcp.db.default.svc.cluster.local", RecordType::SRV), Answer::Srv(vec![(5432, "db-0.db.default.svc.cluster.local".into())]));
        assert_eq!(r.resolve("10-42-0-9.default.pod.cluster.local", RecordType::A), Answer::A(vec!["10.42.0.9".parse().unwrap()]));
        assert_eq!(r.resolve("example.com", RecordType::A), Answer::NxDomain);
    }

    #[test]
    fn wire_round_trip() {
        let (services, slices) = maps();
        let records = Records { services: &services, slices: &slices };
        let mut q = Message::new(7, MessageType::Query, hickory_proto::op::OpCode::Query);
        q.add_query(hickory_proto::op::Query::query(Name::from_ascii("web.default.svc.cluster.local.").unwrap(), RecordType::A));
        let req = Message::from_vec(&q.to_vec().unwrap()).unwrap();
        let resp = respond(&req, &records).unwrap();
        let back = Message::from_vec(&resp.to_vec().unwrap()).unwrap();
        assert_eq!(back.metadata.id, 7);
        assert_eq!(back.answers.len(), 1);
        let mut other = Message::new(8, MessageType::Query, hickory_proto::op::OpCode::Query);
        other.add_query(hickory_proto::op::Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A));
        assert!(respond(&other, &records).is_none(), "other names are forwarded");
    }
}
