//! Join tokens on the server side: the server's own join token (`<data-dir>/server/token`,
//! mode 0600, `K10<CA hash>::<id>.<secret>`, its Secret recreated under a new id if someone
//! deleted it to revoke it), and `ferrokube token create|list|delete` as the control socket
//! answers them (kubeadm's `token` commands over bootstrap-token Secrets).

use crate::runtime::Client;
use crate::vocab::jointoken::{BootstrapToken, JoinToken, StoredToken, NAMESPACE, NODE_TOKEN_GROUP, SECRET_TYPE};
use crate::vocab::resource::builtin::SECRETS;
use serde_json::{json, Value};
use std::path::Path;

/// The description of the server's own join token.
const SERVER_TOKEN: &str = "the server's join token (<data-dir>/server/token)";

/// The server's join token: the one in `path` while its Secret exists and it pins this CA,
/// else a new one (Secret created, file written). Returns it and whether it is new.
pub async fn ensure_server_token(client: &Client, path: &Path, ca_pem: &str) -> Result<(String, bool), String> {
    if let Some(current) = std::fs::read_to_string(path).ok().and_then(|t| JoinToken::parse(&t).ok()) {
        let pins_us = current.ca.as_ref().is_some_and(|c| c.matches(ca_pem));
        let live = client.get(SECRETS.named(NAMESPACE, &current.token.secret_name())).await.ok();
        let same = live.as_ref().and_then(StoredToken::from_secret).is_some_and(|s| s.token == current.token && !s.expired(chrono::Utc::now()));
        if pins_us && same {
            return Ok((JoinToken::pinned(ca_pem, &current.token)?, false));
        }
        if !same {
            tracing::info!("the server's join token was deleted or changed: issuing a new one");
        }
    }
    let token = BootstrapToken::generate();
    let secret = token.secret_object(SERVER_TOKEN, None, &[NODE_TOKEN_GROUP]);
    client.create(SECRETS.ns(NAMESPACE), &secret).await.map_err(|e| format!("the join token's Secret: {e}"))?;
    let text = JoinToken::pinned(ca_pem, &token)?;
    crate::pki::write_private(path, format!("{text}\n").as_bytes(), 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((text, true))
}

/// `ferrokube token create`: a new bootstrap token (or `token`, given) for joining nodes,
/// valid for `ttl_secs` (0: forever). The output's last line is the join token.
pub async fn create(client: &Client, ca_pem: &str, req: &Value) -> Result<String, String> {
    let token = match req["token"].as_str().filter(|t| !t.is_empty()) {
        Some(t) => BootstrapToken::parse(t)?,
        None => BootstrapToken::generate(),
    };
    let ttl = req["ttl_secs"].as_u64().unwrap_or(24 * 3600);
    let expiration = (ttl > 0).then(|| (chrono::Utc::now() + chrono::Duration::seconds(ttl.min(i64::MAX as u64) as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut groups: Vec<String> = vec![NODE_TOKEN_GROUP.to_string()];
    for g in req["groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!("--groups {g:?}: a bootstrap token's extra groups must start with system:bootstrappers:"));
        }
        groups.push(g.to_string());
    }
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let secret = token.secret_object(req["description"].as_str().unwrap_or(""), expiration.as_deref(), &groups);
    match client.create(SECRETS.ns(NAMESPACE), &secret).await {
        Ok(_) => {}
        Err(e) if e.code == 409 => return Err(format!("a bootstrap token with id {:?} exists already", token.id)),
        Err(e) => return Err(e.to_string()),
    }
    let until = expiration.map(|e| format!("expires {e}")).unwrap_or_else(|| "never expires".into());
    Ok(format!("bootstrap token {:?} created ({until}); join a node with:\n  ferrokube agent --server https://<this server>:6443 --token <the token below>\n{}", token.id, JoinToken::pinned(ca_pem, &token)?))
}

/// `ferrokube token list`: kubeadm's table.
pub async fn list(client: &Client) -> Result<String, String> {
    let secrets = client.list(SECRETS.ns(NAMESPACE).fields(&format!("type={SECRET_TYPE}"))).await.map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let mut rows = vec![["TOKEN".to_string(), "TTL".into(), "EXPIRES".into(), "USAGES".into(), "DESCRIPTION".into(), "EXTRA GROUPS".into()]];
    for s in secrets.iter().filter_map(StoredToken::from_secret) {
        let (ttl, expires) = match s.expiration.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
            None => ("<forever>".to_string(), "<never>".to_string()),
            Some(Ok(t)) => {
                let left = (t.with_timezone(&chrono::Utc) - now).num_seconds();
                (if left <= 0 { "<invalid>".into() } else { human(left) }, t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
            Some(Err(_)) => ("<invalid>".into(), "<invalid>".into()),
        };
        let usages = s.usages.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        let desc = if s.description.is_empty() { "<none>".to_string() } else { s.description.clone() };
        let groups = if s.extra_groups.is_empty() { "<none>".to_string() } else { s.extra_groups.join(",") };
        rows.push([s.token.to_string(), ttl, expires, usages, desc, groups]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    Ok(rows
        .iter()
        .map(|r| r.iter().enumerate().map(|(i, c)| if i == 5 { c.clone() } else { format!("{c:<w$}", w = widths[i]) }).collect::<Vec<_>>().join("   "))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn human(secs: i64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d", s / 86400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `ferrokube token delete`: by id or whole token; the server's own is deleted too if named
/// (it gets a new one at its next start).
pub async fn delete(client: &Client, req: &Value) -> Result<String, String> {
    let mut out = Vec::new();
    for t in req["tokens"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let id = match JoinToken::parse(t) {
            Ok(j) => j.token.id,
            Err(_) if t.len() == 6 && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) => t.to_string(),
            Err(_) => return Err(format!("{t:?} is neither a token id (6 characters of [a-z0-9]) nor a token")),
        };
        let name = format!("{}{id}", crate::vocab::jointoken::SECRET_PREFIX);
        match client.delete(SECRETS.named(NAMESPACE, &name), &json!({})).await {
            Ok(_) => out.push(format!("bootstrap token {id:?} deleted")),
            Err(e) if e.code == 404 => return Err(format!("bootstrap token {id:?} not found")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out.join("\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls_read_as_kubeadm_prints_them() {
        assert_eq!(super::human(86400 * 2 + 5), "2d");
        assert_eq!(super::human(7200), "2h");
        assert_eq!(super::human(59), "59s");
    }
}
