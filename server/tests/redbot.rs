//! REDbot (the HTTP linter, https://redbot.org/) finds nothing to warn about.
//!
//! REDbot comes from the project's virtualenv (`<repo>/.venv`, or `$BYPASS_VENV`), which
//! `scripts/test` creates from `scripts/requirements.txt`. Without it this test FAILS.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn redbot_bin() -> PathBuf {
    let venv = match std::env::var_os("BYPASS_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".venv"),
    };
    let bin = venv.join("bin").join("redbot");
    assert!(
        bin.is_file(),
        "REDbot not found at {}: run scripts/test (it creates the venv from scripts/requirements.txt), \
         or point BYPASS_VENV at a virtualenv with redbot installed",
        bin.display()
    );
    bin
}

/// One REDbot note.
#[derive(Debug)]
struct Note {
    level: String,
    id: String,
    subject: String,
    summary: String,
}

/// Runs `redbot -o har URL`; returns every note and the HAR text.
fn redbot(url: &str) -> (Vec<Note>, String) {
    let bin = redbot_bin();
    let mut child = Command::new(&bin)
        .args(["-o", "har", url])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redbot {url} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redbot {url} failed ({:?}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let har: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("redbot printed no HAR ({e}):\n{stdout}"));
    let entries = har["log"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no HAR entries:\n{stdout}"));
    assert!(!entries.is_empty(), "no HAR entries:\n{stdout}");
    let mut notes = Vec::new();
    for e in entries {
        let msgs = e["_red_messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no _red_messages in {e}"));
        for m in msgs {
            let s = |k: &str| m[k].as_str().unwrap_or("").to_string();
            notes.push(Note {
                level: s("level"),
                id: s("note_id"),
                subject: s("subject"),
                summary: s("summary"),
            });
        }
    }
    (notes, stdout)
}

/// Status of the (first) response REDbot saw.
fn har_status(har: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(har).unwrap();
    v["log"]["entries"][0]["response"]["status"]
        .as_u64()
        .unwrap_or(0)
}

#[track_caller]
fn assert_clean(url: &str, expected_status: u64) {
    let (notes, har) = redbot(url);
    assert_eq!(
        har_status(&har),
        expected_status,
        "REDbot saw another status for {url}"
    );
    let bad: Vec<&Note> = notes
        .iter()
        .filter(|n| matches!(n.level.as_str(), "WARN" | "BAD"))
        .collect();
    if !bad.is_empty() {
        let mut msg = format!("REDbot found {} problem(s) with {url}:\n", bad.len());
        for n in &bad {
            msg.push_str(&format!(
                "  {} {} [{}]: {}\n",
                n.level, n.id, n.subject, n.summary
            ));
        }
        msg.push_str("all notes:\n");
        for n in &notes {
            msg.push_str(&format!("  {} {}: {}\n", n.level, n.id, n.summary));
        }
        panic!("{msg}");
    }
    assert!(
        !notes.is_empty(),
        "REDbot reported no notes at all for {url}: suspicious\n{har}"
    );
}

#[test]
fn redbot_finds_no_problem_with_a_hashed_static_file() {
    let fx = Fixture::new();
    let s = fx.server();
    assert_clean(&s.static_url(HASHED_CSS), 200);
}

#[test]
fn redbot_finds_no_problem_with_an_unhashed_static_file_with_siblings() {
    let fx = Fixture::new();
    let s = fx.server();
    assert_clean(&s.static_url(APP_CSS), 200);
    assert_clean(&s.static_url(SITE_JS), 200);
}

#[test]
fn redbot_finds_no_problem_with_a_media_pdf() {
    let fx = Fixture::new();
    let s = fx.server();
    assert_clean(&s.media_url(MEDIA_PDF), 200);
}

#[test]
fn redbot_finds_no_problem_with_a_404() {
    let fx = Fixture::new();
    let s = fx.server();
    assert_clean(&s.static_url("missing.css"), 404);
    assert_clean(&s.media_url("missing.pdf"), 404);
}
