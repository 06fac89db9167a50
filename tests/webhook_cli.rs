//! `nuki-exporter webhook register|list|delete` against the Nuki Web API stand-in.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::nuki_api_stub::{NukiApiStub, Reply};
use common::{exporter_command, run};

const TOKEN: &str = "cli-token-4f9a";

fn webhook(stub: &NukiApiStub, token_file: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command: Command = exporter_command();
    command
        .env("NUKI_EXPORTER_API__TOKEN_FILE", token_file)
        .env("NUKI_EXPORTER_API__URL", &stub.url)
        .arg("webhook")
        .args(args);
    let ran = run(&mut command);
    (ran.ok, ran.stdout, ran.stderr)
}

/// The stand-in, a temporary directory and a token file in it.
async fn setup() -> (NukiApiStub, tempfile::TempDir, PathBuf) {
    let stub = NukiApiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    (stub, dir, token_file)
}

// Multi-threaded: the stand-in answers while a test thread waits for the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_writes_the_secret_0600_and_list_and_delete_see_it() {
    let (stub, dir, token_file) = setup().await;
    let secret_file = dir.path().join("nuki_webhook_secret");
    let secret_arg = secret_file.to_str().unwrap();

    let (ok, stdout, stderr) = webhook(
        &stub,
        &token_file,
        &[
            "register",
            "--url",
            "https://locks.example/webhook",
            "--secret-file",
            secret_arg,
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("registered webhook 1000"), "{stdout}");
    assert!(
        !stdout.contains("stub-secret"),
        "the secret is not printed: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        "stub-secret-1000\n"
    );
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let put = stub
        .received()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.target, "/api/decentralWebhook");
    assert_eq!(
        put.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "webhookUrl": "https://locks.example/webhook",
            "webhookFeatures": ["DEVICE_STATUS", "DEVICE_MASTERDATA", "DEVICE_LOGS"],
        })
    );

    let (ok, stdout, _) = webhook(
        &stub,
        &token_file,
        &[
            "register",
            "--url",
            "https://other.example/hook",
            "--feature",
            "DEVICE_LOGS",
            "--secret-file",
            secret_arg,
        ],
    );
    assert!(ok);
    assert!(stdout.contains("registered webhook 1001"), "{stdout}");
    let (ok, stdout, _) = webhook(&stub, &token_file, &["list"]);
    assert!(ok);
    assert_eq!(
        stdout,
        "1000\thttps://locks.example/webhook\tDEVICE_STATUS,DEVICE_MASTERDATA,DEVICE_LOGS\n1001\thttps://other.example/hook\tDEVICE_LOGS\n"
    );
    let (ok, _, stderr) = webhook(&stub, &token_file, &["delete", "1000"]);
    assert!(ok, "{stderr}");
    let (_, stdout, _) = webhook(&stub, &token_file, &["list"]);
    assert!(!stdout.contains("1000"), "{stdout}");
    let (ok, _, stderr) = webhook(&stub, &token_file, &["delete", "1000"]);
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_web_api_is_named_by_its_url() {
    let (_stub, _dir, token_file) = setup().await;
    let (_held, refused) = common::refused_address();
    let url = format!("http://{refused}");
    let ran = run(exporter_command()
        .env("NUKI_EXPORTER_API__TOKEN_FILE", &token_file)
        .env("NUKI_EXPORTER_API__URL", &url)
        .args(["webhook", "list"]));
    assert!(!ran.ok);
    assert!(
        ran.stderr
            .contains(&format!("cannot reach the Nuki Web API at {url}: ")),
        "{}",
        ran.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_leave_no_secret_file() {
    let (stub, dir, token_file) = setup().await;
    let secret_file = dir.path().join("secret");
    let secret_arg = secret_file.to_str().unwrap();

    let (ok, _, stderr) = webhook(
        &stub,
        &token_file,
        &[
            "register",
            "--url",
            "http://locks.example/webhook",
            "--secret-file",
            secret_arg,
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("https://"), "{stderr}");

    stub.route(
        "PUT",
        "/api/decentralWebhook",
        Reply::status(403, br#"{"detailMessage":"Forbidden"}"#.to_vec()),
    );
    let (ok, _, stderr) = webhook(
        &stub,
        &token_file,
        &[
            "register",
            "--url",
            "https://locks.example/webhook",
            "--secret-file",
            secret_arg,
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("403") && stderr.contains("Forbidden"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the token lacks the `webhook.decentral` scope"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN));
    assert!(!secret_file.exists());

    let (ok, _, stderr) = webhook(
        &stub,
        &token_file,
        &[
            "register",
            "--url",
            "https://x.example/",
            "--feature",
            "DEVICE_KEYS",
            "--secret-file",
            secret_arg,
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("DEVICE_STATUS"),
        "clap lists the features: {stderr}"
    );

    let ran = run(exporter_command().args(["webhook", "list"]));
    assert!(!ran.ok);
    assert!(ran.stderr.contains("api.token_file"), "{}", ran.stderr);
}
