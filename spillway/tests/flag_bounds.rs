//! Intervals and latencies on the command line have bounds: a value that would overflow a
//! timer (or spin at zero) is refused at start with the flag named, before anything runs.

use std::process::Command;

#[test]
fn intervals_out_of_range_are_refused_naming_the_flag() {
    for args in [
        &["controller", "--reconcile-interval-seconds", "99999999999"][..],
        &["controller", "--reload-interval-seconds", "0"][..],
        &[
            "webhook",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--reload-interval-seconds",
            "3601",
        ][..],
        &[
            "vk-node",
            "--vk-provider",
            "mock",
            "--sync-interval-seconds",
            "0",
        ][..],
        &[
            "vk-node",
            "--vk-provider",
            "mock",
            "--mock-start-latency-ms",
            "18446744073709551615",
        ][..],
        &[
            "vk-node",
            "--vk-provider",
            "mock",
            "--mock-run-seconds",
            "90000",
        ][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(args)
            .output()
            .expect("spillway runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let flag = args.iter().rev().nth(1).unwrap();
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(stderr.contains("is not in"), "{args:?}: {stderr}");
    }
}
