//! Secret and token files on a mount that hangs (a network or CSI secret mount that stopped
//! answering). A FIFO without a writer blocks `open` the same way. The real binary runs with one
//! worker thread, as in a pod limited to one CPU: nothing that answers webhooks, scrapes or
//! probes may wait for such a file, the old secrets keep working, and a stuck read does not
//! start another thread on every SIGHUP.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::nuki_api_stub::{NukiApiStub, Reply, fleet};
use common::{Running, Scrape, exporter_command, fixture, run_ok};
use nuki_exporter::source::webhook::signature::{HEADER, sign};

/// Replaces `path` with a FIFO that nobody writes to: opening it for reading blocks.
fn hang(path: &Path) {
    std::fs::remove_file(path).unwrap();
    run_ok(Command::new("mkfifo").arg(path));
}

/// The mount answers again, and holds `fresh` from now on: the FIFO is opened for writing once
/// the stuck reader waits on it, a regular file with `fresh` takes its place, and the stuck read
/// gets `late` and its end.
fn release(path: &Path, late: &str, fresh: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fifo = loop {
        // Non-blocking: fails (ENXIO) until a reader has the FIFO open.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(fifo) => break fifo,
            Err(error) => {
                assert!(Instant::now() < deadline, "no reader on the FIFO: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let staged = path.with_extension("new");
    std::fs::write(&staged, fresh).unwrap();
    std::fs::rename(&staged, path).unwrap();
    fifo.write_all(late.as_bytes()).unwrap();
}

fn threads(running: &Running) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", running.pid()))
        .unwrap()
        .count()
}

fn exporter() -> Command {
    let mut command = exporter_command();
    command
        // One worker thread: a pod with a CPU limit of 1 gets no more.
        .env("TOKIO_WORKER_THREADS", "1")
        .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
        .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
        .env("NUKI_EXPORTER_LOG__FORMAT", "json");
    command
}

/// A client that gives up after the two seconds the exporter has to answer.
fn impatient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// `/metrics` and `/-/ready` answer 200 within two seconds each; returns the scrape.
async fn answers(client: &reqwest::Client, metrics: &str) -> Scrape {
    let ready = client
        .get(format!("http://{metrics}/-/ready"))
        .send()
        .await
        .expect("/-/ready answers within 2 s");
    assert_eq!(ready.status(), 200);
    let scrape = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("/metrics answers within 2 s");
    assert_eq!(scrape.status(), 200);
    Scrape(scrape.text().await.unwrap())
}

// Multi-threaded: the test's own requests must not wait for the thread that reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_that_hangs_on_sighup_freezes_nothing_and_the_old_secret_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "old-secret\n").unwrap();
    let mut running = Running::spawn(exporter().env(
        "NUKI_EXPORTER_WEBHOOK__SECRET_FILES",
        format!("[\"{}\"]", secret.display()),
    ));
    let webhook = format!("http://{}/webhook", running.address_of("webhook"));
    let metrics = running.address_of("metrics");
    let client = impatient();
    let body = fixture("device-status");
    let post = |secret: &str| {
        client
            .post(&webhook)
            .header(HEADER, sign(secret.as_bytes(), &body))
            .body(body.clone())
            .send()
    };
    answers(&client, &metrics).await;
    let threads_before = threads(&running);

    hang(&secret);
    running.signal(libc::SIGHUP);
    // While the reload waits for the file: scrapes, probes and webhooks with the old secret.
    answers(&client, &metrics).await;
    let accepted = post("old-secret")
        .await
        .expect("a webhook answered within 2 s");
    assert_eq!(accepted.status(), 204);
    let failed = running.wait_for("reload failed");
    assert!(failed.contains(&*secret.to_string_lossy()), "{failed}");
    assert!(failed.contains("not read within"), "{failed}");
    let scrape = answers(&client, &metrics).await;
    assert_eq!(
        scrape.value("nuki_exporter_config_last_reload_successful", &[]),
        Some(0.0)
    );

    // Later SIGHUPs are answered at once, and start no thread while the read is stuck.
    for _ in 0..5 {
        running.signal(libc::SIGHUP);
        let refused = running.wait_for("reload failed");
        assert!(refused.contains("still"), "{refused}");
    }
    assert!(
        threads(&running) <= threads_before + 1,
        "{} threads before, {} after six SIGHUPs",
        threads_before,
        threads(&running)
    );
    let scrape = answers(&client, &metrics).await;
    assert_eq!(
        scrape.value(
            "nuki_exporter_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(6.0)
    );
    assert_eq!(post("old-secret").await.unwrap().status(), 204);

    // The mount answers again: the late content is dropped, the next SIGHUP reads afresh.
    release(&secret, "late-secret\n", "new-secret\n");
    running.wait_for("discarded");
    running.signal(libc::SIGHUP);
    running.wait_for("reloaded the secret and token files");
    assert_eq!(post("new-secret").await.unwrap().status(), 204);
    assert_eq!(post("old-secret").await.unwrap().status(), 401);
    assert_eq!(post("late-secret").await.unwrap().status(), 401);
    let (clean, lines) = running.terminate();
    assert!(clean, "{}", lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_that_hangs_when_a_401_rereads_it_freezes_nothing() {
    let stub = NukiApiStub::start().await;
    stub.route("GET", "/smartlock", Reply::json(fleet(1, 2, &[])));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-1\n").unwrap();
    let mut running = Running::spawn(
        exporter()
            .env("NUKI_EXPORTER_API__TOKEN_FILE", &token)
            .env("NUKI_EXPORTER_API__URL", &stub.url)
            .env("NUKI_EXPORTER_API__ALLOW_INSECURE_HTTP", "true")
            .env("NUKI_EXPORTER_API__POLL_INTERVAL", "100ms"),
    );
    let metrics = running.address_of("metrics");
    let client = impatient();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answers(&client, &metrics)
        .await
        .value("nuki_exporter_api_up", &[])
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the first poll never succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let threads_before = threads(&running);

    // The token is revoked (401) and its file hangs when the exporter reads it again.
    hang(&token);
    stub.accept_only("token-2");
    let polls_before = stub.count("/smartlock");
    answers(&client, &metrics).await;
    let failed = running.wait_for("not read within");
    assert!(failed.contains("api.token_file"), "{failed}");
    answers(&client, &metrics).await;
    // Polling goes on (each 401 fails at once while the read is stuck), on no new thread.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stub.count("/smartlock") < polls_before + 3 {
        assert!(Instant::now() < deadline, "polling stopped");
        answers(&client, &metrics).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        threads(&running) <= threads_before + 1,
        "{threads_before} threads before, {} after",
        threads(&running)
    );

    // The mount answers again with the new token: polling recovers.
    release(&token, "stale\n", "token-2\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = answers(&client, &metrics).await;
        if scrape.value("nuki_exporter_api_up", &[]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "polling never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (clean, lines) = running.terminate();
    assert!(clean, "{}", lines.join("\n"));
}
