//! `spillway pause`, what backfill placeholder pods run: it keeps running until it is
//! stopped, and a SIGTERM ends it cleanly (exit 0).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn pause_runs_until_sigterm_and_then_exits_cleanly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("pause")
        .stdout(Stdio::null())
        .spawn()
        .expect("spillway pause starts");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "spillway pause exited on its own"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "spillway pause ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
