//! `nuki-exporter webhook register|list|delete` against the Nuki Web API stand-in.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
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
        .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
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
            "--replace",
        ],
    );
    assert!(ok);
    assert!(stdout.contains("registered webhook 1001"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        "stub-secret-1001\n"
    );
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
        .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn register(
    stub: &NukiApiStub,
    token_file: &Path,
    secret_file: &Path,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "register",
        "--url",
        "https://locks.example/webhook",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ];
    args.extend(extra);
    let (ok, stdout, stderr) = webhook(stub, token_file, &args);
    (ok, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_follows_no_symlink_and_replaces_a_file_only_when_told_and_nuki_accepted() {
    let (stub, dir, token_file) = setup().await;
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link");
    symlink(&target, &link).unwrap();
    let existing = dir.path().join("existing");
    std::fs::write(&existing, "old-secret\n").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
    let untouched = |path: &Path, content: &str, expected_mode: u32| {
        assert_eq!(std::fs::read_to_string(path).unwrap(), content);
        assert_eq!(mode(path), expected_mode);
    };

    // Refused before anything is registered, and nothing is touched.
    let (ok, output) = register(&stub, &token_file, &link, &[]);
    assert!(!ok);
    assert!(
        output.contains("symbolic link") && output.contains("--replace"),
        "{output}"
    );
    untouched(&target, "keep me\n", 0o644);
    let (ok, output) = register(&stub, &token_file, &existing, &[]);
    assert!(!ok);
    assert!(
        output.contains("already exists") && output.contains("--replace"),
        "{output}"
    );
    untouched(&existing, "old-secret\n", 0o640);
    assert!(
        stub.received().iter().all(|r| r.method != "PUT"),
        "nothing registered"
    );

    // --replace: the link itself is replaced, its target never written.
    let (ok, output) = register(&stub, &token_file, &link, &["--replace"]);
    assert!(ok, "{output}");
    untouched(&target, "keep me\n", 0o644);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    untouched(&link, "stub-secret-1000\n", 0o600);

    // --replace and Nuki refuses: the old secret stays as it was.
    stub.route(
        "PUT",
        "/api/decentralWebhook",
        Reply::status(403, br#"{"detailMessage":"Forbidden"}"#.to_vec()),
    );
    let (ok, output) = register(&stub, &token_file, &existing, &["--replace"]);
    assert!(!ok);
    assert!(output.contains("403"), "{output}");
    untouched(&existing, "old-secret\n", 0o640);

    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["existing", "link", "precious", "token"],
        "no temporary file left"
    );
}

/// Text from Nuki reaches the terminal escaped: no escape sequence, no line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nuki_text_reaches_the_terminal_escaped() {
    let (stub, _dir, token_file) = setup().await;
    let forged = "gone\n\u{1b}[2J\u{1b}[32mdeleted webhook 1 (all fine)";
    stub.route(
        "DELETE",
        "/api/decentralWebhook/7",
        Reply::status(
            404,
            serde_json::to_vec(&serde_json::json!({ "detailMessage": forged })).unwrap(),
        ),
    );
    let (ok, stdout, stderr) = webhook(&stub, &token_file, &["delete", "7"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(
        stderr.contains("404") && stderr.contains("\\n"),
        "{stderr:?}"
    );

    stub.route(
        "GET",
        "/api/decentralWebhook",
        Reply::json(
            serde_json::to_vec(&serde_json::json!([{
                "id": 5,
                "webhookUrl": "https://x.example/\u{1b}]0;owned\u{7}\n6\thttps://fake.example/",
                "webhookFeatures": ["DEVICE_STATUS\r"],
            }]))
            .unwrap(),
        ),
    );
    let (ok, stdout, stderr) = webhook(&stub, &token_file, &["list"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!stdout.contains(['\u{1b}', '\u{7}', '\r']), "{stdout:?}");
    assert_eq!(stdout.matches('\t').count(), 2, "{stdout:?}");
}
