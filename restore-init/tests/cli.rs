//! The binary's own interface: --help explains variables and exit codes.
//! (Also makes `cargo test --workspace` build the binary for the end-to-end tests.)

use std::process::Command;

#[test]
fn help_explains_variables_and_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-restore"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "LIFEBOAT_PATHS",
        "LIFEBOAT_TARGETS",
        "if-empty",
        "Exit codes",
        "64",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}
