//! `pods/<name>/log`: container logs from the CRI log files the node writes
//! (`<rfc3339nano> <stream> <F|P> <text>` per line), with `follow`, `tailLines`,
//! `timestamps`, `previous`, `sinceSeconds` and `limitBytes`.

use crate::vocab::object as vobj;
use crate::api::request::{Query, ResourceReq};
use crate::vocab::status::ApiError;
use crate::api::{Api, Reply};
use bytes::Bytes;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

impl Api {
    pub async fn logs(&self, rr: &ResourceReq, q: &Query) -> Result<Reply, ApiError> {
        let (pod, _) = self.load(&ResourceReq { sub: None, ..rr.clone() })?;
        let name = vobj::name(&pod).to_string();
        let names: Vec<String> = ["initContainers", "containers"]
            .iter()
            .flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        let container = match q.get("container") {
            Some(c) if names.iter().any(|n| n == c) => c.to_string(),
            Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
            None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
                Some([only]) => only["name"].as_str().unwrap_or("").to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        names.join(" ")
                    )))
                }
            },
        };
        let Some(root) = &self.pod_logs else {
            return Err(ApiError::bad_request(format!("pod {name} has no logs on this server: it runs no node")));
        };
        let dir = root
            .join(format!("{}_{}_{}", vobj::namespace(&pod).unwrap_or(""), name, pod["metadata"]["uid"].as_str().unwrap_or("")))
            .join(&container);
        let files = attempts(&dir);
        let previous = q.flag("previous");
        let file = if previous { files.iter().rev().nth(1) } else { files.last() };
        let Some(file) = file.cloned() else {
            let why = if previous { format!("previous terminated container {container:?} in pod {name:?} not found") } else { format!("container {container:?} in pod {name:?} is waiting to start") };
            return Err(ApiError::bad_request(why));
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut lines: Vec<Line> = text.lines().filter_map(parse).collect();
        if let Some(secs) = q.uint("sinceSeconds")? {
            let cutoff = chrono::Utc::now() - chrono::Duration::seconds(secs as i64);
            lines.retain(|l| chrono::DateTime::parse_from_rfc3339(&l.time).is_ok_and(|t| t >= cutoff));
        }
        if let Some(n) = q.uint("tailLines")? {
            let n = n as usize;
            if lines.len() > n {
                lines.drain(..lines.len() - n);
            }
        }
        let timestamps = q.flag("timestamps");
        let mut body = render(&lines, timestamps);
        if let Some(limit) = q.uint("limitBytes")? {
            body.truncate(limit as usize);
        }
        if !q.flag("follow") || previous {
            return Ok(Reply::Text(Bytes::from(body)));
        }
        // Follow: what is there, then what is appended, until the container stops.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let store = self.store.clone();
        let key = rr.kind.key(rr.namespace.as_deref(), &name);
        let mut offset = text.len() as u64;
        tokio::spawn(async move {
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
                if idle % 5 == 0 && !container_running(&store, &key, &container) {
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Reply::TextStream(rx))
    }
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

fn container_running(store: &crate::store::Store, key: &str, container: &str) -> bool {
    let Ok(Some(stored)) = store.get(key) else { return false };
    let Ok(pod) = serde_json::from_slice::<Value>(&stored.json) else { return false };
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
