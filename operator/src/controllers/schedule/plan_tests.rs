//! The Schedule plan, case by case.

use super::*;
use crate::controllers::schedule::status;
use crate::crd::{ScheduleSpec, ScheduleStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// 2026-01-05T00:00:00Z, a Monday.
const T0: i64 = 1_767_571_200;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).unwrap()
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn schedule(extra: Value) -> Schedule {
    let mut spec = json!({"schedule": "@every 10s", "jobTemplate": {"spec": {"poolRef": "p", "payload": {}}}});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let spec: ScheduleSpec = serde_json::from_value(spec).unwrap();
    let mut s = Schedule::new("nightly", spec);
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some("uid-s".into());
    s.metadata.generation = Some(1);
    s.metadata.creation_timestamp = Some(Time(at(0)));
    s
}

fn with_last(mut s: Schedule, last: i64) -> Schedule {
    s.status = Some(ScheduleStatus { last_schedule_time: Some(Time(at(last))), ..ScheduleStatus::default() });
    s
}

fn run(slot: i64, state: RunState) -> Run {
    Run { name: run_name("nightly", at(slot)), slot: Some(at(slot)), state, finished_at: None, kind: "Job", uid: None }
}

fn secs(slots: &[Timestamp]) -> Vec<i64> {
    slots.iter().map(|t| t.as_second() - T0).collect()
}

#[test]
fn schedules_parse_or_name_the_problem() {
    let cases: &[(&str, Option<&str>, Result<(), &str>)] = &[
        ("*/5 * * * *", None, Ok(())),
        ("30 2 * * MON-FRI", Some("Europe/Berlin"), Ok(())),
        ("0 0 1 JAN *", None, Ok(())),
        ("@hourly", None, Ok(())),
        ("@daily", Some("America/New_York"), Ok(())),
        ("@midnight", None, Ok(())),
        ("@weekly", None, Ok(())),
        ("@monthly", None, Ok(())),
        ("@yearly", None, Ok(())),
        ("@annually", None, Ok(())),
        ("@every 1s", None, Ok(())),
        ("@every 1h30m", None, Ok(())),
        ("@every 90s", Some("Not/AZone"), Ok(())),
        ("61 * * * *", None, Err("InvalidSchedule")),
        ("* * * *", None, Err("InvalidSchedule")),
        ("0 * * * * *", None, Err("InvalidSchedule")),
        ("0 0 * * * 2026", None, Err("InvalidSchedule")),
        ("@fortnightly", None, Err("InvalidSchedule")),
        ("@every 500ms", None, Err("InvalidSchedule")),
        ("@every 0s", None, Err("InvalidSchedule")),
        ("@every 1.5s", None, Err("InvalidSchedule")),
        ("@every soon", None, Err("InvalidSchedule")),
        ("@every", None, Err("InvalidSchedule")),
        ("0 3 * * *", Some("Mars/Olympus_Mons"), Err("UnknownTimeZone")),
    ];
    for (expr, zone, want) in cases {
        let got = cadence(expr, *zone).map(|_| ()).map_err(|e| e.reason());
        assert_eq!(got, *want, "{expr:?} in {zone:?}: {:?}", cadence(expr, *zone).err());
    }
    let err = cadence("0 3 * * *", Some("Mars/Olympus_Mons")).unwrap_err().to_string();
    assert!(err.contains("Mars/Olympus_Mons"), "the message names the zone: {err}");
    let err = cadence("@every 500ms", None).unwrap_err().to_string();
    assert!(err.contains("at least 1s") && err.contains("500ms"), "{err}");
}

#[test]
fn next_slots_in_utc_and_in_a_time_zone() {
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("*/15 * * * *", None, "2026-03-01T10:07:00Z", "2026-03-01T10:15:00Z"),
        ("*/15 * * * *", None, "2026-03-01T10:15:00Z", "2026-03-01T10:30:00Z"),
        ("@hourly", None, "2026-03-01T10:00:01Z", "2026-03-01T11:00:00Z"),
        ("@daily", None, "2026-03-01T10:00:00Z", "2026-03-02T00:00:00Z"),
        ("@weekly", None, "2026-01-05T00:00:00Z", "2026-01-11T00:00:00Z"),
        ("@monthly", None, "2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z"),
        ("@yearly", None, "2026-06-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("0 2 * * *", Some("Europe/Berlin"), "2026-01-10T12:00:00Z", "2026-01-11T01:00:00Z"),
        ("0 2 * * *", Some("Europe/Berlin"), "2026-07-10T12:00:00Z", "2026-07-11T00:00:00Z"),
        ("0 9 * * MON-FRI", Some("America/New_York"), "2026-01-09T15:00:00Z", "2026-01-12T14:00:00Z"),
        // Day of month or day of week, as in cron: the 13th, or any Friday.
        ("0 0 13 * FRI", None, "2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z"),
        ("0 0 13 * FRI", None, "2026-02-13T00:00:00Z", "2026-02-20T00:00:00Z"),
        ("@every 10s", Some("Asia/Tokyo"), "2026-01-05T00:00:05Z", "2026-01-05T00:00:10Z"),
        ("@every 10s", None, "2026-01-05T00:00:10Z", "2026-01-05T00:00:20Z"),
        ("@every 1h", None, "2026-01-05T00:59:59Z", "2026-01-05T01:00:00Z"),
    ];
    for (expr, zone, after, want) in cases {
        let c = cadence(expr, *zone).unwrap();
        assert_eq!(c.next_after(ts(after)), Some(ts(want)), "{expr:?} in {zone:?} after {after}");
    }
}

#[test]
fn daylight_saving_gaps_and_repeats_run_each_slot_once() {
    // Berlin springs forward at 02:00 local (01:00 UTC) on 2026-03-29: 02:30 does not exist
    // that day; it runs once, at the first instant after the gap.
    let berlin = cadence("30 2 * * *", Some("Europe/Berlin")).unwrap();
    let slots = berlin.slots(ts("2026-03-28T00:00:00Z"), ts("2026-03-31T00:00:00Z"), 10);
    assert_eq!(slots.total, 3, "{:?}", slots.latest);
    assert_eq!(slots.latest[0], ts("2026-03-28T01:30:00Z"));
    assert!(slots.latest[1] >= ts("2026-03-29T01:00:00Z") && slots.latest[1] <= ts("2026-03-29T01:30:00Z"), "{:?}", slots.latest);
    assert_eq!(slots.latest[2], ts("2026-03-30T00:30:00Z"));
    // Berlin falls back at 03:00 local (01:00 UTC) on 2026-10-25: 02:30 happens twice; it runs once.
    let slots = berlin.slots(ts("2026-10-24T00:00:00Z"), ts("2026-10-27T00:00:00Z"), 10);
    assert_eq!(secs(&slots.latest).len(), 3, "{:?}", slots.latest);
    assert_eq!(slots.latest[0], ts("2026-10-24T00:30:00Z"));
    assert_eq!(slots.latest[1], ts("2026-10-25T00:30:00Z"), "the first of the repeated 02:30");
    assert_eq!(slots.latest[2], ts("2026-10-26T01:30:00Z"));
    // An hourly schedule in that zone fires every real hour across the repeat: no slot twice.
    let hourly = cadence("0 * * * *", Some("Europe/Berlin")).unwrap();
    let slots = hourly.slots(ts("2026-10-24T23:30:00Z"), ts("2026-10-25T02:30:00Z"), 10);
    let mut unique = slots.latest.clone();
    unique.dedup();
    assert_eq!(unique, slots.latest, "no slot twice: {:?}", slots.latest);
}

#[test]
fn slots_count_all_and_keep_the_latest() {
    let every = cadence("@every 10s", None).unwrap();
    let cases: &[(i64, i64, usize, u64, &[i64])] = &[
        (0, 0, 5, 0, &[]),
        (0, 9, 5, 0, &[]),
        (0, 10, 5, 1, &[10]),
        (10, 10, 5, 0, &[]),
        (5, 35, 5, 3, &[10, 20, 30]),
        (0, 100, 3, 10, &[80, 90, 100]),
        (0, 1_000_000, 1, 100_000, &[1_000_000]),
    ];
    for (after, until, keep, total, latest) in cases {
        let s = every.slots(at(*after), at(*until), *keep);
        assert_eq!((s.total, secs(&s.latest)), (*total, latest.to_vec()), "({after}, {until}] keep {keep}");
    }
    let minutely = cadence("* * * * *", None).unwrap();
    let s = minutely.slots(at(0), at(600), 2);
    assert_eq!((s.total, secs(&s.latest)), (10, vec![540, 600]));
    // Months behind: the walk stops at 100,000 slots; the latest due slot is still the last one.
    let s = minutely.slots(at(0), at(200_000 * 60), 2);
    assert_eq!((s.total, secs(&s.latest)), (100_001, vec![100_000 * 60, 200_000 * 60]));
}

#[test]
fn names_derive_from_the_slot_and_fit_in_63() {
    assert_eq!(run_name("nightly", at(0)), format!("nightly-{T0}"));
    let long = "a-schedule-with-a-very-long-name-that-goes-on-and-on-and-on";
    let name = run_name(long, at(0));
    assert!(name.len() <= 63, "{name} is {} long", name.len());
    assert_eq!(name, run_name(long, at(0)), "stable");
    assert_ne!(name_prefix(long), name_prefix(&format!("{long}-2")), "different long names stay different");
    assert!(name.starts_with("a-schedule-with-a-very-long-name-that-goes-"), "{name}");
    let exactly = "x".repeat(52);
    assert_eq!(name_prefix(&exactly), exactly);
    assert_eq!(name_prefix(&"y".repeat(53)).len(), 52);
    assert_eq!(name_prefix(&"z".repeat(253)).len(), 52);
}

#[test]
fn a_new_schedule_fires_the_slots_after_its_creation_only() {
    let s = schedule(json!({}));
    let p = plan(&s, &[], at(5), at(0));
    assert!(p.create.is_empty() && p.missed.is_empty(), "{p:?}");
    assert_eq!(p.next_schedule_time, Some(at(10)));
    assert_eq!(p.wake_in, Some(Duration::from_millis(5005)));
    let p = plan(&s, &[], at(10), at(0));
    assert_eq!(secs(&p.create), vec![10]);
    assert_eq!(p.last_schedule_time, Some(at(10)));
    assert_eq!(p.next_schedule_time, Some(at(20)));
}

#[test]
fn a_slot_fires_once_whatever_the_status_says() {
    // The run of slot 10 exists but the status write was lost: slot 10 is not fired again.
    let s = schedule(json!({}));
    let p = plan(&s, &[run(10, RunState::Active)], at(15), at(0));
    assert!(p.create.is_empty(), "{p:?}");
    assert_eq!(p.last_schedule_time, Some(at(10)));
    // Recorded in the status, the run since deleted as history: not fired again either.
    let p = plan(&with_last(schedule(json!({})), 10), &[], at(19), at(0));
    assert!(p.create.is_empty(), "{p:?}");
    // Two operators deciding at once decide the same name.
    let a = plan(&s, &[], at(10), at(0));
    let b = plan(&s, &[], at(10), at(3));
    assert_eq!(a.create, b.create);
    assert_eq!(run_name("nightly", a.create[0]), format!("nightly-{}", T0 + 10));
}

#[test]
fn catch_up_after_three_missed_slots_per_policy() {
    // Last slot dealt with: 10. Operator down until 45 (it leads since 44): slots 20, 30, 40.
    let cases: &[(Value, &[i64], &[(Miss, u64)])] = &[
        (json!({}), &[40], &[(Miss::CatchupLatest, 2)]),
        (json!({"catchup": {"policy": "Latest"}}), &[40], &[(Miss::CatchupLatest, 2)]),
        (json!({"catchup": {"policy": "All"}}), &[20, 30, 40], &[]),
        (json!({"catchup": {"policy": "All", "maxRuns": 2}}), &[30, 40], &[(Miss::CatchupMaxRuns, 1)]),
        (json!({"catchup": {"policy": "None"}}), &[], &[(Miss::CatchupNone, 3)]),
        (json!({"startingDeadlineSeconds": 10, "catchup": {"policy": "All"}}), &[40], &[(Miss::StartingDeadline, 2)]),
        (json!({"startingDeadlineSeconds": 2}), &[], &[(Miss::StartingDeadline, 1), (Miss::CatchupLatest, 2)]),
        (json!({"suspend": true}), &[], &[(Miss::Suspended, 3)]),
    ];
    for (extra, fired, missed) in cases {
        let s = with_last(schedule(extra.clone()), 10);
        let p = plan(&s, &[], at(45), at(44));
        let got: Vec<(Miss, u64)> = p.missed.iter().map(|(m, n, _)| (*m, *n)).collect();
        let mut want = missed.to_vec();
        want.sort();
        assert_eq!((secs(&p.create), got), (fired.to_vec(), want), "{extra}");
        assert_eq!(p.last_schedule_time, Some(at(40)), "{extra}: every slot up to 40 is dealt with");
    }
}

#[test]
fn catch_up_none_fires_slots_that_come_while_leading() {
    let s = with_last(schedule(json!({"catchup": {"policy": "None"}})), 10);
    // Leading since 15: slot 20 came while leading.
    let p = plan(&s, &[], at(21), at(15));
    assert_eq!(secs(&p.create), vec![20]);
    assert!(p.missed.is_empty());
    // Leading since 25: slot 20 passed with no operator.
    let p = plan(&s, &[], at(26), at(25));
    assert!(p.create.is_empty());
    assert_eq!(p.missed.iter().map(|(m, n, t)| (*m, *n, *t)).collect::<Vec<_>>(), vec![(Miss::CatchupNone, 1, at(20))]);
}

#[test]
fn concurrency_policies_decide_on_active_runs() {
    let active = [run(10, RunState::Active)];
    let finished = [run(10, RunState::Succeeded)];
    let cases: &[(&str, &[Run], &[i64], &[(i64, Skip)], &[i64])] = &[
        ("Allow", &active, &[20], &[], &[]),
        ("Forbid", &active, &[], &[(20, Skip::Forbid)], &[]),
        ("Forbid", &finished, &[20], &[], &[]),
        ("Forbid", &[], &[20], &[], &[]),
        ("Replace", &active, &[20], &[], &[10]),
        ("Replace", &finished, &[20], &[], &[]),
    ];
    for (policy, runs, create, skipped, cancel) in cases {
        let s = with_last(schedule(json!({"concurrencyPolicy": policy})), 10);
        let p = plan(&s, runs, at(20), at(0));
        let skipped_got: Vec<(i64, Skip)> = p.skipped.iter().map(|(t, w)| (t.as_second() - T0, *w)).collect();
        let cancel_want: Vec<String> = cancel.iter().map(|c| run_name("nightly", at(*c))).collect();
        assert_eq!((secs(&p.create), skipped_got, p.cancel.clone()), (create.to_vec(), skipped.to_vec(), cancel_want), "{policy}");
        assert_eq!(p.last_schedule_time, Some(at(20)), "{policy}: a skipped slot is dealt with too");
    }
}

#[test]
fn a_catch_up_under_forbid_or_replace_starts_one_run() {
    let forbid = with_last(schedule(json!({"concurrencyPolicy": "Forbid", "catchup": {"policy": "All"}})), 10);
    let p = plan(&forbid, &[], at(40), at(40));
    assert_eq!(secs(&p.create), vec![20]);
    assert_eq!(p.skipped, vec![(at(30), Skip::Forbid), (at(40), Skip::Forbid)]);
    let replace = with_last(schedule(json!({"concurrencyPolicy": "Replace", "catchup": {"policy": "All"}})), 10);
    let p = plan(&replace, &[run(10, RunState::Active)], at(40), at(40));
    assert_eq!(secs(&p.create), vec![40]);
    assert_eq!(p.skipped, vec![(at(20), Skip::Superseded), (at(30), Skip::Superseded)]);
    assert_eq!(p.cancel, vec![run_name("nightly", at(10))]);
}

#[test]
fn suspended_schedules_fire_nothing_and_count_each_slot_as_missed() {
    let s = with_last(schedule(json!({"suspend": true})), 10);
    let p = plan(&s, &[], at(15), at(0));
    assert!(p.create.is_empty() && p.missed.is_empty());
    assert_eq!(p.next_schedule_time, None, "no next slot while suspended");
    assert_eq!(p.wake_in, Some(Duration::from_millis(5005)), "it wakes at the slot to count it");
    let p = plan(&s, &[], at(20), at(0));
    assert!(p.create.is_empty());
    assert_eq!(p.missed, vec![(Miss::Suspended, 1, at(20))]);
    assert_eq!(p.last_schedule_time, Some(at(20)), "so resuming later never runs it");
}

#[test]
fn history_keeps_the_newest_finished_runs_per_outcome() {
    let runs = [
        run(10, RunState::Succeeded),
        run(20, RunState::Failed),
        run(30, RunState::Succeeded),
        run(40, RunState::Failed),
        run(50, RunState::Succeeded),
        run(60, RunState::Succeeded),
        run(70, RunState::Active),
    ];
    let names = |slots: &[i64]| slots.iter().map(|s| run_name("nightly", at(*s))).collect::<Vec<_>>();
    assert_eq!(history(&runs, 3, 1), names(&[10, 20]));
    assert_eq!(history(&runs, 0, 0), names(&[10, 30, 50, 60, 20, 40]));
    assert_eq!(history(&runs, 10, 10), Vec::<String>::new());
    let s = with_last(schedule(json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0})), 70);
    assert_eq!(plan(&s, &runs, at(75), at(0)).delete_history, names(&[10, 30, 50, 20, 40]));
    assert_eq!(plan(&with_last(schedule(json!({})), 70), &runs, at(75), at(0)).delete_history, names(&[10, 20]), "defaults 3 and 1");
}

#[test]
fn runs_are_owned_named_labelled_and_annotated() {
    let s = schedule(json!({"jobTemplate": {"metadata": {"labels": {"team": "a"}}, "spec": {"poolRef": "p", "completions": 2}}}));
    let NewRun::Job(job) = new_run(&s, at(10)).unwrap() else { panic!("a Job") };
    assert_eq!(job.metadata.name.as_deref(), Some(format!("nightly-{}", T0 + 10).as_str()));
    assert_eq!(job.metadata.namespace.as_deref(), Some("ns"));
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!((labels["team"].as_str(), labels[SCHEDULE_LABEL].as_str()), ("a", "nightly"));
    let slot = &job.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIME_ANNOTATION];
    assert_eq!(slot.parse::<Timestamp>().unwrap(), at(10));
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Schedule", "uid-s", Some(true)));
    assert_eq!(job.spec.tasks.completions, Some(2));
    assert_eq!(Run::from_job(&job).slot, Some(at(10)), "a run's slot is read back from it");

    let s = schedule(json!({"jobTemplate": null, "workflowTemplate": {"spec": {"steps": [{"name": "a", "job": {"poolRef": "p"}}]}}}));
    let NewRun::Workflow(wf) = new_run(&s, at(20)).unwrap() else { panic!("a Workflow") };
    assert_eq!(wf.metadata.name.as_deref(), Some(format!("nightly-{}", T0 + 20).as_str()));
    assert_eq!(Run::from_workflow(&wf).state, RunState::Active);
}

#[test]
fn status_says_ready_active_next_or_the_problem() {
    let s = schedule(json!({"schedule": "0 3 * * *", "timeZone": "Nowhere/Land"}));
    let p = plan(&s, &[], at(5), at(0));
    let st = status::desired(&s, &p, &[], &Time(at(5)));
    let ready = &st.conditions[0];
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "UnknownTimeZone"));
    assert!(ready.message.contains("Nowhere/Land"), "{}", ready.message);
    assert_eq!(st.next_schedule_time, None);

    let s = with_last(schedule(json!({})), 10);
    let mut done = run(10, RunState::Succeeded);
    done.finished_at = Some(at(14));
    let runs = [done, run(20, RunState::Active)];
    let p = plan(&s, &runs, at(25), at(0));
    let st = status::desired(&s, &p, &runs, &Time(at(25)));
    assert_eq!(st.conditions[0].reason, "Scheduled");
    assert_eq!(st.last_schedule_time, Some(Time(at(20))));
    assert_eq!(st.last_successful_time, Some(Time(at(14))));
    assert_eq!(st.next_schedule_time, Some(Time(at(30))));
    assert_eq!(st.active.len(), 1);
    assert_eq!(st.active[0].name.as_deref(), Some(run_name("nightly", at(20)).as_str()));
    assert_eq!(st.observed_generation, Some(1));
}
