//! Every benchmark runs, small, in CI so that none rots (issue #17): each exits 0 and prints its
//! figures beside their targets. No figure is asserted — these machines are shared and noisy; the
//! figures in README come from full runs.

use std::process::Command;

use warren_e2e::Env;

/// Runs `warren-bench <args>`: its stdout, failing loudly on a non-zero exit.
fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-bench")).args(args).output().expect("warren-bench runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "warren-bench {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

/// The benchmarks that run Warren start worker processes from this host's binaries.
fn on_this_host(what: &str) -> bool {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: the {what} benchmark runs its workers from this host's binaries.");
        return false;
    }
    true
}

#[test]
fn the_core_benchmark_runs_and_prints_its_ratio() {
    if !on_this_host("core") {
        return;
    }
    let out = bench(&["core", "--tasks", "500", "--rounds", "1"]);
    assert!(
        out.contains("raw AMQP  (publish+confirm, consume+ack)") && out.contains("ratio Warren/raw:") && out.contains("(target >= "),
        "{out}"
    );
    assert!(out.contains("CPU ms per 1,000 tasks"), "{out}");
}

#[test]
fn the_latency_benchmark_runs_and_prints_its_percentiles() {
    if !on_this_host("latency") {
        return;
    }
    let out = bench(&["latency", "--jobs", "5"]);
    for line in ["raw AMQP (publish+confirm -> delivered)", "Warren apply -> handler start", "Warren apply -> status Succeeded (watch)"] {
        assert!(out.lines().any(|l| l.contains(line) && l.contains("p50") && l.contains("p99")), "{line}: {out}");
    }
    assert!(out.contains("(target p99 < 250 ms"), "{out}");
}

#[test]
fn the_big_job_benchmark_runs_and_prints_its_figures() {
    if !on_this_host("big") {
        return;
    }
    let out = bench(&["big", "--tasks", "500"]);
    for figure in [
        "ratio to raw",
        "(target >= 0.90)",
        "apply -> first task running",
        "operator peak memory",
        "Job object at the end",
        "Job status writes",
    ] {
        assert!(out.contains(figure), "{figure}: {out}");
    }
}

#[test]
fn the_workflow_benchmark_runs() {
    if !on_this_host("workflows") {
        return;
    }
    let out = bench(&["workflows", "--count", "3", "--steps", "3"]);
    assert!(out.contains("target"), "{out}");
}

#[test]
fn the_autoscaling_simulation_runs_every_trace() {
    let out = bench(&["scale-sim"]);
    for trace in ["burst", "ramp", "daily-wave", "trickle"] {
        assert!(out.lines().any(|l| l.starts_with(trace) && l.contains("ratios")), "{trace}: {out}");
    }
    assert!(out.lines().any(|l| l.starts_with("overall:")), "{out}");
}

#[test]
fn the_fairness_benchmark_runs() {
    if !on_this_host("fairness") {
        return;
    }
    let out = bench(&["fairness", "--a-tasks", "300", "--b-tasks", "20", "--sleep-ms", "1"]);
    assert!(out.contains("Jain's index") && out.contains("fair / FIFO"), "{out}");
}

#[test]
fn the_scale_benchmark_runs_and_prints_its_figures() {
    if !on_this_host("scale") {
        return;
    }
    let out = bench(&["scale", "--namespaces", "2", "--pools", "4", "--jobs", "20", "--idle-seconds", "2"]);
    for figure in [
        "operator peak memory (VmHWM)",
        "(target < 300 MiB",
        "Job creation -> enqueued, p50 / p99",
        "(target p99 < 2000 ms",
        "operator CPU with nothing changing",
        "API requests per second by verb",
    ] {
        assert!(out.contains(figure), "{figure}: {out}");
    }
    assert!(out.contains("20 Jobs created"), "every Job was timed: {out}");
}
