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
        "Usage: lifeboat-restore",
        "LIFEBOAT_PATHS",
        "LIFEBOAT_TARGETS",
        "if-empty",
        "_FILE",
        "PG_MAJOR",
        "lifeboat.dev/{source,paths,restore,restore-failed-drills,postgres-wal,restore-target-time}",
        "Exit codes",
        "64",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    // The settings come from the one key table: every key the init
    // container reads is listed, and none that only the sidecar reads.
    let restore_keys: Vec<&str> = lifeboat::config::keys::restore_keys()
        .map(|k| k.env)
        .collect();
    assert!(restore_keys.len() >= 10, "{restore_keys:?}");
    for k in lifeboat::config::KEYS {
        let line = format!("{} ", k.env);
        let listed = text.lines().any(|l| l.trim_start().starts_with(&line));
        assert_eq!(
            listed,
            restore_keys.contains(&k.env),
            "{} in --help:\n{text}",
            k.env
        );
    }
}
