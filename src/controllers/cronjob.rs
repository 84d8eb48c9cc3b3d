//! CronJobs: create a Job at each scheduled time (in `timeZone`, or the host's local time),
//! honouring `concurrencyPolicy`, `startingDeadlineSeconds`, `suspend` and the history limits.
//! After downtime, only the most recent missed time runs, and only within the deadline.

use crate::vocab::cron::Schedule;
use super::{Ctl, Next, Setup};
use crate::runtime::status::write_status;
use crate::runtime::Client;
use crate::vocab::object::{controlled_by, controller_ref, parse_time, split_key};
use crate::vocab::resource::builtin::{CRONJOBS, JOBS};
use crate::vocab::status::ApiError;
use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Value};
use std::time::Duration;

const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub fn start(ctl: Ctl, s: &mut Setup) {
    super::start_owner_controller(ctl, s, "cronjob", CRONJOBS.all(), JOBS.all(), "CronJob", 1, |c, key| async move { reconcile(&c, &key).await });
}

/// The wall clock a schedule is read in: the host's local time unless `timeZone` names one.
#[derive(Clone)]
enum Zone {
    Local,
    Named(crate::vocab::cron::Zone),
}

impl Zone {
    fn of(cj: &Value) -> Result<Zone, String> {
        match cj["spec"]["timeZone"].as_str() {
            None => Ok(Zone::Local),
            Some(tz) => crate::vocab::cron::Zone::load(tz).map(Zone::Named),
        }
    }
    fn wall(&self, t: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Zone::Local => t.with_timezone(&Local).naive_local(),
            Zone::Named(z) => z.wall(t.timestamp()).unwrap_or_else(|| t.naive_utc()),
        }
    }
    fn instant(&self, t: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Local => Local.from_local_datetime(&t).earliest().map(|t| t.with_timezone(&Utc)),
            Zone::Named(z) => z.instant(t).and_then(|s| DateTime::from_timestamp(s, 0)),
        }
    }
}

/// The scheduled times after `from` up to `now`: how many, and the latest.
fn missed(s: &Schedule, zone: &Zone, from: DateTime<Utc>, now: DateTime<Utc>) -> (usize, Option<DateTime<Utc>>) {
    let (mut count, mut latest) = (0, None);
    let mut t = zone.wall(from);
    while let Some(n) = s.next_after(t) {
        let Some(at) = zone.instant(n) else { t = n; continue };
        if at > now {
            break;
        }
        count += 1;
        latest = Some(at);
        t = n;
        if count == 101 {
            // Too many to walk one by one: jump close to now for the latest one.
            t = t.max(zone.wall(now - chrono::Duration::minutes(1)));
        }
    }
    (count, latest)
}

fn job_finished(j: &Value) -> Option<&'static str> {
    let conds = j["status"]["conditions"].as_array()?;
    if conds.iter().any(|c| c["type"] == "Complete" && c["status"] == "True") {
        Some("Complete")
    } else if conds.iter().any(|c| c["type"] == "Failed" && c["status"] == "True") {
        Some("Failed")
    } else {
        None
    }
}

async fn delete_job(client: &Client, ns: &str, j: &Value) -> Result<(), ApiError> {
    match client.delete(JOBS.named(ns, j["metadata"]["name"].as_str().unwrap_or("")), &json!({"propagationPolicy": "Background"})).await {
        Ok(_) | Err(ApiError { code: 404 | 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn reconcile(ctl: &Ctl, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = CRONJOBS.named(ns, name);
    let Some(cj) = super::load_live(client, target.clone(), "batch/v1", "CronJob").await? else { return Ok(Next::Idle) };
    let uid = cj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let listed = client.list(JOBS.ns(ns)).await?;
    let mut jobs: Vec<Value> = listed.iter().filter(|j| controlled_by(j, &uid) && j["metadata"]["deletionTimestamp"].is_null()).cloned().collect();
    jobs.sort_by_key(|j| j["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string());
    let spec = &cj["spec"];

    // History: keep the newest finished jobs within the limits.
    for (state, limit) in [("Complete", spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3)), ("Failed", spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1))] {
        let done: Vec<&Value> = jobs.iter().filter(|j| job_finished(j) == Some(state)).collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            delete_job(client, ns, j).await?;
        }
    }
    let mut active: Vec<&Value> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    let last_success = jobs.iter().filter(|j| job_finished(j) == Some("Complete")).filter_map(|j| j["status"]["completionTime"].as_str()).max().map(String::from);

    let now = Utc::now();
    let mut next = Next::Idle;
    let mut last_schedule = cj["status"]["lastScheduleTime"].clone();
    if spec["suspend"] != json!(true) {
        match (Schedule::parse(spec["schedule"].as_str().unwrap_or("")), Zone::of(&cj)) {
            (Err(e), _) | (_, Err(e)) => {
                ctl.events.about(&cj, "Warning", "UnparseableSchedule", format!("unparseable schedule: {e}"));
            }
            (Ok(sched), Ok(zone)) => {
                let created = parse_time(&cj["metadata"]["creationTimestamp"]).unwrap_or(now);
                let mut from = parse_time(&last_schedule).unwrap_or(created);
                let deadline = spec["startingDeadlineSeconds"].as_i64();
                if let Some(d) = deadline {
                    from = from.max(now - chrono::Duration::seconds(d));
                }
                let (count, latest) = missed(&sched, &zone, from, now);
                if count > 100 {
                    ctl.events.about(&cj, "Warning", "TooManyMissedTimes", format!("too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"));
                }
                if let Some(at) = latest {
                    let too_late = deadline.is_some_and(|d| at + chrono::Duration::seconds(d) < now);
                    let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
                    if too_late {
                        ctl.events.about(&cj, "Warning", "MissSchedule", format!("Missed scheduled time to start a job: {}", at.to_rfc3339()));
                    } else if policy == "Forbid" && !active.is_empty() {
                        // Skipped: the next schedule will try again.
                        tracing::debug!(cronjob = %key, "schedule skipped: a job is still active");
                    } else {
                        if policy == "Replace" {
                            for j in active.drain(..) {
                                delete_job(client, ns, j).await?;
                                ctl.events.about(&cj, "Normal", "SuccessfulDelete", format!("Deleted job {}", j["metadata"]["name"].as_str().unwrap_or("")));
                            }
                        }
                        let job = job_for(&cj, at);
                        match client.create(JOBS.ns(ns), &job).await {
                            Ok(j) => ctl.events.about(&cj, "Normal", "SuccessfulCreate", format!("Created job {}", j["metadata"]["name"].as_str().unwrap_or(""))),
                            Err(e) if e.code == 409 => {}
                            Err(e) => {
                                ctl.events.about(&cj, "Warning", "FailedCreate", format!("Error creating job: {}", e.message));
                                return Err(e);
                            }
                        }
                    }
                    last_schedule = json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                }
                if let Some(n) = sched.next_after(zone.wall(now)).and_then(|n| zone.instant(n)) {
                    next = Next::After((n - now).to_std().unwrap_or_default() + Duration::from_millis(200));
                }
            }
        }
    }
    // Active references: jobs still running (and the one just created shows on the next pass).
    let refs: Vec<Value> = jobs
        .iter()
        .filter(|j| job_finished(j).is_none())
        .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"], "namespace": ns, "uid": j["metadata"]["uid"], "resourceVersion": j["metadata"]["resourceVersion"]}))
        .collect();
    let mut status = serde_json::Map::new();
    if !refs.is_empty() {
        status.insert("active".into(), json!(refs));
    }
    if !last_schedule.is_null() {
        status.insert("lastScheduleTime".into(), last_schedule);
    }
    if let Some(t) = last_success {
        status.insert("lastSuccessfulTime".into(), json!(t));
    }
    write_status(client, target, &cj, Value::Object(status)).await?;
    Ok(next)
}

/// The Job for the run scheduled at `at`: named after the CronJob and the scheduled minute.
fn job_for(cj: &Value, at: DateTime<Utc>) -> Value {
    let name = cj["metadata"]["name"].as_str().unwrap_or("");
    let tmpl = &cj["spec"]["jobTemplate"];
    let mut meta = tmpl["metadata"].as_object().cloned().unwrap_or_default();
    meta.insert("name".into(), json!(format!("{name}-{}", at.timestamp() / 60)));
    meta.insert("namespace".into(), cj["metadata"]["namespace"].clone());
    meta.insert("ownerReferences".into(), json!([controller_ref(cj)]));
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    ann[SCHEDULED] = json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": tmpl["spec"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> Zone {
        Zone::Named(crate::vocab::cron::Zone::load("Etc/UTC").expect("tzdata"))
    }

    #[test]
    fn missed_times_count_and_latest() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 35, 0).unwrap();
        let (n, latest) = missed(&s, &utc(), from, now);
        assert_eq!(n, 3);
        assert_eq!(latest, Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 30, 0).unwrap()));
        let (n, latest) = missed(&s, &utc(), now, now);
        assert_eq!((n, latest), (0, None));
    }

    #[test]
    fn job_names_carry_the_scheduled_minute() {
        let cj = json!({"metadata": {"name": "tick", "namespace": "default", "uid": "u"}, "apiVersion": "batch/v1", "kind": "CronJob",
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {}}}}});
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 10, 30, 0).unwrap();
        let j = job_for(&cj, at);
        assert_eq!(j["metadata"]["name"], format!("tick-{}", at.timestamp() / 60));
        assert_eq!(j["metadata"]["labels"]["a"], "b");
        assert_eq!(j["metadata"]["annotations"][SCHEDULED], "2026-01-01T10:30:00Z");
        assert_eq!(j["metadata"]["ownerReferences"][0]["controller"], true);
    }
}
