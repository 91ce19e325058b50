//! The e2e side channel itself: lines a handler records through the probe reach the test in
//! order, and a gate holds a handler until the test opens it (what the other suites rely on).

use std::time::Duration;

use warren_e2e::{SideChannel, amqp_url};

/// Runs the probe with the environment a pod would get.
fn probe(side: &SideChannel, args: &[&str]) -> std::process::Command {
    let env = side.pod_env();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).and_then(|v| v["value"].as_str()).unwrap().to_string();
    let mut command = std::process::Command::new(var("WARREN_E2E_PROBE"));
    command.args(args);
    for name in ["WARREN_E2E_SIDE_URL", "WARREN_E2E_SIDE_PREFIX"] {
        command.env(name, var(name));
    }
    command
}

#[tokio::test]
async fn records_arrive_in_order_and_a_gate_holds_until_opened() -> anyhow::Result<()> {
    let side = SideChannel::new(&amqp_url(), &format!("e2e-side-{:08x}", rand::random::<u32>()));
    assert!(side.lines("runs").await?.is_empty(), "a channel nobody wrote to is empty");
    for i in 0..3 {
        let status = probe(&side, &["record", "runs", "task", &i.to_string(), "ran"]).status()?;
        assert!(status.success(), "record {i}: {status}");
    }
    assert_eq!(side.lines("runs").await?, ["task 0 ran", "task 1 ran", "task 2 ran"]);
    // Reading again keeps what was read, and adds what came since.
    assert!(probe(&side, &["record", "runs", "again"]).status()?.success());
    assert_eq!(side.wait_lines("runs", 4, Duration::from_secs(5)).await?.last().map(String::as_str), Some("again"));

    assert_eq!(probe(&side, &["is-open", "go"]).status()?.code(), Some(1), "a gate never opened is closed");
    assert_eq!(probe(&side, &["wait", "go", "0.2"]).status()?.code(), Some(1), "waiting on a closed gate times out");
    let mut waiting = probe(&side, &["wait", "go", "30"]).spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.try_wait()?.is_none(), "the handler waits while the gate is closed");
    side.open("go").await?;
    side.open("go").await?;
    assert!(waiting.wait()?.success(), "opening the gate lets it go on");
    assert_eq!(probe(&side, &["is-open", "go"]).status()?.code(), Some(0));
    side.close("go").await?;
    assert_eq!(probe(&side, &["is-open", "go"]).status()?.code(), Some(1), "closed again");

    let long = "x".repeat(warren_e2e::side_channel::MAX_LINE_BYTES + 1);
    assert_eq!(probe(&side, &["record", "runs", &long]).status()?.code(), Some(2), "a line over the limit is refused");
    side.delete().await?;
    Ok(())
}
