//! The token cleaner (kube-controller-manager's `tokencleaner`): a bootstrap-token Secret
//! is deleted once its `expiration` has passed; until then its key is queued for that time.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::jointoken::{StoredToken, NAMESPACE, SECRET_TYPE};
use crate::vocab::resource::builtin::SECRETS;
use crate::vocab::status::ApiError;
use std::time::Duration;

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let q = queue.clone();
    let tokens = SECRETS.ns(NAMESPACE).fields(&format!("type={SECRET_TYPE}"));
    s.informers.on(&tokens, move |c| {
        if !c.is_delete() {
            q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "token-cleaner", queue, 1, move |name| {
        let ctl = ctl.clone();
        async move { reconcile(&ctl, &name).await }
    });
}

/// How long until `secret` must go: None for a Secret that never expires (or is no token).
pub fn time_left(secret: &serde_json::Value, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let exp = secret["data"]["expiration"].as_str()?;
    let exp = String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, exp).ok()?).ok()?;
    match chrono::DateTime::parse_from_rfc3339(&exp) {
        Ok(t) => Some((t.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO)),
        // An expiration nobody can read makes the token unusable: it goes now.
        Err(_) => Some(Duration::ZERO),
    }
}

async fn reconcile(ctl: &Ctl, name: &str) -> Result<Next, ApiError> {
    let target = SECRETS.named(NAMESPACE, name);
    let Some(secret) = not_found_ok(ctl.client.get(target.clone()).await)? else { return Ok(Next::Idle) };
    if secret["type"] != SECRET_TYPE || secret["metadata"]["deletionTimestamp"].is_string() {
        return Ok(Next::Idle);
    }
    match time_left(&secret, chrono::Utc::now()) {
        None => Ok(Next::Idle),
        Some(d) if !d.is_zero() => Ok(Next::After(d + Duration::from_millis(100))),
        Some(_) => {
            let id = StoredToken::from_secret(&secret).map(|t| t.token.id).unwrap_or_default();
            tracing::info!(secret = name, token = %id, "deleting expired bootstrap token");
            let uid = secret["metadata"]["uid"].clone();
            not_found_ok(ctl.client.delete(target, &serde_json::json!({"preconditions": {"uid": uid}})).await)?;
            Ok(Next::Idle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_tokens_go_now_and_others_at_their_time() {
        let t = crate::vocab::jointoken::BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(time_left(&t.secret_object("", Some("2030-01-01T00:01:00Z"), &[]), now), Some(Duration::from_secs(60)));
        assert_eq!(time_left(&t.secret_object("", Some("2029-01-01T00:00:00Z"), &[]), now), Some(Duration::ZERO));
        assert_eq!(time_left(&t.secret_object("", Some("soon"), &[]), now), Some(Duration::ZERO));
        assert_eq!(time_left(&t.secret_object("", None, &[]), now), None);
    }
}
