//! Texts a user reads in the exporter's log: values as written, not as Rust debug output.

mod common;

use common::{Running, exporter_command};

#[test]
fn the_relay_start_line_names_the_application_url_as_written() {
    let mut exporter = Running::spawn(
        exporter_command()
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.1:0")
            .env(
                "NUKI_EXPORTER_FORWARD__URL",
                "http://127.0.0.1:9/nuki/webhook",
            ),
    );
    let line = exporter.wait_for("relaying webhooks to the application");
    exporter.kill();
    assert!(
        line.ends_with("upstream=http://127.0.0.1:9/nuki/webhook"),
        "{line}"
    );
}
