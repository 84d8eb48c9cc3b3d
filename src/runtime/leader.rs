//! "Run this while I hold lease X": leader election over a coordination.k8s.io Lease, as
//! client-go's leaderelection does it (lease 15 s, renew deadline 10 s, retry 2 s). A
//! candidate tries to acquire the Lease every retry period; while it holds it, the work runs
//! in a child scope and the Lease is renewed every retry period; if renewing fails for the
//! renew deadline, the work is stopped and the candidate goes back to acquiring. Another
//! holder's Lease counts as expired once it has not changed for its duration, measured on the
//! local clock (no trust in other machines' clocks). On shutdown the Lease is released so a
//! peer takes over at once.
//!
//! With [`Leadership::Always`] (one server on an embedded store, where no second server can
//! exist) the work simply runs.

use super::client::{not_found_ok, Client};
use super::task::Scope;
use crate::vocab::resource::builtin::LEASES;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Timing of an election (upstream's defaults for the scheduler and controller manager).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { lease: Duration::from_secs(15), renew_deadline: Duration::from_secs(10), retry: Duration::from_secs(2) }
    }
}

/// How a component decides that it may run.
#[derive(Clone)]
pub enum Leadership {
    /// It is the only candidate.
    Always,
    /// It runs while `identity` holds the Lease of that name in `namespace`.
    Lease { client: Client, namespace: String, identity: String, timing: Timing },
}

impl Leadership {
    /// Runs `start` (which spawns the work in the scope it is given) while leading, inside
    /// `scope`; the Lease is `name`.
    pub fn run<F>(&self, name: &str, scope: &Scope, start: F)
    where
        F: Fn(&Scope) + Send + Sync + 'static,
    {
        match self {
            Leadership::Always => start(&scope.child()),
            Leadership::Lease { client, namespace, identity, timing } => {
                let e = Election { client: client.clone(), namespace: namespace.clone(), name: name.to_string(), identity: identity.clone(), timing: *timing, observed: None };
                let scope2 = scope.clone();
                scope.spawn_graceful(e.campaign(scope2, start));
            }
        }
    }
}

/// MicroTime, as Lease times are written.
fn micro_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

struct Election {
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease's spec as last seen, and when it was seen to change.
    observed: Option<(Value, Instant)>,
}

impl Election {
    async fn campaign<F>(mut self, scope: Scope, start: F)
    where
        F: Fn(&Scope) + Send + Sync + 'static,
    {
        loop {
            // Acquire.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::debug!(lease = %self.name, error = %e, "lease not acquired"),
                }
                tokio::select! {
                    _ = scope.cancelled() => return,
                    _ = tokio::time::sleep(self.timing.retry) => {}
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let term = scope.child();
            start(&term);
            // Renew until the deadline passes without a successful renewal.
            let mut renewed = Instant::now();
            let lost = loop {
                tokio::select! {
                    _ = scope.cancelled() => break false,
                    _ = tokio::time::sleep(self.timing.retry) => {}
                }
                match self.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break true,
                    Err(e) => tracing::debug!(lease = %self.name, error = %e, "lease not renewed"),
                }
                if renewed.elapsed() >= self.timing.renew_deadline {
                    break true;
                }
            };
            term.stop().await;
            if !lost {
                self.release().await;
                return;
            }
            tracing::warn!(lease = %self.name, identity = %self.identity, "leadership lost; stopped and campaigning again");
        }
    }

    fn target(&self) -> crate::vocab::resource::Target {
        LEASES.named(&self.namespace, &self.name)
    }

    /// One attempt: whether this candidate holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ApiError> {
        let now = micro_now();
        let secs = self.timing.lease.as_secs();
        let Some(lease) = not_found_ok(self.client.get(self.target()).await)? else {
            let fresh = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs, "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            });
            return match self.client.create(LEASES.ns(&self.namespace), &fresh).await {
                Ok(l) => {
                    self.observed = Some((l["spec"].clone(), Instant::now()));
                    Ok(true)
                }
                Err(e) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = &lease["spec"];
        if self.observed.as_ref().is_none_or(|(s, _)| s != spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let duration = Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(secs));
            let seen = self.observed.as_ref().map(|(_, t)| *t).unwrap_or_else(Instant::now);
            if seen.elapsed() < duration {
                return Ok(false);
            }
        }
        let mut want = lease.clone();
        want["spec"]["holderIdentity"] = json!(self.identity);
        want["spec"]["leaseDurationSeconds"] = json!(secs);
        want["spec"]["renewTime"] = json!(now);
        if !mine {
            want["spec"]["acquireTime"] = json!(now);
            want["spec"]["leaseTransitions"] = json!(spec["leaseTransitions"].as_u64().unwrap_or(0) + 1);
        }
        // The stored resourceVersion makes this a compare-and-swap.
        match self.client.replace(self.target(), &want).await {
            Ok(l) => {
                self.observed = Some((l["spec"].clone(), Instant::now()));
                Ok(true)
            }
            Err(e) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (if still held), so another candidate need not wait it out.
    async fn release(&mut self) {
        let Ok(lease) = self.client.get(self.target()).await else { return };
        if lease["spec"]["holderIdentity"] != self.identity.as_str() {
            return;
        }
        let mut want = lease.clone();
        let now = micro_now();
        want["spec"] = json!({"leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now, "leaseTransitions": lease["spec"]["leaseTransitions"]});
        match self.client.replace(self.target(), &want).await {
            Ok(_) => tracing::info!(lease = %self.name, identity = %self.identity, "lease released"),
            Err(e) => tracing::debug!(lease = %self.name, error = %e, "lease not released"),
        }
    }
}
