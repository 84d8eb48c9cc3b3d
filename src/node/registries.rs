//! `/etc/ferrokube/registries.yaml` (`--private-registry`), as k3s users write it, rendered
//! into containerd's registry configuration: each mirror becomes a `hosts.toml` under the
//! `config_path` directory (the mirror's endpoints in order, then the registry itself), each
//! host's `tls` goes there too, and each host's `auth` becomes a `registry.configs` entry of
//! the CRI plugin. A mirror endpoint with rewrites is named by its relay's address instead
//! ([`super::regrelay`]), and its credentials are given under that address too.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://127.0.0.1:5000"]
//!     rewrite:                 # repositories named differently on the mirror
//!       "^rancher/(.*)": "mirrorproject/rancher-images/$1"
//!   "*":                       # every other registry
//!     endpoint: ["https://mirror.example.com"]
//! configs:
//!   "127.0.0.1:5000":
//!     auth: {username: alice, password: s3cret}   # or auth: <base64 user:pass>, identity_token
//!     tls: {ca_file: /etc/ssl/ca.pem, cert_file: ..., key_file: ..., insecure_skip_verify: false}
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
    /// The relay address (`127.0.0.1:<port>`) of each (registry, endpoint) with rewrites.
    #[serde(skip)]
    pub relays: BTreeMap<(String, String), String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Repository rewrites, pattern -> replacement, applied on the endpoints through relays.
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub auth: Option<Auth>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub auth: Option<String>,
    #[serde(alias = "identitytoken")]
    pub identity_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Reads the file at `path`; no file is no configuration. Errors name the file and what to fix.
pub fn load(path: &Path) -> Result<Registries, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(Registries::default());
    }
    let r: Registries = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, m) in &r.mirrors {
        for (pattern, replacement) in &m.rewrite {
            super::regrelay::Rule::new(pattern, replacement).map_err(|e| format!("{}: mirrors.{name}.rewrite {pattern:?}: {e}", path.display()))?;
        }
        if !m.rewrite.is_empty() && m.endpoint.is_empty() {
            return Err(format!("{}: mirrors.{name}.rewrite applies to the mirror's endpoints, and it names none", path.display()));
        }
        for e in &m.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("{}: mirrors.{name}.endpoint {e:?} must be an http:// or https:// URL", path.display()));
            }
        }
    }
    Ok(r)
}

/// `host:port` of an endpoint URL (what `configs` keys name).
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Registries {
    /// The configuration of host `h` (an endpoint's `host:port`, or a registry name).
    fn config(&self, h: &str) -> Option<&HostConfig> {
        self.configs.get(h)
    }

    /// TOML lines of a host's TLS settings in `hosts.toml`.
    fn tls_lines(&self, h: &str) -> String {
        let mut out = String::new();
        if let Some(tls) = self.config(h).and_then(|c| c.tls.as_ref()) {
            if let Some(ca) = &tls.ca_file {
                out.push_str(&format!("  ca = {}\n", quote(ca)));
            }
            if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
                out.push_str(&format!("  client = [[{}, {}]]\n", quote(c), quote(k)));
            }
            if tls.insecure_skip_verify {
                out.push_str("  skip_verify = true\n");
            }
        }
        out
    }

    /// The `hosts.toml` of registry `name` (`*`: every registry without its own).
    pub fn hosts_toml(&self, name: &str, mirror: &Mirror) -> String {
        let mut out = String::from("# Written by ferrokube from registries.yaml at every start.\n");
        if name != "*" {
            let server = if name == "docker.io" { "https://registry-1.docker.io".to_string() } else { format!("https://{name}") };
            out.push_str(&format!("server = {}\n", quote(&server)));
        }
        for e in &mirror.endpoint {
            if let Some(relay) = self.relays.get(&(name.to_string(), e.clone())) {
                out.push_str(&format!("\n# {e}, through the relay that applies its rewrites\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n", quote(&format!("http://{relay}"))));
                continue;
            }
            out.push_str(&format!("\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n", quote(e.trim_end_matches('/'))));
            out.push_str(&self.tls_lines(host_of(e)));
        }
        if name != "*" && !self.tls_lines(name).is_empty() {
            out.push_str(&format!("\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n{}", quote(&format!("https://{name}")), self.tls_lines(name)));
        }
        out
    }

    /// The rules of each mirror endpoint with rewrites: (registry, endpoint, rules, TLS).
    pub fn rewrites(&self) -> Vec<(&str, &str, Vec<super::regrelay::Rule>, super::regrelay::EndpointTls<'_>)> {
        let mut out = Vec::new();
        for (name, m) in self.mirrors.iter().filter(|(_, m)| !m.rewrite.is_empty()) {
            // Checked by load().
            let rules: Vec<_> = m.rewrite.iter().filter_map(|(p, r)| super::regrelay::Rule::new(p, r).ok()).collect();
            for e in &m.endpoint {
                let tls = self.config(host_of(e)).and_then(|c| c.tls.as_ref()).map(|t| super::regrelay::EndpointTls {
                    ca_file: t.ca_file.as_deref(),
                    cert_file: t.cert_file.as_deref(),
                    key_file: t.key_file.as_deref(),
                    insecure_skip_verify: t.insecure_skip_verify,
                });
                out.push((name.as_str(), e.as_str(), rules.clone(), tls.unwrap_or_default()));
            }
        }
        out
    }

    /// Writes the `hosts.toml` files into `dir` (emptied first: what the file no longer says
    /// is gone).
    pub fn write_hosts(&self, dir: &Path) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut names: BTreeMap<String, Mirror> = BTreeMap::new();
        for (name, m) in &self.mirrors {
            names.insert(name.clone(), Mirror { endpoint: m.endpoint.clone(), rewrite: BTreeMap::new() });
        }
        // A registry with TLS settings but no mirror still needs its hosts.toml.
        for (name, c) in &self.configs {
            if c.tls.is_some() && !names.contains_key(name) && !self.mirrors.values().any(|m| m.endpoint.iter().any(|e| host_of(e) == name)) {
                names.insert(name.clone(), Mirror::default());
            }
        }
        for (name, m) in &names {
            let sub = dir.join(if name == "*" { "_default" } else { name.as_str() });
            std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
            std::fs::write(sub.join("hosts.toml"), self.hosts_toml(name, m)).map_err(|e| format!("{}: {e}", sub.display()))?;
        }
        Ok(())
    }

    /// The CRI plugin's registry section: `config_path` and the hosts' credentials.
    pub fn containerd_section(&self, dir: &Path) -> String {
        let mut out = format!("  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = {}\n", quote(&dir.to_string_lossy()));
        let relayed = self.relays.iter().filter_map(|((_, e), relay)| Some((relay.as_str(), self.configs.get(host_of(e))?)));
        for (h, c) in self.configs.iter().map(|(h, c)| (h.as_str(), c)).chain(relayed) {
            let Some(a) = &c.auth else { continue };
            out.push_str(&format!("  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n", quote(h)));
            for (k, v) in [("username", &a.username), ("password", &a.password), ("auth", &a.auth), ("identitytoken", &a.identity_token)] {
                if let Some(v) = v {
                    out.push_str(&format!("      {k} = {}\n", quote(v)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registries, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registries.yaml");
        std::fs::write(&p, text).unwrap();
        load(&p)
    }

    #[test]
    fn mirrors_become_hosts_files_and_auth_becomes_cri_configs() {
        let r = parse("mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000/\"]\n  \"*\":\n    endpoint: [https://m.example]\nconfigs:\n  \"127.0.0.1:5000\":\n    auth: {username: alice, password: \"s3\\\"cret\"}\n  m.example:\n    tls: {ca_file: /ca.pem, insecure_skip_verify: true}\n").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("stale.example")).unwrap();
        r.write_hosts(d.path()).unwrap();
        let docker = std::fs::read_to_string(d.path().join("docker.io/hosts.toml")).unwrap();
        assert!(docker.contains("server = \"https://registry-1.docker.io\""), "{docker}");
        assert!(docker.contains("[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]"), "{docker}");
        let all = std::fs::read_to_string(d.path().join("_default/hosts.toml")).unwrap();
        assert!(all.contains("[host.\"https://m.example\"]") && all.contains("ca = \"/ca.pem\"") && all.contains("skip_verify = true") && !all.contains("server ="), "{all}");
        assert!(!d.path().join("stale.example").exists());
        let section = r.containerd_section(Path::new("/d/certs.d"));
        assert!(section.contains("config_path = \"/d/certs.d\""));
        assert!(section.contains("registry.configs.\"127.0.0.1:5000\".auth]\n      username = \"alice\"\n      password = \"s3\\\"cret\""), "{section}");
    }

    #[test]
    fn a_relayed_endpoint_is_named_by_its_relay_with_the_endpoint_s_credentials() {
        let mut r = parse("mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n    rewrite:\n      \"^library/(.*)\": \"mirrored/$1\"\nconfigs:\n  \"127.0.0.1:5000\":\n    auth: {username: alice, password: s3cret}\n").unwrap();
        let rewrites = r.rewrites();
        assert_eq!(rewrites.len(), 1);
        assert_eq!((rewrites[0].0, rewrites[0].1), ("docker.io", "http://127.0.0.1:5000"));
        assert_eq!(super::super::regrelay::rewrite(&rewrites[0].2, "library/busybox"), "mirrored/busybox");
        r.relays.insert(("docker.io".into(), "http://127.0.0.1:5000".into()), "127.0.0.1:41000".into());
        let docker = r.hosts_toml("docker.io", &r.mirrors["docker.io"]);
        assert!(docker.contains("[host.\"http://127.0.0.1:41000\"]") && !docker.contains("[host.\"http://127.0.0.1:5000\"]"), "{docker}");
        let section = r.containerd_section(Path::new("/d"));
        for h in ["127.0.0.1:5000", "127.0.0.1:41000"] {
            assert!(section.contains(&format!("registry.configs.\"{h}\".auth]\n      username = \"alice\"")), "{section}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_what_to_fix() {
        assert!(parse("mirror:\n  docker.io: {}\n").unwrap_err().contains("unknown field `mirror`"));
        assert!(parse("mirrors:\n  docker.io:\n    endpoint: [127.0.0.1:5000]\n").unwrap_err().contains("must be an http:// or https:// URL"));
        let e = parse("mirrors:\n  docker.io:\n    endpoint: [http://a]\n    rewrite: {\"^(a\": b}\n").unwrap_err();
        assert!(e.contains("mirrors.docker.io.rewrite \"^(a\"") && e.contains("unclosed group"), "{e}");
        assert!(parse("mirrors:\n  docker.io:\n    rewrite: {\"^a\": b}\n").unwrap_err().contains("names none"));
        assert!(parse("").unwrap().mirrors.is_empty());
        assert!(load(Path::new("/nonexistent/registries.yaml")).unwrap().mirrors.is_empty());
    }
}
