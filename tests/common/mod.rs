//! Shared by the HTTP and end-to-end tests, one file per thing a test starts: an exporter in
//! the test process (`exporter`), the exporter binary (`exporter_binary`), real Prometheus and
//! Alertmanager servers (`prometheus`, `alertmanager`, on `daemon`), and stand-ins for the
//! services CI cannot reach (`nuki_api_stub`, `bridge_stub`, `kube_api_stub`). Here: fixtures,
//! the test configuration and tool lookup.
#![allow(dead_code)] // each test crate uses a different part of this module

#[path = "exposition.rs"]
mod exposition;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod alertmanager;
pub mod bridge_stub;
pub mod browser;
pub mod daemon;
pub mod exporter;
pub mod exporter_binary;
pub mod kube_api_stub;
pub mod nuki_api_stub;
#[path = "process.rs"]
pub mod process;
pub mod prometheus;

pub use exposition::parse_sample;
use nuki_exporter::Config;
pub use process::ChildGuard;

// What each part starts, under one name for the test files (each uses a different part).
#[allow(unused_imports)]
pub use alertmanager::Alertmanager;
#[allow(unused_imports)]
pub use daemon::Daemon;
#[allow(unused_imports)]
pub use exporter::{Scrape, TestExporter, scrape_address};
#[allow(unused_imports)]
pub use exporter_binary::*;
#[allow(unused_imports)]
pub use prometheus::Prometheus;

pub const SECRET: &str = "test-secret";

/// A webhook fixture from `tests/fixtures/webhooks/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Every fixture's name, sorted.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Separate loopback listeners for webhooks and metrics, one secret, quick shutdown.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.webhook.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.2:0".parse().unwrap();
    config.webhook.secrets = vec![SECRET.into()];
    config.server.shutdown_grace_period = std::time::Duration::from_secs(5);
    config
}

/// The path of an external tool, or a failing test that names the Debian package to install
/// (scripts/test.sh installs every one of them).
pub fn tool(tool: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: install the Debian package `{debian_package}` \
             (apt-get install --no-install-recommends {debian_package}), or run scripts/test.sh"
        )
    })
}

/// A loopback address that refuses connections: a bound socket that never listens, which keeps
/// the port from being given to anyone else while the guard lives.
pub fn refused_address() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}
