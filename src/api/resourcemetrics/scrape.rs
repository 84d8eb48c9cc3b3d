//! One scrape of a kubelet's `/metrics/resource`: the Prometheus text format read into the
//! cumulative CPU seconds, working sets and start times of the node and its containers.

use std::collections::HashMap;

/// A sample: its value and the time the kubelet took it (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub value: f64,
    pub ms: i64,
}

/// One container's series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Series {
    pub cpu: Option<Point>,
    pub memory: Option<Point>,
    /// Start time (seconds since the epoch): a change means the container restarted.
    pub start: Option<f64>,
}

/// (namespace, pod, container).
pub type ContainerKey = (String, String, String);

/// What one scrape of one node returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub node: Series,
    pub containers: HashMap<ContainerKey, Series>,
}

/// Reads `name{k="v",...} value [timestamp]` lines; comments and unknown metrics are skipped,
/// and so are lines that do not parse (a partial answer still gives what it has).
pub fn parse(text: &str, scraped_ms: i64) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((name, labels, rest)) = split_sample(line) else { continue };
        let mut fields = rest.split_whitespace();
        let Some(value) = fields.next().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()) else { continue };
        let ms = fields.next().and_then(|t| t.parse::<i64>().ok()).unwrap_or(scraped_ms);
        let point = Point { value, ms };
        let key = || -> Option<ContainerKey> { Some((labels.get("namespace")?.clone(), labels.get("pod")?.clone(), labels.get("container")?.clone())) };
        match name {
            "node_cpu_usage_seconds_total" => out.node.cpu = Some(point),
            "node_memory_working_set_bytes" => out.node.memory = Some(point),
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" | "container_start_time_seconds" => {
                let Some(k) = key() else { continue };
                let s = out.containers.entry(k).or_default();
                match name {
                    "container_cpu_usage_seconds_total" => s.cpu = Some(point),
                    "container_memory_working_set_bytes" => s.memory = Some(point),
                    _ => s.start = Some(value),
                }
            }
            _ => {}
        }
    }
    out
}

/// `name`, its labels and what follows them.
fn split_sample(line: &str) -> Option<(&str, HashMap<String, String>, &str)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let Some(body) = rest.strip_prefix('{') else { return Some((name, HashMap::new(), rest)) };
    let mut labels = HashMap::new();
    let mut chars = body.char_indices().peekable();
    loop {
        // Skip separators; `}` ends the labels.
        while let Some((_, c)) = chars.peek() {
            if *c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((name, labels, &body[start + 1..]));
        }
        let eq = body[start..].find('=')? + start;
        let key = body[start..eq].trim().to_string();
        while chars.peek().is_some_and(|(i, _)| *i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_kubelets_serve() {
        let text = "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time\n\
            # TYPE container_cpu_usage_seconds_total counter\n\
            container_cpu_usage_seconds_total{container=\"web\",namespace=\"default\",pod=\"p-1\"} 1.5 1700000000123\n\
            container_memory_working_set_bytes{container=\"web\",namespace=\"default\",pod=\"p-1\"} 4096 1700000000123\n\
            container_start_time_seconds{container=\"web\",namespace=\"default\",pod=\"p-1\"} 1.7e+09 1700000000123\n\
            node_cpu_usage_seconds_total 100.25 1700000000000\n\
            node_memory_working_set_bytes 1.048576e+06\n\
            scrape_error 0\n\
            weird{a=\"x\\\"y\"} 3\n\
            broken{container=\"c\" 1\n";
        let s = parse(text, 42);
        assert_eq!(s.node.cpu, Some(Point { value: 100.25, ms: 1700000000000 }));
        assert_eq!(s.node.memory, Some(Point { value: 1048576.0, ms: 42 }));
        let c = s.containers[&("default".to_string(), "p-1".to_string(), "web".to_string())];
        assert_eq!(c.cpu, Some(Point { value: 1.5, ms: 1700000000123 }));
        assert_eq!(c.memory.map(|p| p.value), Some(4096.0));
        assert_eq!(c.start, Some(1.7e9));
        assert_eq!(s.containers.len(), 1);
    }

    #[test]
    fn labels_with_escapes_and_spaces() {
        let (name, labels, rest) = split_sample("m{ a=\"1\" , b=\"x\\\\y\\\"z\"} 7 8").unwrap();
        assert_eq!(name, "m");
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "x\\y\"z");
        assert_eq!(rest.trim(), "7 8");
        assert!(split_sample("m{a=1} 2").is_none());
    }
}
