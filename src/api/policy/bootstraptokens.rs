//! Bootstrap-token authentication, as kube-apiserver's `--enable-bootstrap-token-auth`: a
//! bearer token `<id>.<secret>` whose `bootstrap-token-<id>` Secret in kube-system exists,
//! is not being deleted, allows authentication, has not expired and holds that secret
//! authenticates as `system:bootstrap:<id>` in `system:bootstrappers` (and the Secret's extra
//! bootstrapper groups).

use crate::api::Api;
use crate::vocab::jointoken::{BootstrapToken, StoredToken, NAMESPACE, USER_PREFIX};
use crate::vocab::user::UserInfo;

impl Api {
    /// The identity a bootstrap token authenticates, if it is a valid one.
    pub fn bootstrap_token_identity(&self, presented: &str) -> Option<UserInfo> {
        if !BootstrapToken::shaped(presented) {
            return None;
        }
        let token = BootstrapToken::parse(presented).ok()?;
        let secret = self.core_object("secrets", Some(NAMESPACE), &token.secret_name()).ok()??;
        if secret["metadata"]["deletionTimestamp"].is_string() {
            return None;
        }
        let stored = StoredToken::from_secret(&secret)?;
        let same = stored.token.id == token.id && crate::vocab::hash::constant_time_eq(stored.token.secret.as_bytes(), token.secret.as_bytes());
        if !same || stored.expired(chrono::Utc::now()) || !stored.usages.iter().any(|u| u == "authentication") {
            return None;
        }
        let groups = stored.groups();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        Some(UserInfo::authenticated(format!("{USER_PREFIX}{}", token.id), &groups))
    }

    /// Who a bearer token (other than the admin token) authenticates: a bootstrap token or a
    /// service-account token.
    pub fn bearer_identity(&self, presented: &str) -> Option<UserInfo> {
        self.bootstrap_token_identity(presented).or_else(|| self.service_account_identity(presented))
    }
}
