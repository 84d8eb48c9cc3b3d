//! The HorizontalPodAutoscaler's arithmetic, as kube-controller-manager's podautoscaler does
//! it, with no I/O: which pods count, the replicas one resource metric asks for (usage over
//! requests, tolerance, missing and unready pods), and how a recommendation is stabilized and
//! rate-limited by `behavior` (or, without one, by the downscale stabilization window).

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// Changes within this fraction of the target do not rescale (upstream's default
/// `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// CPU samples of pods younger than this count only once taken a window after readiness.
pub const CPU_INITIALIZATION_PERIOD: i64 = 300;
/// A pod that turned unready this soon after it started has never been ready.
pub const INITIAL_READINESS_DELAY: i64 = 30;

/// What the autoscaler knows of one pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    pub start: Option<DateTime<Utc>>,
    /// The Ready condition: (status is True, last transition).
    pub ready: Option<(bool, DateTime<Utc>)>,
    /// The request (milli-units) summed over the containers; `Err(container)` names the first
    /// container without one.
    pub request: Result<i64, String>,
}

/// One pod's usage (milli-units), with the sample's time and window (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub milli: i64,
    pub at: DateTime<Utc>,
    pub window: f64,
}

/// How the pods of a target fall out for one resource.
#[derive(Debug, Default)]
pub struct Groups {
    pub ready: usize,
    pub unready: BTreeSet<String>,
    pub missing: BTreeSet<String>,
    pub ignored: BTreeSet<String>,
}

/// Sorts pods into ready (counted), unready, missing (no sample) and ignored (being deleted,
/// failed), as upstream's `groupPods`.
pub fn group(pods: &[Pod], samples: &BTreeMap<String, Sample>, cpu: bool, now: DateTime<Utc>) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            g.ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.insert(p.name.clone());
            continue;
        }
        let Some(sample) = samples.get(&p.name) else {
            g.missing.insert(p.name.clone());
            continue;
        };
        if cpu {
            let unready = match (p.ready, p.start) {
                (Some((ready, since)), Some(start)) => {
                    if start + chrono::Duration::seconds(CPU_INITIALIZATION_PERIOD) > now {
                        // Still starting: only a sample taken a whole window after readiness.
                        !ready || sample.at < since + chrono::Duration::milliseconds((sample.window * 1000.0) as i64)
                    } else {
                        !ready && start + chrono::Duration::seconds(INITIAL_READINESS_DELAY) > since
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// The utilization (percent of requests) of `samples` over the pods with requests, and the
/// average usage (milli-units). An error when no sample belongs to a pod with a request.
fn utilization(samples: &BTreeMap<String, i64>, requests: &BTreeMap<String, i64>) -> Result<(i64, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, v) in samples {
        if let Some(r) = requests.get(pod) {
            used += v;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    Ok((used * 100 / requested, used / n))
}

/// What a resource metric's target asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Percent of the pods' requests.
    Utilization(i64),
    /// Milli-units per pod.
    AverageValue(i64),
}

/// The replicas one resource metric asks for, and what it measured: (replicas, utilization
/// percent if the goal is one, average milli-units per pod).
pub fn resource_replicas(current: i64, goal: Goal, pods: &[Pod], samples: &BTreeMap<String, Sample>, resource: &str, now: DateTime<Utc>) -> Result<(i64, Option<i64>, i64), String> {
    let g = group(pods, samples, resource == "cpu", now);
    let mut usage: BTreeMap<String, i64> = samples.iter().filter(|(n, _)| !g.ignored.contains(*n) && !g.unready.contains(*n) && pods.iter().any(|p| &p.name == *n)).map(|(n, s)| (n.clone(), s.milli)).collect();
    if usage.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    match goal {
        Goal::Utilization(target) => {
            let mut requests = BTreeMap::new();
            for p in pods {
                match &p.request {
                    Ok(r) => {
                        requests.insert(p.name.clone(), *r);
                    }
                    Err(container) => return Err(format!("missing request for {resource} in container {container} of Pod {}", p.name)),
                }
            }
            let target = target.max(1);
            let (util, raw) = utilization(&usage, &requests)?;
            let ratio = util as f64 / target as f64;
            let up_with_unready = !g.unready.is_empty() && ratio > 1.0;
            if !up_with_unready && g.missing.is_empty() {
                if (1.0 - ratio).abs() <= TOLERANCE {
                    return Ok((current, Some(util), raw));
                }
                return Ok(((ratio * g.ready as f64).ceil() as i64, Some(util), raw));
            }
            // Missing pods count as fully using their request on the way down, idle on the way
            // up; unready ones as idle when scaling up.
            for m in &g.missing {
                let r = requests.get(m).copied().unwrap_or(0);
                usage.insert(m.clone(), if ratio < 1.0 { r * target.max(100) / 100 } else { 0 });
            }
            if up_with_unready {
                for u in &g.unready {
                    usage.insert(u.clone(), 0);
                }
            }
            let (new_util, _) = utilization(&usage, &requests)?;
            let new_ratio = new_util as f64 / target as f64;
            if (1.0 - new_ratio).abs() <= TOLERANCE || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
                return Ok((current, Some(util), raw));
            }
            let replicas = (new_ratio * usage.len() as f64).ceil() as i64;
            if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
                return Ok((current, Some(util), raw));
            }
            Ok((replicas, Some(util), raw))
        }
        Goal::AverageValue(target) => {
            let target = target.max(1);
            let total: i64 = usage.values().sum();
            let raw = total / usage.len() as i64;
            let ratio = total as f64 / (target as f64 * usage.len() as f64);
            let up_with_unready = !g.unready.is_empty() && ratio > 1.0;
            if !up_with_unready && g.missing.is_empty() {
                if (1.0 - ratio).abs() <= TOLERANCE {
                    return Ok((current, None, raw));
                }
                return Ok(((total as f64 / target as f64).ceil() as i64, None, raw));
            }
            for m in &g.missing {
                usage.insert(m.clone(), if ratio < 1.0 { target } else { 0 });
            }
            if up_with_unready {
                for u in &g.unready {
                    usage.insert(u.clone(), 0);
                }
            }
            let new_total: i64 = usage.values().sum();
            let new_ratio = new_total as f64 / (target as f64 * usage.len() as f64);
            if (1.0 - new_ratio).abs() <= TOLERANCE || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
                return Ok((current, None, raw));
            }
            let replicas = (new_ratio * usage.len() as f64).ceil() as i64;
            if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
                return Ok((current, None, raw));
            }
            Ok((replicas, None, raw))
        }
    }
}

/// One scaling policy: at most `value` pods or percent per `period` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub pods: bool,
    pub value: i64,
    pub period: i64,
}

/// One direction of `behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub window: i64,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Upstream's defaults for scaling up: no stabilization, 4 pods or 100% per 15 s, the
    /// larger.
    pub fn default_up() -> Rules {
        Rules { window: 0, select: "Max".into(), policies: vec![Policy { pods: true, value: 4, period: 15 }, Policy { pods: false, value: 100, period: 15 }] }
    }
    /// ... and down: 5 minutes of stabilization, 100% per 15 s.
    pub fn default_down(window: i64) -> Rules {
        Rules { window, select: "Max".into(), policies: vec![Policy { pods: false, value: 100, period: 15 }] }
    }
}

/// A change of replicas the autoscaler made, when.
#[derive(Debug, Clone, Copy)]
pub struct ScaleEvent {
    pub at: DateTime<Utc>,
    pub change: i64,
}

/// What the autoscaler remembers of one HPA between passes.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    pub recommendations: Vec<(DateTime<Utc>, i64)>,
    pub ups: Vec<ScaleEvent>,
    pub downs: Vec<ScaleEvent>,
}

/// A decision with the reason and message its condition carries.
pub type Decision = (i64, &'static str, &'static str);

fn changed_within(events: &[ScaleEvent], period: i64, now: DateTime<Utc>) -> i64 {
    events.iter().filter(|e| e.at > now - chrono::Duration::seconds(period)).map(|e| e.change).sum()
}

fn up_limit(current: i64, events: &[ScaleEvent], rules: &Rules, now: DateTime<Utc>) -> i64 {
    if rules.select == "Disabled" {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let start = current - changed_within(events, p.period, now);
        if p.pods { start + p.value } else { (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i64 }
    });
    if rules.select == "Min" { proposals.min().unwrap_or(current) } else { proposals.max().unwrap_or(current) }
}

fn down_limit(current: i64, events: &[ScaleEvent], rules: &Rules, now: DateTime<Utc>) -> i64 {
    if rules.select == "Disabled" {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let start = current + changed_within(events, p.period, now);
        if p.pods { start - p.value } else { (start as f64 * (1.0 - p.value as f64 / 100.0)) as i64 }
    });
    // The smallest change (Min) leaves the most replicas.
    if rules.select == "Min" { proposals.max().unwrap_or(current) } else { proposals.min().unwrap_or(current) }
}

impl Memory {
    /// The recommendation after stabilization (the lowest of the up window when rising, the
    /// highest of the down window when falling), recording `desired` among the recent ones.
    pub fn stabilize(&mut self, current: i64, desired: i64, up: &Rules, down: &Rules, now: DateTime<Utc>) -> Decision {
        let (window, reason, message) = if desired >= current {
            (up.window, "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
        } else {
            (down.window, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
        };
        let cutoff = now - chrono::Duration::seconds(window);
        let mut out = desired;
        for (at, r) in &self.recommendations {
            if *at > cutoff {
                out = if desired >= current { out.min(*r) } else { out.max(*r) };
            }
        }
        let obsolete = now - chrono::Duration::seconds(up.window.max(down.window));
        self.recommendations.retain(|(at, _)| *at >= obsolete);
        self.recommendations.push((now, desired));
        (out, reason, message)
    }

    /// The stabilized recommendation bounded by the policies' rates and min/max.
    pub fn limit(&self, current: i64, desired: i64, min: i64, max: i64, up: &Rules, down: &Rules, now: DateTime<Utc>) -> Decision {
        if desired > current {
            let limit = up_limit(current, &self.ups, up, now).max(current);
            let (allowed, reason, message) = if max > limit {
                (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
            } else {
                (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
            };
            if desired > allowed {
                return (allowed, reason, message);
            }
        } else if desired < current {
            let limit = down_limit(current, &self.downs, down, now).min(current);
            let (allowed, reason, message) = if min < limit {
                (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
            } else {
                (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
            };
            if desired < allowed {
                return (allowed, reason, message);
            }
        }
        (desired, "DesiredWithinRange", "the desired count is within the acceptable range")
    }

    /// Records a rescale from `from` to `to`; events older than the longest policy period go.
    pub fn scaled(&mut self, from: i64, to: i64, up: &Rules, down: &Rules, now: DateTime<Utc>) {
        let longest = |r: &Rules| r.policies.iter().map(|p| p.period).max().unwrap_or(0);
        let (ul, dl) = (longest(up), longest(down));
        self.ups.retain(|e| e.at > now - chrono::Duration::seconds(ul));
        self.downs.retain(|e| e.at > now - chrono::Duration::seconds(dl));
        if to > from {
            self.ups.push(ScaleEvent { at: now, change: to - from });
        } else if to < from {
            self.downs.push(ScaleEvent { at: now, change: from - to });
        }
    }
}

/// Without `behavior`: the highest recommendation of the downscale window, then at most
/// double (or 4) per pass and within min/max, as upstream's `normalizeDesiredReplicas`.
pub fn without_behavior(memory: &mut Memory, current: i64, desired: i64, min: i64, max: i64, window: i64, now: DateTime<Utc>) -> (i64, Decision, Decision) {
    let cutoff = now - chrono::Duration::seconds(window);
    memory.recommendations.retain(|(at, _)| *at > cutoff);
    let stabilized = memory.recommendations.iter().map(|(_, r)| *r).fold(desired, i64::max);
    memory.recommendations.push((now, desired));
    let able = if stabilized != desired {
        (stabilized, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
    } else {
        (stabilized, "ReadyForNewScale", "recommended size matches current size")
    };
    let up_limit = (2 * current).max(4);
    let limited = if stabilized < min {
        (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
    } else if max > up_limit && stabilized > up_limit {
        (up_limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
    } else if stabilized > max {
        (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
    } else {
        (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range")
    };
    (limited.0, able, limited)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn running(name: &str, request: i64) -> Pod {
        Pod { name: name.into(), phase: "Running".into(), deleting: false, start: Some(t(-1000)), ready: Some((true, t(-990))), request: Ok(request) }
    }

    fn samples(v: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        v.iter().map(|(n, m)| (n.to_string(), Sample { milli: *m, at: t(0), window: 15.0 })).collect()
    }

    #[test]
    fn utilization_scales_by_the_ratio() {
        let pods = [running("a", 100), running("b", 100)];
        // 180% of requests against a 50% target: ceil(3.6 * 2) = 8.
        assert_eq!(resource_replicas(2, Goal::Utilization(50), &pods, &samples(&[("a", 180), ("b", 180)]), "cpu", t(0)), Ok((8, Some(180), 180)));
        // Within the tolerance: as it is.
        assert_eq!(resource_replicas(2, Goal::Utilization(50), &pods, &samples(&[("a", 52), ("b", 50)]), "cpu", t(0)), Ok((2, Some(51), 51)));
        // Idle: down to none (minReplicas bounds it later).
        assert_eq!(resource_replicas(2, Goal::Utilization(50), &pods, &samples(&[("a", 0), ("b", 1)]), "cpu", t(0)).unwrap().0, 0);
    }

    #[test]
    fn missing_requests_and_metrics() {
        let mut p = running("a", 0);
        p.request = Err("web".into());
        assert_eq!(resource_replicas(1, Goal::Utilization(50), &[p], &samples(&[("a", 10)]), "cpu", t(0)), Err("missing request for cpu in container web of Pod a".into()));
        assert_eq!(resource_replicas(1, Goal::Utilization(50), &[running("a", 100)], &samples(&[]), "cpu", t(0)), Err("did not receive metrics for targeted pods (pods might be unready)".into()));
        // A pod without a sample counts as idle on the way up: 2 pods at 200% and 0%.
        let pods = [running("a", 100), running("b", 100)];
        assert_eq!(resource_replicas(2, Goal::Utilization(50), &pods, &samples(&[("a", 200)]), "cpu", t(0)).unwrap().0, 4);
    }

    #[test]
    fn young_pods_count_a_window_after_readiness() {
        let mut young = running("a", 100);
        young.start = Some(t(-20));
        young.ready = Some((true, t(-10)));
        let g = group(&[young.clone()], &samples(&[("a", 100)]), true, t(0));
        assert!(g.unready.contains("a"), "the sample's window started before readiness");
        young.ready = Some((true, t(-30)));
        assert_eq!(group(&[young], &samples(&[("a", 100)]), true, t(0)).ready, 1);
        let mut pending = running("p", 100);
        pending.phase = "Pending".into();
        assert!(group(&[pending], &samples(&[]), false, t(0)).unready.contains("p"));
    }

    #[test]
    fn behavior_stabilizes_and_limits() {
        let up = Rules::default_up();
        let down = Rules::default_down(60);
        let mut m = Memory::default();
        // Up from 1 to 10: 100% per 15s or 4 pods, the larger: 5.
        assert_eq!(m.stabilize(1, 10, &up, &down, t(0)).0, 10);
        assert_eq!(m.limit(1, 10, 1, 10, &up, &down, t(0)), (5, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"));
        m.scaled(1, 5, &up, &down, t(0));
        // Within the same period the pods already added count.
        assert_eq!(m.limit(5, 10, 1, 10, &up, &down, t(5)).0, 5);
        assert_eq!(m.limit(5, 10, 1, 10, &up, &down, t(16)).0, 10);
        // Down: the highest recommendation of the last 60 s wins.
        let mut m = Memory::default();
        m.stabilize(4, 4, &up, &down, t(0));
        assert_eq!(m.stabilize(4, 1, &up, &down, t(30)), (4, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation"));
        assert_eq!(m.stabilize(4, 1, &up, &down, t(61)).0, 1);
        assert_eq!(m.limit(4, 1, 1, 10, &up, &down, t(61)).0, 1);
        assert_eq!(m.limit(4, 0, 2, 10, &up, &down, t(61)), (2, "TooFewReplicas", "the desired replica count is less than the minimum replica count"));
    }

    #[test]
    fn without_behavior_as_upstream() {
        let mut m = Memory::default();
        assert_eq!(without_behavior(&mut m, 1, 20, 1, 10, 300, t(0)).0, 4);
        // The 20 of 10 s ago still stands; up to double the current 4.
        assert_eq!(without_behavior(&mut m, 4, 1, 1, 10, 300, t(10)).0, 8);
        let mut m = Memory::default();
        assert_eq!(without_behavior(&mut m, 3, 1, 1, 10, 300, t(0)).0, 1);
    }
}
