//! A real headless browser (Debian's `chromium`) for the pages the exporter serves.
//!
//! Each load gets its own profile directory and runs under [`ChildGuard`], so a browser that
//! hangs is killed with its helper processes when the test ends.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ChildGuard, tool};

/// How long one page load may take: a hang, not a slow machine (it takes seconds).
const PAGE_DEADLINE: Duration = Duration::from_secs(120);

/// The DOM of `url` once the browser has loaded it (`--dump-dom`).
pub async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let dom = profile.path().join("dom.html");
    let log = profile.path().join("stderr.log");
    let mut command = Command::new(tool("chromium", "chromium"));
    command
        .args([
            "--headless",
            // Tests may run as root, where chromium refuses its sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut browser = ChildGuard::spawn(&mut command).expect("chromium starts");
    let status = browser.exited_within(PAGE_DEADLINE).await;
    assert!(
        status.success(),
        "chromium --dump-dom {url}: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::fs::read_to_string(&dom).unwrap()
}
