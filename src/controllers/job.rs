//! Jobs: run pods until `completions` succeed (NonIndexed or Indexed), at most `parallelism`
//! at once; retry failures with back-off up to `backoffLimit`, honour `podFailurePolicy`,
//! `activeDeadlineSeconds`, `suspend` and `ttlSecondsAfterFinished`; Complete/Failed
//! conditions as upstream.

use super::{pod_active, pod_ready, pods_in, Ctl, Next, Setup};
use crate::runtime::status::{set_condition, write_status};
use crate::vocab::object::{controlled_by, parse_time, split_key};
use crate::vocab::resource::builtin::{JOBS, PODS};
use crate::vocab::status::ApiError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub fn start(ctl: Ctl, s: &mut Setup) {
    super::start_owner_controller(ctl, s, "job", JOBS.all(), PODS.all(), "Job", 2, |c, key| async move { reconcile(&c, &key).await });
}

fn finished_condition(job: &Value) -> Option<&Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
}

/// The exit codes of a pod's terminated containers, by container name.
fn exit_codes(p: &Value) -> Vec<(String, i64)> {
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["state"]["terminated"]["exitCode"].as_i64()?)))
        .filter(|(_, code)| *code != 0)
        .collect()
}

/// The action the pod failure policy takes for a failed pod (`Count` when no rule matches).
fn failure_action(job: &Value, pod: &Value) -> String {
    for rule in job["spec"]["podFailurePolicy"]["rules"].as_array().into_iter().flatten() {
        let action = rule["action"].as_str().unwrap_or("Count");
        if let Some(on) = rule.get("onExitCodes") {
            let values: Vec<i64> = on["values"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
            let container = on["containerName"].as_str();
            let hit = exit_codes(pod).iter().any(|(name, code)| {
                container.is_none_or(|c| c == name) && if on["operator"] == "NotIn" { !values.contains(code) } else { values.contains(code) }
            });
            if hit {
                return action.to_string();
            }
        }
        for pc in rule["onPodConditions"].as_array().into_iter().flatten() {
            let hit = pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == pc["type"] && c["status"] == pc["status"].as_str().unwrap_or("True"));
            if hit {
                return action.to_string();
            }
        }
    }
    "Count".into()
}

/// `1,3-5` from a set of indexes, as `status.completedIndexes` spells it.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if end == start { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

fn pod_index(p: &Value) -> Option<i64> {
    p["metadata"]["annotations"][INDEX].as_str()?.parse().ok()
}

async fn reconcile(ctl: &Ctl, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = JOBS.named(ns, name);
    let Some(job) = super::load_live(client, target.clone(), "batch/v1", "Job").await? else { return Ok(Next::Idle) };
    let now = Utc::now();
    if let Some(done) = finished_condition(&job) {
        // Finished: only the TTL is left to honour.
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else { return Ok(Next::Idle) };
        let at = parse_time(&job["status"]["completionTime"]).or_else(|| parse_time(&done["lastTransitionTime"])).unwrap_or(now) + chrono::Duration::seconds(ttl);
        if at > now {
            return Ok(Next::After((at - now).to_std().unwrap_or_default() + Duration::from_millis(100)));
        }
        match client.delete(target.clone(), &json!({"propagationPolicy": "Background", "preconditions": {"uid": job["metadata"]["uid"]}})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => return Ok(Next::Idle),
            Err(e) => return Err(e),
        }
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let pods: Vec<Value> = pods_in(client, ns).await?.into_iter().filter(|p| controlled_by(p, &uid)).collect();
    let spec = &job["spec"];
    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let restart_on_failure = spec["template"]["spec"]["restartPolicy"] == "OnFailure";

    let active: Vec<&Value> = pods.iter().filter(|p| pod_active(p)).collect();
    let succeeded_pods: Vec<&Value> = pods.iter().filter(|p| p["status"]["phase"] == "Succeeded").collect();
    let failed_pods: Vec<&Value> = pods.iter().filter(|p| p["status"]["phase"] == "Failed").collect();
    let mut fail_job: Option<(&str, String)> = None;
    let mut failed = 0i64;
    for p in &failed_pods {
        match failure_action(&job, p).as_str() {
            "Ignore" => {}
            "FailJob" => {
                let pname = p["metadata"]["name"].as_str().unwrap_or("");
                fail_job = Some(("PodFailurePolicy", format!("Pod {ns}/{pname} has condition or exit code matching a FailJob rule of the pod failure policy")));
                failed += 1;
            }
            _ => failed += 1,
        }
    }
    let restarts: i64 = if restart_on_failure {
        active.iter().flat_map(|p| p["status"]["containerStatuses"].as_array().into_iter().flatten()).filter_map(|c| c["restartCount"].as_i64()).sum()
    } else {
        0
    };
    let completed_indexes: BTreeSet<i64> = succeeded_pods.iter().filter_map(|p| pod_index(p)).filter(|i| completions.is_none_or(|c| *i < c)).collect();
    let succeeded = if indexed { completed_indexes.len() as i64 } else { succeeded_pods.len() as i64 };

    let mut conditions: Vec<Value> = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut start_time = job["status"]["startTime"].clone();
    let mut next = Next::Idle;
    let suspended = spec["suspend"] == json!(true);
    let mut delete_active = false;
    let mut completion_time = job["status"]["completionTime"].clone();

    if suspended {
        delete_active = true;
        if set_condition(&mut conditions, "Suspended", "True", "JobSuspended", "Job suspended") {
            ctl.events.about(&job, "Normal", "Suspended", "Job suspended");
        }
        start_time = Value::Null;
    } else {
        if conditions.iter().any(|c| c["type"] == "Suspended" && c["status"] == "True") {
            set_condition(&mut conditions, "Suspended", "False", "JobResumed", "Job resumed");
            ctl.events.about(&job, "Normal", "Resumed", "Job resumed");
        }
        if start_time.is_null() {
            start_time = json!(crate::vocab::object::now());
        }
        let started = parse_time(&start_time).unwrap_or(now);
        if let Some(ads) = spec["activeDeadlineSeconds"].as_i64() {
            let deadline = started + chrono::Duration::seconds(ads);
            if now >= deadline {
                fail_job = fail_job.or(Some(("DeadlineExceeded", "Job was active longer than specified deadline".into())));
            } else {
                next = Next::After((deadline - now).to_std().unwrap_or_default() + Duration::from_millis(100));
            }
        }
        if fail_job.is_none() && failed + restarts > backoff_limit {
            fail_job = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
        }
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if let Some((reason, message)) = &fail_job {
            delete_active = true;
            set_condition(&mut conditions, "FailureTarget", "True", reason, message);
            set_condition(&mut conditions, "Failed", "True", reason, message);
            ctl.events.about(&job, "Warning", reason, message);
            next = Next::After(Duration::ZERO);
        } else if complete {
            delete_active = true;
            set_condition(&mut conditions, "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods");
            set_condition(&mut conditions, "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods");
            completion_time = json!(crate::vocab::object::now());
            ctl.events.about(&job, "Normal", "Completed", "Job completed");
            next = Next::After(Duration::ZERO);
        } else {
            // How many more pods to run, and (Indexed) which indexes.
            let want_active = match completions {
                Some(c) if !indexed => parallelism.min(c - succeeded).max(0),
                Some(_) => parallelism,
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            let mut missing: Vec<Option<i64>> = Vec::new();
            if indexed {
                let running: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
                let room = (parallelism - active.len() as i64).max(0) as usize;
                missing = (0..completions.unwrap_or(0)).filter(|i| !completed_indexes.contains(i) && !running.contains(i)).take(room).map(Some).collect();
            } else if (active.len() as i64) < want_active {
                missing = vec![None; (want_active - active.len() as i64) as usize];
            } else if active.len() as i64 > want_active {
                // Parallelism lowered: stop the newest extra pods.
                let mut extra: Vec<&&Value> = active.iter().collect();
                extra.sort_by_key(|p| std::cmp::Reverse(p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string()));
                for p in extra.into_iter().take(active.len() - want_active as usize) {
                    super::delete_pod(client, p).await?;
                }
            }
            if !missing.is_empty() {
                // Failed pods are replaced after a back-off: 10 s doubling, at most 6 minutes.
                let wait = if failed > 0 {
                    let last = failed_pods.iter().filter_map(|p| last_finish(p)).max().unwrap_or(now);
                    let delay = chrono::Duration::seconds((10i64 << (failed - 1).min(6)).min(360));
                    (last + delay - now).to_std().ok()
                } else {
                    None
                };
                match wait {
                    Some(w) if w > Duration::ZERO => next = Next::After(w + Duration::from_millis(100)),
                    _ => create_pods(ctl, &job, &missing).await?,
                }
            }
        }
    }
    if delete_active {
        for p in &active {
            super::delete_pod(client, p).await?;
        }
    }
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let mut status = json!({
        "active": if delete_active { 0 } else { active.len() }, "ready": ready, "succeeded": succeeded, "failed": failed_pods.len(),
        "conditions": conditions, "startTime": start_time, "completionTime": completion_time,
        "uncountedTerminatedPods": {},
    });
    if indexed {
        status["completedIndexes"] = json!(format_indexes(&completed_indexes));
    }
    if let Some(m) = status.as_object_mut() {
        // Counters are omitted when zero (except `ready`), as upstream serializes them.
        m.retain(|k, v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) && (k == "ready" || *v != json!(0)));
    }
    write_status(client, target, &job, status).await?;
    Ok(next)
}

fn last_finish(p: &Value) -> Option<DateTime<Utc>> {
    p["status"]["containerStatuses"].as_array()?.iter().filter_map(|c| parse_time(&c["state"]["terminated"]["finishedAt"])).max()
}

async fn create_pods(ctl: &Ctl, job: &Value, indexes: &[Option<i64>]) -> Result<(), ApiError> {
    let ns = job["metadata"]["namespace"].as_str().unwrap_or("");
    let name = job["metadata"]["name"].as_str().unwrap_or("");
    for index in indexes {
        let mut pod = super::pod_from_template(job, &job["spec"]["template"], &format!("{name}-"));
        if let Some(i) = index {
            pod["metadata"]["generateName"] = json!(format!("{name}-{i}-"));
            pod["metadata"]["annotations"][INDEX] = json!(i.to_string());
            pod["metadata"]["labels"][INDEX] = json!(i.to_string());
            pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
            if job["spec"]["template"]["spec"]["subdomain"].is_null() {
                pod["spec"]["subdomain"] = json!(name);
            }
            for c in pod["spec"]["containers"].as_array_mut().into_iter().flatten() {
                let env = c["env"].as_array().cloned().unwrap_or_default();
                let mut env: Vec<Value> = env.into_iter().filter(|e| e["name"] != "JOB_COMPLETION_INDEX").collect();
                env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{INDEX}']")}}}));
                c["env"] = json!(env);
            }
        }
        let created = ctl.client.create(PODS.ns(ns), &pod).await;
        match created {
            Ok(p) => ctl.events.about(job, "Normal", "SuccessfulCreate", format!("Created pod: {}", p["metadata"]["name"].as_str().unwrap_or(""))),
            Err(e) => {
                ctl.events.about(job, "Warning", "FailedCreate", format!("Error creating: {}", e.message));
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_compressed_into_ranges() {
        let s: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&s), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn failure_policy_picks_the_first_matching_rule() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0, 42]}},
        ]}}});
        let pod = |code: i64| json!({"status": {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": code}}}]}});
        assert_eq!(failure_action(&job, &pod(42)), "Ignore");
        assert_eq!(failure_action(&job, &pod(3)), "FailJob");
        assert_eq!(failure_action(&json!({}), &pod(3)), "Count");
    }
}
