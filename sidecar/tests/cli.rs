//! The binary's own interface: --help names every command and variable.
//! (Also makes `cargo test --workspace` build the binary for the end-to-end tests.)

use std::process::Command;

#[test]
fn help_lists_commands_and_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-sidecar"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "backup-now",
        "list",
        "verify",
        "restore",
        "LIFEBOAT_SCHEDULE",
        "LIFEBOAT_TARGETS",
        "_FILE",
        "Exit codes",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-sidecar"))
        .args(["restore", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--to <DIR>"));
}
