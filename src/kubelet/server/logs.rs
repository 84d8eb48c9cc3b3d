//! The kubelet API's `/containerLogs/<ns>/<pod>/<container>` (what the API server's
//! `pods/<name>/log` reaches): container logs from the CRI log files this node writes
//! (`<rfc3339nano> <stream> <F|P> <text>` per line), with `follow`, `tailLines`,
//! `timestamps`, `previous`, `sinceSeconds` and `limitBytes`.

use super::streaming::load_pod;
use crate::vocab::query::all_values;
use crate::kubelet::Kubelet;
use crate::vocab::status::ApiError;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A log answer: all of it, or (follow) what is there and then what is appended.
pub enum Logs {
    Whole(Bytes),
    Follow(tokio::sync::mpsc::Receiver<Bytes>),
}

/// One parsed CRI log line.
struct Line {
    time: String,
    text: String,
    full: bool,
}

fn parse(line: &str) -> Option<Line> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.to_string();
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("").to_string();
    Some(Line { time, text, full: tag != "P" })
}

fn render(lines: &[Line], timestamps: bool) -> String {
    let mut out = String::new();
    for l in lines {
        if timestamps {
            out.push_str(&l.time);
            out.push(' ');
        }
        out.push_str(&l.text);
        if l.full {
            out.push('\n');
        }
    }
    out
}

/// The log files of a container, oldest attempt first.
fn attempts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

fn flag(query: &str, key: &str) -> bool {
    all_values(query, key).last().is_some_and(|v| v == "true" || v == "1")
}

/// A non-negative integer parameter.
fn uint(query: &str, key: &str) -> Result<Option<u64>, ApiError> {
    match all_values(query, key).last() {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {key}: a non-negative integer is expected"))),
    }
}

/// The log of `container` of pod `ns/name` on this node.
pub fn container_logs(kubelet: &Arc<Kubelet>, ns: &str, name: &str, container: &str, query: &str) -> Result<Logs, ApiError> {
    let pod = load_pod(kubelet, ns, name)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let dir = kubelet.cfg.pod_log_dir.join(format!("{ns}_{name}_{uid}")).join(container);
    let files = attempts(&dir);
    let previous = flag(query, "previous");
    let file = if previous { files.iter().rev().nth(1) } else { files.last() };
    let Some(file) = file.cloned() else {
        let why = if previous { format!("previous terminated container {container:?} in pod {name:?} not found") } else { format!("container {container:?} in pod {name:?} is waiting to start") };
        return Err(ApiError::bad_request(why));
    };
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines: Vec<Line> = text.lines().filter_map(parse).collect();
    if let Some(secs) = uint(query, "sinceSeconds")? {
        let cutoff = chrono::Utc::now() - chrono::Duration::seconds(secs as i64);
        lines.retain(|l| chrono::DateTime::parse_from_rfc3339(&l.time).is_ok_and(|t| t >= cutoff));
    }
    if let Some(n) = uint(query, "tailLines")? {
        let n = n as usize;
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    let timestamps = flag(query, "timestamps");
    let mut body = render(&lines, timestamps);
    if let Some(limit) = uint(query, "limitBytes")? {
        body.truncate(limit as usize);
    }
    if !flag(query, "follow") || previous {
        return Ok(Logs::Whole(Bytes::from(body)));
    }
    // Follow: what is there, then what is appended, until the container stops.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut offset = text.len() as u64;
    let (me, container, ns, name) = (kubelet.clone(), container.to_string(), ns.to_string(), name.to_string());
    kubelet.scope.spawn(async move {
        if tx.send(Bytes::from(body)).await.is_err() {
            return;
        }
        let mut idle = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let more = read_from(&file, offset);
            if !more.is_empty() {
                idle = 0;
                let complete = more.rfind('\n').map_or(0, |i| i + 1);
                offset += complete as u64;
                let lines: Vec<Line> = more[..complete].lines().filter_map(parse).collect();
                if tx.send(Bytes::from(render(&lines, timestamps))).await.is_err() {
                    return;
                }
                continue;
            }
            idle += 1;
            // Every few idle rounds: stop once the container no longer runs.
            if idle % 5 == 0 && !container_running(&me, &ns, &name, &container) {
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(Logs::Follow(rx))
}

fn read_from(file: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(file) else { return String::new() };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

/// Whether `container` of the pod runs, as this kubelet last reported it.
fn container_running(kubelet: &Kubelet, ns: &str, name: &str, container: &str) -> bool {
    let Ok(pod) = load_pod(kubelet, ns, name) else { return false };
    ["containerStatuses", "initContainerStatuses"].iter().any(|f| {
        pod["status"][*f].as_array().into_iter().flatten().any(|s| s["name"] == container && s["state"]["running"].is_object())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines() {
        let lines: Vec<Line> = ["2026-01-01T00:00:00.1Z stdout F hello", "2026-01-01T00:00:01Z stderr P par", "2026-01-01T00:00:01Z stderr F tial"].iter().filter_map(|l| parse(l)).collect();
        assert_eq!(render(&lines, false), "hello\npartial\n");
        assert!(render(&lines, true).starts_with("2026-01-01T00:00:00.1Z hello\n"));
    }
}
