//! An in-memory [`Runtime`] for unit tests: sandboxes and containers with CRI's states and
//! ids, containers that run until told to exit, failures on demand, and a log of the calls
//! that changed something.

use super::{v1, Answer, CriError, Runtime};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
struct World {
    next: u64,
    clock: i64,
    sandboxes: BTreeMap<String, v1::PodSandboxStatus>,
    /// Container status and the sandbox it is in.
    containers: BTreeMap<String, (v1::ContainerStatus, String)>,
    images: HashSet<String>,
    /// Calls that fail next, by method name, with the message they fail with.
    failing: HashMap<&'static str, String>,
    /// Containers that ignore SIGTERM: a stop takes its whole timeout (recorded, not slept).
    stubborn: HashSet<String>,
    calls: Vec<String>,
    /// CPU time (ns) and working set (bytes) by container id, as set by the test.
    usage: HashMap<String, (u64, u64)>,
}

impl World {
    /// The time now: the real one, and never the same twice.
    fn tick(&mut self) -> i64 {
        let real = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.clock = real.max(self.clock + 1);
        self.clock
    }
}

/// The fake runtime.
pub struct Fake(Mutex<World>);

impl Default for Fake {
    /// A runtime with nothing in it, whose clock starts at the real time.
    fn default() -> Fake {
        let clock = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        Fake(Mutex::new(World { clock, ..Default::default() }))
    }
}

fn not_found(what: &str, id: &str) -> CriError {
    CriError::Call(tonic::Status::not_found(format!("{what} {id:?} not found")))
}

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        self.world().images.insert(image.to_string());
    }

    /// Makes the next call of `method` (a trait method's name) fail with `message`.
    pub fn fail_next(&self, method: &'static str, message: &str) {
        self.world().failing.insert(method, message.to_string());
    }

    /// Containers of `name` created from now on ignore SIGTERM.
    pub fn stubborn(&self, name: &str) {
        self.world().stubborn.insert(name.to_string());
    }

    /// The running container `id` exits with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        let mut w = self.world();
        let now = w.tick();
        if let Some((c, _)) = w.containers.get_mut(id) {
            c.state = v1::ContainerState::ContainerExited as i32;
            c.exit_code = code;
            c.finished_at = now;
            c.reason = if code == 0 { "Completed".into() } else { "Error".into() };
        }
    }

    /// Container `id` has used `cpu_ns` of CPU time in all and holds `working_set` bytes.
    pub fn set_usage(&self, id: &str, cpu_ns: u64, working_set: u64) {
        self.world().usage.insert(id.to_string(), (cpu_ns, working_set));
    }

    /// Changes what the runtime says about why container `id` ended.
    pub fn set_reason(&self, id: &str, reason: &str) {
        if let Some((c, _)) = self.world().containers.get_mut(id) {
            c.reason = reason.to_string();
        }
    }

    /// The calls that changed something, in order (`start_container <id>`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    /// The containers, as (name, attempt, state, sandbox id), oldest first.
    pub fn containers(&self) -> Vec<(String, u32, v1::ContainerState, String)> {
        let w = self.world();
        let mut out: Vec<_> = w.containers.values().map(|(c, sb)| (c.created_at, c.metadata.clone().unwrap_or_default(), c.state, sb.clone())).collect();
        out.sort_by_key(|(t, ..)| *t);
        out.into_iter().map(|(_, m, state, sb)| (m.name, m.attempt, v1::ContainerState::try_from(state).unwrap_or(v1::ContainerState::ContainerUnknown), sb)).collect()
    }

    /// The sandbox ids, oldest first, with whether each is ready.
    pub fn sandboxes(&self) -> Vec<(String, bool)> {
        let w = self.world();
        let mut out: Vec<_> = w.sandboxes.values().map(|s| (s.created_at, s.id.clone(), s.state == v1::PodSandboxState::SandboxReady as i32)).collect();
        out.sort();
        out.into_iter().map(|(_, id, ready)| (id, ready)).collect()
    }

    /// Runs `f` on the world unless `method` is set to fail; records `call` if given.
    fn act<T>(&self, method: &'static str, call: Option<String>, f: impl FnOnce(&mut World) -> Result<T, CriError>) -> Result<T, CriError> {
        let mut w = self.world();
        if let Some(message) = w.failing.remove(method) {
            return Err(CriError::Call(tonic::Status::unknown(message)));
        }
        w.tick();
        let out = f(&mut w)?;
        w.calls.extend(call);
        Ok(out)
    }

    fn ready<T: Send + 'static>(r: Result<T, CriError>) -> Answer<'static, T> {
        Box::pin(std::future::ready(r))
    }
}

fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Runtime for Fake {
    fn version(&self) -> Answer<'_, v1::VersionResponse> {
        Fake::ready(Ok(v1::VersionResponse { version: "0.1.0".into(), runtime_name: "fake".into(), runtime_version: "1".into(), runtime_api_version: "v1".into() }))
    }

    fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Answer<'_, String> {
        Fake::ready(self.act("run_pod_sandbox", None, |w| {
            w.next += 1;
            let id = format!("sb{}", w.next);
            let ip = if config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref()).is_some_and(|n| n.network == v1::NamespaceMode::Node as i32) {
                "192.0.2.1".to_string()
            } else {
                format!("10.42.0.{}", w.next % 250 + 2)
            };
            let status = v1::PodSandboxStatus {
                id: id.clone(),
                metadata: config.metadata.clone(),
                state: v1::PodSandboxState::SandboxReady as i32,
                created_at: w.clock,
                network: Some(v1::PodSandboxNetworkStatus { ip, additional_ips: vec![] }),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                ..Default::default()
            };
            w.sandboxes.insert(id.clone(), status);
            w.calls.push(format!("run_pod_sandbox {id}"));
            Ok(id)
        }))
    }

    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        Fake::ready(self.act("stop_pod_sandbox", Some(format!("stop_pod_sandbox {id}")), |w| {
            let now = w.clock;
            let sb = w.sandboxes.get_mut(id).ok_or_else(|| not_found("sandbox", id))?;
            sb.state = v1::PodSandboxState::SandboxNotready as i32;
            for (c, _) in w.containers.values_mut().filter(|(_, s)| s == id) {
                if c.state == v1::ContainerState::ContainerRunning as i32 {
                    c.state = v1::ContainerState::ContainerExited as i32;
                    c.exit_code = 137;
                    c.finished_at = now;
                }
            }
            Ok(())
        }))
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        Fake::ready(self.act("remove_pod_sandbox", Some(format!("remove_pod_sandbox {id}")), |w| {
            w.containers.retain(|_, (_, s)| s != id);
            // As CRI: removing what is not there succeeds.
            w.sandboxes.remove(id);
            Ok(())
        }))
    }

    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::PodSandboxStatus>> {
        Fake::ready(self.act("pod_sandbox_status", None, |w| w.sandboxes.get(id).cloned().map(Some).ok_or_else(|| not_found("sandbox", id))))
    }

    fn list_pod_sandbox(&self, filter: Option<v1::PodSandboxFilter>) -> Answer<'_, Vec<v1::PodSandbox>> {
        Fake::ready(self.act("list_pod_sandbox", None, |w| {
            let f = filter.unwrap_or_default();
            Ok(w.sandboxes
                .values()
                .filter(|s| f.id.is_empty() || s.id == f.id)
                .filter(|s| f.state.as_ref().is_none_or(|st| st.state == s.state))
                .filter(|s| matches(&s.labels, &f.label_selector))
                .map(|s| v1::PodSandbox { id: s.id.clone(), metadata: s.metadata.clone(), state: s.state, created_at: s.created_at, labels: s.labels.clone(), annotations: s.annotations.clone(), runtime_handler: String::new() })
                .collect())
        }))
    }

    fn create_container<'a>(&'a self, sandbox: &'a str, config: v1::ContainerConfig, _sandbox_config: v1::PodSandboxConfig) -> Answer<'a, String> {
        Fake::ready(self.act("create_container", None, |w| {
            if w.sandboxes.get(sandbox).is_none_or(|s| s.state != v1::PodSandboxState::SandboxReady as i32) {
                return Err(not_found("ready sandbox", sandbox));
            }
            w.next += 1;
            let id = format!("c{}", w.next);
            let status = v1::ContainerStatus {
                id: id.clone(),
                metadata: config.metadata.clone(),
                state: v1::ContainerState::ContainerCreated as i32,
                created_at: w.clock,
                image: config.image.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                ..Default::default()
            };
            w.containers.insert(id.clone(), (status, sandbox.to_string()));
            let name = config.metadata.map(|m| format!("{}#{}", m.name, m.attempt)).unwrap_or_default();
            w.calls.push(format!("create_container {name} {id}"));
            Ok(id)
        }))
    }

    fn start_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        Fake::ready(self.act("start_container", Some(format!("start_container {id}")), |w| {
            let now = w.clock;
            let (c, _) = w.containers.get_mut(id).ok_or_else(|| not_found("container", id))?;
            if c.state != v1::ContainerState::ContainerCreated as i32 {
                return Err(CriError::Call(tonic::Status::failed_precondition(format!("container {id} is not in the created state"))));
            }
            c.state = v1::ContainerState::ContainerRunning as i32;
            c.started_at = now;
            Ok(())
        }))
    }

    fn stop_container<'a>(&'a self, id: &'a str, timeout: i64) -> Answer<'a, ()> {
        Fake::ready(self.act("stop_container", None, |w| {
            let stubborn = w.containers.get(id).and_then(|(c, _)| c.metadata.as_ref()).is_some_and(|m| w.stubborn.contains(&m.name));
            let now = w.clock;
            let (c, _) = w.containers.get_mut(id).ok_or_else(|| not_found("container", id))?;
            if c.state == v1::ContainerState::ContainerRunning as i32 {
                c.state = v1::ContainerState::ContainerExited as i32;
                c.exit_code = if stubborn { 137 } else { 0 };
                c.finished_at = now;
            }
            w.calls.push(format!("stop_container {id} {timeout}"));
            Ok(())
        }))
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        Fake::ready(self.act("remove_container", Some(format!("remove_container {id}")), |w| {
            w.containers.remove(id);
            Ok(())
        }))
    }

    fn list_containers(&self, filter: Option<v1::ContainerFilter>) -> Answer<'_, Vec<v1::Container>> {
        Fake::ready(self.act("list_containers", None, |w| {
            let f = filter.unwrap_or_default();
            Ok(w.containers
                .values()
                .filter(|(c, sb)| (f.id.is_empty() || c.id == f.id) && (f.pod_sandbox_id.is_empty() || *sb == f.pod_sandbox_id))
                .filter(|(c, _)| f.state.as_ref().is_none_or(|st| st.state == c.state) && matches(&c.labels, &f.label_selector))
                .map(|(c, sb)| v1::Container { id: c.id.clone(), pod_sandbox_id: sb.clone(), metadata: c.metadata.clone(), image: c.image.clone(), state: c.state, created_at: c.created_at, labels: c.labels.clone(), annotations: c.annotations.clone(), ..Default::default() })
                .collect())
        }))
    }

    fn container_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::ContainerStatus>> {
        Fake::ready(self.act("container_status", None, |w| w.containers.get(id).map(|(c, _)| Some(c.clone())).ok_or_else(|| not_found("container", id))))
    }

    fn exec_sync<'a>(&'a self, id: &'a str, cmd: Vec<String>, _timeout: i64) -> Answer<'a, v1::ExecSyncResponse> {
        Fake::ready(self.act("exec_sync", Some(format!("exec_sync {id} {}", cmd.join(" "))), |w| {
            let running = w.containers.get(id).is_some_and(|(c, _)| c.state == v1::ContainerState::ContainerRunning as i32);
            // `false` fails, anything else succeeds, as a shell would.
            Ok(v1::ExecSyncResponse { exit_code: if running && cmd.first().map(String::as_str) != Some("false") { 0 } else { 1 }, ..Default::default() })
        }))
    }

    fn exec(&self, _req: v1::ExecRequest) -> Answer<'_, String> {
        Fake::ready(Err(CriError::Call(tonic::Status::unimplemented("the fake runtime does not stream"))))
    }

    fn attach(&self, _req: v1::AttachRequest) -> Answer<'_, String> {
        Fake::ready(Err(CriError::Call(tonic::Status::unimplemented("the fake runtime does not stream"))))
    }

    fn port_forward<'a>(&'a self, _sandbox: &'a str, _ports: Vec<i32>) -> Answer<'a, String> {
        Fake::ready(Err(CriError::Call(tonic::Status::unimplemented("the fake runtime does not stream"))))
    }

    fn image_status<'a>(&'a self, image: &'a str) -> Answer<'a, Option<v1::Image>> {
        Fake::ready(self.act("image_status", None, |w| {
            Ok(w.images.contains(image).then(|| v1::Image { id: format!("sha256:{image}"), repo_tags: vec![image.to_string()], ..Default::default() }))
        }))
    }

    fn pull_image<'a>(&'a self, image: &'a str, _auth: Option<v1::AuthConfig>) -> Answer<'a, String> {
        Fake::ready(self.act("pull_image", Some(format!("pull_image {image}")), |w| {
            w.images.insert(image.to_string());
            Ok(format!("sha256:{image}"))
        }))
    }

    fn list_container_stats(&self) -> Answer<'_, Vec<v1::ContainerStats>> {
        Fake::ready(self.act("list_container_stats", None, |w| {
            let now = w.clock;
            let value = |v: u64| Some(v1::UInt64Value { value: v });
            Ok(w.containers
                .values()
                .filter(|(c, _)| c.state == v1::ContainerState::ContainerRunning as i32)
                .map(|(c, _)| {
                    let (cpu, mem) = w.usage.get(&c.id).copied().unwrap_or_default();
                    v1::ContainerStats {
                        attributes: Some(v1::ContainerAttributes { id: c.id.clone(), metadata: c.metadata.clone(), labels: c.labels.clone(), annotations: c.annotations.clone() }),
                        cpu: Some(v1::CpuUsage { timestamp: now, usage_core_nano_seconds: value(cpu), usage_nano_cores: None }),
                        memory: Some(v1::MemoryUsage { timestamp: now, working_set_bytes: value(mem), ..Default::default() }),
                    }
                })
                .collect())
        }))
    }
}
