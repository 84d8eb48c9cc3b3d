//! Liveness, readiness and startup probes (exec through the CRI, httpGet, tcpSocket), run
//! when due on the pod worker's syncs. A failed liveness or startup probe (past its
//! threshold) stops the container, which then restarts under the pod's restart policy; a
//! container is ready only once its readiness probe succeeds.

use super::{Kubelet, LABEL_CONTAINER};
use crate::cri::v1;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The probe state of one container instance.
#[derive(Default, Clone)]
pub(crate) struct State {
    started: bool,
    ready: bool,
    live_failures: u32,
    ready_failures: u32,
    ready_successes: u32,
    start_failures: u32,
    next: HashMap<&'static str, Instant>,
}


fn secs(p: &Value, k: &str, default: u64) -> u64 {
    p[k].as_u64().unwrap_or(default)
}

/// A named or numeric port of a probe.
fn port(container: &Value, p: &Value) -> Option<u16> {
    match p {
        Value::Number(n) => n.as_u64().map(|n| n as u16),
        Value::String(name) => container["ports"].as_array()?.iter().find(|cp| cp["name"] == name.as_str())?["containerPort"].as_u64().map(|n| n as u16),
        _ => None,
    }
}

impl Kubelet {
    /// Runs the `preStop` hooks of the pod's running containers (exec, httpGet, tcpSocket or
    /// sleep), all at once, for at most `grace` seconds; returns how long they took.
    pub(super) async fn run_pre_stop(&self, pod: &Value, running: &[(String, String)], grace: i64) -> Duration {
        let started = std::time::Instant::now();
        let pod_ip = pod["status"]["podIP"].as_str().unwrap_or("");
        let hooks = running.iter().filter_map(|(name, id)| {
            let spec = pod["spec"]["containers"].as_array()?.iter().find(|c| c["name"] == name.as_str())?;
            let hook = &spec["lifecycle"]["preStop"];
            hook.is_object().then_some(async move {
                if !self.run_hook(spec, id, hook, pod_ip, grace.max(1) as u64).await {
                    tracing::info!(pod = %pod["metadata"]["name"].as_str().unwrap_or(""), container = %name, "preStop hook failed");
                }
            })
        });
        let all = futures_util::future::join_all(hooks);
        let _ = tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), all).await;
        started.elapsed()
    }

    /// Runs one lifecycle hook handler (exec, httpGet, tcpSocket or sleep) against the
    /// container `id`, for at most `limit` seconds; whether it succeeded.
    pub(super) async fn run_hook(&self, container: &Value, id: &str, hook: &Value, pod_ip: &str, limit: u64) -> bool {
        if let Some(s) = hook["sleep"]["seconds"].as_u64() {
            tokio::time::sleep(Duration::from_secs(s.min(limit))).await;
            return true;
        }
        let mut handler = hook.clone();
        handler["timeoutSeconds"] = serde_json::json!(limit);
        self.probe_once(container, id, &handler, pod_ip).await
    }

    async fn probe_once(&self, container: &Value, id: &str, probe: &Value, pod_ip: &str) -> bool {
        let timeout = Duration::from_secs(secs(probe, "timeoutSeconds", 1).max(1));
        if let Some(cmd) = probe["exec"]["command"].as_array() {
            let cmd: Vec<String> = cmd.iter().filter_map(|c| c.as_str().map(String::from)).collect();
            let r = self.cri.exec_sync(id, cmd, timeout.as_secs() as i64).await;
            return r.is_ok_and(|r| r.exit_code == 0);
        }
        let host = |p: &Value| p["host"].as_str().filter(|h| !h.is_empty()).unwrap_or(pod_ip).to_string();
        if let Some(get) = probe.get("httpGet") {
            let Some(port) = port(container, &get["port"]) else { return false };
            let path = get["path"].as_str().unwrap_or("/");
            let addr = format!("{}:{port}", host(get));
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
                let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\n");
                for h in get["httpHeaders"].as_array().into_iter().flatten() {
                    req.push_str(&format!("{}: {}\r\n", h["name"].as_str().unwrap_or(""), h["value"].as_str().unwrap_or("")));
                }
                req.push_str("\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut head = vec![0u8; 64];
                let n = s.read(&mut head).await.ok()?;
                let line = String::from_utf8_lossy(&head[..n]).into_owned();
                line.split_whitespace().nth(1)?.parse::<u16>().ok()
            };
            return matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(code)) if (200..400).contains(&code));
        }
        if let Some(tcp) = probe.get("tcpSocket") {
            let Some(port) = port(container, &tcp["port"]) else { return false };
            let addr = format!("{}:{port}", host(tcp));
            return matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)));
        }
        false
    }

    /// Runs the probes that are due; stops containers that failed liveness or startup.
    /// Returns container name -> ready.
    pub(super) async fn run_probes(&self, pod: &Value, statuses: &[v1::ContainerStatus], pod_ip: &str) -> HashMap<String, bool> {
        let mut ready = HashMap::new();
        let now = Instant::now();
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("");
            let Some(st) = statuses.iter().filter(|s| s.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(name)).max_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt)) else { continue };
            if st.state != v1::ContainerState::ContainerRunning as i32 {
                ready.insert(name.to_string(), false);
                continue;
            }
            let started_at = Instant::now() - Duration::from_secs((chrono::Utc::now().timestamp() - st.started_at / 1_000_000_000).max(0) as u64);
            let mut state = self.state.probes.lock().get(&st.id).cloned().unwrap_or_default();
            let mut kill = false;
            for (kind, default_success) in [("startupProbe", true), ("livenessProbe", true), ("readinessProbe", true)] {
                let Some(probe) = c.get(kind).filter(|p| p.is_object()) else {
                    match kind {
                        "startupProbe" => state.started = true,
                        "readinessProbe" => state.ready = state.started && default_success,
                        _ => {}
                    }
                    continue;
                };
                if kind != "startupProbe" && !state.started {
                    continue;
                }
                if kind == "startupProbe" && state.started {
                    continue;
                }
                let due = state.next.get(kind).copied().unwrap_or(started_at + Duration::from_secs(secs(probe, "initialDelaySeconds", 0)));
                if now < due {
                    continue;
                }
                state.next.insert(match kind { "startupProbe" => "startupProbe", "livenessProbe" => "livenessProbe", _ => "readinessProbe" }, now + Duration::from_secs(secs(probe, "periodSeconds", 10).max(1)));
                let ok = self.probe_once(c, &st.id, probe, pod_ip).await;
                let failures = secs(probe, "failureThreshold", 3) as u32;
                match kind {
                    "startupProbe" => {
                        if ok {
                            state.started = true;
                        } else {
                            state.start_failures += 1;
                            kill |= state.start_failures >= failures;
                        }
                    }
                    "livenessProbe" => {
                        if ok {
                            state.live_failures = 0;
                        } else {
                            state.live_failures += 1;
                            kill |= state.live_failures >= failures;
                        }
                    }
                    _ => {
                        if ok {
                            state.ready_successes += 1;
                            state.ready_failures = 0;
                            if state.ready_successes >= secs(probe, "successThreshold", 1) as u32 {
                                state.ready = true;
                            }
                        } else {
                            state.ready_failures += 1;
                            state.ready_successes = 0;
                            if state.ready_failures >= failures {
                                state.ready = false;
                            }
                        }
                    }
                }
            }
            if kill {
                tracing::info!(pod = %pod["metadata"]["name"].as_str().unwrap_or(""), container = name, "probe failed; restarting the container");
                let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
                if let Err(e) = self.cri.stop_container(&st.id, grace).await {
                    tracing::warn!(container = %st.id, error = %e, "stopping a container whose liveness probe failed");
                }
                self.state.probes.lock().remove(&st.id);
                ready.insert(name.to_string(), false);
                continue;
            }
            ready.insert(name.to_string(), state.ready);
            self.state.probes.lock().insert(st.id.clone(), state);
        }
        ready
    }
}

impl Kubelet {
    /// Forgets the probe state of containers that no longer exist.
    pub(super) fn forget_probes(&self, live_ids: &[String]) {
        self.state.probes.lock().retain(|id, _| live_ids.contains(id));
    }
}
