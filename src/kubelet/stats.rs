//! What the kubelet API's `/stats/summary` and `/metrics` report: CPU and memory of the node
//! (from `/proc`) and of each pod and container (from their cgroups, `<cgroup-root>/pod<uid>/
//! <container id>`, v1 or v2), in upstream's Summary API shape (`stats/v1alpha1`).

use super::Kubelet;
use crate::cri::v1;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// CPU time and memory of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub working_set_bytes: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The usage of cgroup `rel` (e.g. `ferrokube/pod<uid>`) under `root` (`/sys/fs/cgroup`).
pub fn cgroup_usage(root: &Path, rel: &str, v2: bool) -> Option<Usage> {
    if v2 {
        let dir = root.join(rel);
        let cpu = stat_value(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?, "usage_usec")? * 1000;
        let mem = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let inactive = std::fs::read_to_string(dir.join("memory.stat")).ok().and_then(|s| stat_value(&s, "inactive_file")).unwrap_or(0);
        Some(Usage { cpu_ns: cpu, memory_bytes: mem, working_set_bytes: mem.saturating_sub(inactive) })
    } else {
        let cpu = read_u64(&root.join("cpuacct").join(rel).join("cpuacct.usage"))?;
        let mdir = root.join("memory").join(rel);
        let mem = read_u64(&mdir.join("memory.usage_in_bytes")).unwrap_or(0);
        let inactive = std::fs::read_to_string(mdir.join("memory.stat")).ok().and_then(|s| stat_value(&s, "total_inactive_file")).unwrap_or(0);
        Some(Usage { cpu_ns: cpu, memory_bytes: mem, working_set_bytes: mem.saturating_sub(inactive) })
    }
}

/// The node's CPU time (all CPUs, user + nice + system + irq + softirq + steal, in ns) from
/// `/proc/stat`.
pub fn node_cpu_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum::<u64>();
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy * (1_000_000_000 / hz))
}

/// (total, available) memory in bytes from `/proc/meminfo`.
pub fn node_memory(meminfo: &str) -> (u64, u64) {
    let kib = |k: &str| meminfo.lines().find_map(|l| l.strip_prefix(k)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024;
    (kib("MemTotal:"), kib("MemAvailable:"))
}

impl Kubelet {
    /// CPU rate in nanocores of `key` since its previous sample (none on the first).
    fn nano_cores(&self, key: &str, now_ns: i64, cpu_ns: u64) -> Option<u64> {
        let mut samples = self.state.cpu_samples.lock();
        let prev = samples.insert(key.to_string(), (now_ns, cpu_ns));
        let (t0, c0) = prev?;
        let dt = (now_ns - t0) as u64;
        (dt > 0 && cpu_ns >= c0).then(|| ((cpu_ns - c0) as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    fn usage_json(&self, key: &str, now: &str, now_ns: i64, u: Usage) -> (Value, Value) {
        let mut cpu = json!({"time": now, "usageCoreNanoSeconds": u.cpu_ns});
        if let Some(n) = self.nano_cores(key, now_ns, u.cpu_ns) {
            cpu["usageNanoCores"] = json!(n);
        }
        (cpu, json!({"time": now, "usageBytes": u.memory_bytes, "workingSetBytes": u.working_set_bytes}))
    }

    /// The Summary API document of this node.
    pub async fn stats_summary(&self) -> Value {
        let now_t = chrono::Utc::now();
        let now = now_t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let now_ns = now_t.timestamp_nanos_opt().unwrap_or(0);
        let root = PathBuf::from("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let (total, available) = node_memory(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
        let node_cpu = node_cpu_ns(&std::fs::read_to_string("/proc/stat").unwrap_or_default()).unwrap_or(0);
        let used = total.saturating_sub(available);
        let (cpu, mut memory) = self.usage_json("node", &now, now_ns, Usage { cpu_ns: node_cpu, memory_bytes: used, working_set_bytes: used });
        memory["availableBytes"] = json!(available);
        // Containers by pod uid, from the runtime.
        let containers = self.cri.list_containers(None).await.unwrap_or_default();
        let mut pods = Vec::new();
        for pod in self.pods() {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
            let rel = format!("{}/pod{uid}", self.cfg.cgroup_root);
            let Some(u) = cgroup_usage(&root, &rel, v2) else { continue };
            let (pcpu, pmem) = self.usage_json(&format!("pod/{uid}"), &now, now_ns, u);
            let mut list = Vec::new();
            for c in containers.iter().filter(|c| c.labels.get(super::LABEL_UID).map(String::as_str) == Some(uid) && c.state == v1::ContainerState::ContainerRunning as i32) {
                let name = c.labels.get(super::LABEL_CONTAINER).cloned().unwrap_or_default();
                if let Some(cu) = cgroup_usage(&root, &format!("{rel}/{}", c.id), v2) {
                    let (ccpu, cmem) = self.usage_json(&c.id, &now, now_ns, cu);
                    let started = chrono::DateTime::from_timestamp_nanos(c.created_at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    list.push(json!({"name": name, "startTime": started, "cpu": ccpu, "memory": cmem}));
                }
            }
            pods.push(json!({
                "podRef": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"], "uid": uid},
                "startTime": pod["status"]["startTime"],
                "containers": list,
                "cpu": pcpu,
                "memory": pmem,
            }));
        }
        // Samples of pods and containers that are gone are dropped.
        let live: std::collections::HashSet<String> = self.pods().iter().map(|p| format!("pod/{}", p["metadata"]["uid"].as_str().unwrap_or_default())).chain(containers.iter().map(|c| c.id.clone())).collect();
        self.state.cpu_samples.lock().retain(|k, _| k == "node" || live.contains(k));
        json!({
            "node": {"nodeName": self.cfg.node_name, "cpu": cpu, "memory": memory},
            "pods": pods,
        })
    }

    /// The resource metrics endpoint (`/metrics/resource`, what metrics-server scrapes):
    /// cumulative CPU seconds and working set of the node (`/proc`), of each pod (its cgroup)
    /// and of each running container (the runtime's `ListContainerStats`), each sample with
    /// its time in milliseconds, in upstream's metric names.
    pub async fn resource_metrics_text(&self) -> String {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut m = Metrics::default();
        let (total, available) = node_memory(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
        let node_ok = match node_cpu_ns(&std::fs::read_to_string("/proc/stat").unwrap_or_default()) {
            Some(cpu) => {
                m.sample("node_cpu_usage_seconds_total", "", cpu as f64 / 1e9, now_ms);
                m.sample("node_memory_working_set_bytes", "", total.saturating_sub(available) as f64, now_ms);
                true
            }
            None => false,
        };
        let root = PathBuf::from("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        for pod in self.pods() {
            let meta = &pod["metadata"];
            let uid = meta["uid"].as_str().unwrap_or_default();
            if let Some(u) = cgroup_usage(&root, &format!("{}/pod{uid}", self.cfg.cgroup_root), v2) {
                let labels = format!("namespace=\"{}\",pod=\"{}\"", meta["namespace"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default());
                m.sample("pod_cpu_usage_seconds_total", &labels, u.cpu_ns as f64 / 1e9, now_ms);
                m.sample("pod_memory_working_set_bytes", &labels, u.working_set_bytes as f64, now_ms);
            }
        }
        let stats = self.cri.list_container_stats().await;
        let started: std::collections::HashMap<String, i64> = self.cri.list_containers(None).await.unwrap_or_default().into_iter().map(|c| (c.id, c.created_at)).collect();
        let containers_ok = stats.is_ok();
        for st in stats.unwrap_or_default() {
            let Some(attrs) = &st.attributes else { continue };
            let label = |k: &str| attrs.labels.get(k).map(String::as_str).unwrap_or_default();
            let labels = format!("container=\"{}\",namespace=\"{}\",pod=\"{}\"", label(super::LABEL_CONTAINER), label(super::LABEL_NAMESPACE), label(super::LABEL_NAME));
            if let Some(cpu) = st.cpu.as_ref().and_then(|c| Some((c.usage_core_nano_seconds.as_ref()?.value, c.timestamp))) {
                m.sample("container_cpu_usage_seconds_total", &labels, cpu.0 as f64 / 1e9, cpu.1 / 1_000_000);
            }
            if let Some(mem) = st.memory.as_ref().and_then(|c| Some((c.working_set_bytes.as_ref()?.value, c.timestamp))) {
                m.sample("container_memory_working_set_bytes", &labels, mem.0 as f64, mem.1 / 1_000_000);
            }
            if let Some(t) = started.get(&attrs.id) {
                m.sample("container_start_time_seconds", &labels, *t as f64 / 1e9, now_ms);
            }
        }
        m.sample("scrape_error", "", if node_ok && containers_ok { 0.0 } else { 1.0 }, now_ms);
        m.text()
    }

    /// Prometheus text of the kubelet's own gauges.
    pub fn metrics_text(&self) -> String {
        let pods = self.pods();
        let running = pods.iter().filter(|p| p["status"]["phase"] == "Running").count();
        let containers: usize = pods.iter().map(|p| p["status"]["containerStatuses"].as_array().map_or(0, |s| s.iter().filter(|c| c["state"]["running"].is_object()).count())).sum();
        format!(
            "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {running}\n\
             # HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {containers}\n\
             # HELP kubelet_node_name The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\nkubelet_node_name{{node=\"{}\"}} 1\n",
            self.cfg.node_name
        )
    }
}

/// The resource metrics of one scrape, grouped by metric as the text format wants them.
#[derive(Default)]
struct Metrics {
    by_name: Vec<(&'static str, Vec<String>)>,
}

impl Metrics {
    fn sample(&mut self, name: &'static str, labels: &str, value: f64, ms: i64) {
        let line = if labels.is_empty() { format!("{name} {value} {ms}") } else { format!("{name}{{{labels}}} {value} {ms}") };
        match self.by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, lines)) => lines.push(line),
            None => self.by_name.push((name, vec![line])),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, lines) in &self.by_name {
            let (kind, help) = match *name {
                "container_cpu_usage_seconds_total" => ("counter", "[STABLE] Cumulative cpu time consumed by the container in core-seconds"),
                "container_memory_working_set_bytes" => ("gauge", "[STABLE] Current working set of the container in bytes"),
                "container_start_time_seconds" => ("gauge", "[STABLE] Start time of the container since unix epoch in seconds"),
                "node_cpu_usage_seconds_total" => ("counter", "[STABLE] Cumulative cpu time consumed by the node in core-seconds"),
                "node_memory_working_set_bytes" => ("gauge", "[STABLE] Current working set of the node in bytes"),
                "pod_cpu_usage_seconds_total" => ("counter", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds"),
                "pod_memory_working_set_bytes" => ("gauge", "[STABLE] Current working set of the pod in bytes"),
                _ => ("gauge", "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"),
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        let (total, avail) = node_memory("MemTotal:       2048 kB\nMemFree:  10 kB\nMemAvailable:   1024 kB\n");
        assert_eq!((total, avail), (2048 * 1024, 1024 * 1024));
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        // user 10, nice 0, system 5, idle 100, iowait 7, irq 1, softirq 1, steal 0.
        assert_eq!(node_cpu_ns("cpu  10 0 5 100 7 1 1 0 0 0\ncpu0 1 2 3\n"), Some(17 * 1_000_000_000 / hz));
        assert_eq!(stat_value("usage_usec 1500\nuser_usec 1000\n", "usage_usec"), Some(1500));
        assert_eq!(stat_value("total_inactive_file 4096\ninactive_file 1\n", "inactive_file"), Some(1));
    }

    #[test]
    fn cgroup_files_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("v1");
        std::fs::create_dir_all(v1.join("cpuacct/ferrokube/podx")).unwrap();
        std::fs::create_dir_all(v1.join("memory/ferrokube/podx")).unwrap();
        std::fs::write(v1.join("cpuacct/ferrokube/podx/cpuacct.usage"), "123456\n").unwrap();
        std::fs::write(v1.join("memory/ferrokube/podx/memory.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(v1.join("memory/ferrokube/podx/memory.stat"), "cache 5\ntotal_inactive_file 4000\n").unwrap();
        assert_eq!(cgroup_usage(&v1, "ferrokube/podx", false), Some(Usage { cpu_ns: 123456, memory_bytes: 10000, working_set_bytes: 6000 }));
        let v2 = d.path().join("v2");
        std::fs::create_dir_all(v2.join("ferrokube/podx")).unwrap();
        std::fs::write(v2.join("ferrokube/podx/cpu.stat"), "usage_usec 7\n").unwrap();
        std::fs::write(v2.join("ferrokube/podx/memory.current"), "900\n").unwrap();
        std::fs::write(v2.join("ferrokube/podx/memory.stat"), "inactive_file 100\n").unwrap();
        assert_eq!(cgroup_usage(&v2, "ferrokube/podx", true), Some(Usage { cpu_ns: 7000, memory_bytes: 900, working_set_bytes: 800 }));
        assert_eq!(cgroup_usage(&v2, "ferrokube/missing", true), None);
    }
}
