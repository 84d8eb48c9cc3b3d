//! Keeping an in-memory view of stored objects fresh: `follow` calls back after every
//! change under a store prefix (and once whenever its watch starts over), so a view built
//! from those objects (the RBAC index, the admission webhooks) is rebuilt on its next use.

use crate::store::{Store, StoreError};

/// Calls `changed` once now and after every event under `prefix`, until `scope` ends or the
/// store closes; a watch that ends is started again (calling `changed`, as events may have
/// been missed).
pub async fn follow(store: &Store, prefix: &str, scope: &crate::runtime::Scope, changed: impl Fn()) {
    loop {
        let mut watch = match store.watch(prefix, store.revision().unwrap_or(0)) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, prefix, "watching stored objects; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = scope.cancelled() => return,
                }
            }
        };
        changed();
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    Ok(_) => changed(),
                    Err(StoreError::Closed) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, prefix, "watch ended; restarting");
                        break;
                    }
                },
                _ = scope.cancelled() => return,
            }
        }
    }
}
