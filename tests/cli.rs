//! The binary's manners: `--help`, `--version`, refused arguments, JSON logs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kafka-sse-gateway");

/// The binary with no KSG_* variable from the test's own environment.
fn gateway() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("KSG_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn help_version_and_unknown_arguments() {
    let help = gateway().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.starts_with("kafka-sse-gateway: "), "{text}");
    assert!(text.contains("KSG_") && text.contains("Usage:"), "{text}");

    let version = gateway().arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8(version.stdout).unwrap(),
        format!("kafka-sse-gateway {}\n", env!("CARGO_PKG_VERSION"))
    );

    for args in [&["--port", "80"][..], &["serve"], &["--help", "extra"]] {
        let out = gateway().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("unexpected argument"), "{err}");
        assert!(out.stdout.is_empty(), "nothing started for {args:?}");
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut child = gateway()
        .env("KSG_LOG_FORMAT", "json")
        .env("KSG_LISTEN", "127.0.0.1:0")
        .env("KSG_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // Bounded: the gateway logs a handful of lines as it starts.
    while seen.len() < 3 {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for line in &seen {
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        assert!(
            line.ends_with('}') && line.contains("\"level\":\""),
            "{line}"
        );
    }
    assert!(
        seen.iter().any(|l| l.contains("\"message\":\"DEMO MODE")),
        "{seen:?}"
    );
    // A bad value is refused before anything starts.
    let out = gateway().env("KSG_LOG_FORMAT", "yaml").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("KSG_LOG_FORMAT"));
}

/// The options jemalloc runs the binary with, as its statistics at exit print them.
#[cfg(feature = "jemalloc")]
#[test]
fn the_allocator_gives_freed_pages_back_after_a_second_from_its_background_thread() {
    let out = gateway()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000 ",
        "opt.muzzy_decay_ms: 0 ",
    ] {
        assert!(stats.contains(option), "{option:?} not in:\n{stats}");
    }
}
