//! Hostile input against the real binary with default limits: a cardinality attack, 65 KB
//! lock names, clients that ask for `/metrics` and never read, and requests hyper refuses
//! itself. Memory is read from `/proc`, against the bound docs/deployment.md states (Scaling).

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Running, SECRET, Scrape, TestExporter, exporter_command};
use nuki_exporter::source::webhook::signature::{HEADER, sign};

/// The bound docs/deployment.md states for the exporter's resident memory with default limits.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// A scrape that takes longer hangs. How fast scrapes answer under attack is bench/'s business:
/// here, that they answer while the attack is still going on.
const SCRAPE_HANG: Duration = Duration::from_secs(60);
/// `limits.request_timeout`, after which the exporter drops a reader that does not read: long
/// enough that a scrape on a loaded machine answers while the stalled readers are still held.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent senders: enough to keep the exporter's webhook thread busy.
const SENDERS: usize = 4;

/// The flooding tests take turns: two debug-build exporters flooded at once on a 2-core
/// machine would measure each other.
static FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Exporter {
    running: Running,
    webhook_url: String,
    metrics_url: String,
    client: reqwest::Client,
}

impl Exporter {
    /// The binary with default limits but [`REQUEST_TIMEOUT`]; one port for both when `shared`.
    fn start(shared: bool) -> Self {
        let mut command = exporter_command();
        command
            .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
            .env(
                "NUKI_EXPORTER_METRICS__LISTEN",
                if shared { "127.0.0.1:0" } else { "127.0.0.2:0" },
            )
            .env("NUKI_EXPORTER_WEBHOOK__SECRETS", format!("[{SECRET}]"))
            .env(
                "NUKI_EXPORTER_LIMITS__REQUEST_TIMEOUT",
                format!("{}s", REQUEST_TIMEOUT.as_secs()),
            )
            .env("NUKI_EXPORTER_LOG__FORMAT", "json");
        let mut running = Running::spawn(&mut command);
        let (webhook, metrics) = if shared {
            let address = running.address_of("shared");
            (address.clone(), address)
        } else {
            (running.address_of("webhook"), running.address_of("metrics"))
        };
        Self {
            running,
            webhook_url: format!("http://{webhook}/webhook"),
            metrics_url: format!("http://{metrics}/metrics"),
            client: reqwest::Client::new(),
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.running.pid()))
            .expect("exporter still running");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Posts signed bodies, `concurrency` at a time.
    async fn post_all(&self, bodies: Vec<Vec<u8>>, concurrency: usize) {
        let bodies = Arc::new(std::sync::Mutex::new(bodies));
        let mut senders = Vec::new();
        for _ in 0..concurrency {
            let (bodies, client, url) = (
                Arc::clone(&bodies),
                self.client.clone(),
                self.webhook_url.clone(),
            );
            senders.push(tokio::spawn(async move {
                loop {
                    let Some(body) = bodies.lock().unwrap().pop() else {
                        return;
                    };
                    let signature = sign(SECRET.as_bytes(), &body);
                    let response = client
                        .post(&url)
                        .header(HEADER, signature)
                        .body(body)
                        .send()
                        .await
                        .expect("webhook");
                    assert_eq!(response.status().as_u16(), 204);
                }
            }));
        }
        for sender in senders {
            sender.await.unwrap();
        }
    }

    /// Scrapes until `done`, each answer a 200; returns how many answered before `done`.
    fn scrape_throughout(&self, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
        let (client, url) = (self.client.clone(), self.metrics_url.clone());
        tokio::spawn(async move {
            let mut answered_before_done = 0;
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                let response = tokio::time::timeout(SCRAPE_HANG, async {
                    let response = client.get(&url).send().await.expect("scrape");
                    let status = response.status().as_u16();
                    (status, response.bytes().await.expect("scrape body").len())
                })
                .await;
                let (status, _) = response.unwrap_or_else(|_| {
                    panic!("a scrape hung for {SCRAPE_HANG:?} during the attack")
                });
                assert_eq!(status, 200);
                if !done.load(Ordering::SeqCst) {
                    answered_before_done += 1;
                }
                let pause = Duration::from_millis(250).saturating_sub(started.elapsed());
                tokio::time::sleep(pause).await; // pacing, not synchronisation
            }
            answered_before_done
        })
    }

    async fn scrape(&self) -> Scrape {
        let text = tokio::time::timeout(SCRAPE_HANG, async {
            let response = self.client.get(&self.metrics_url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.text().await.unwrap()
        })
        .await
        .unwrap_or_else(|_| panic!("a scrape hung for {SCRAPE_HANG:?}"));
        Scrape(text)
    }
}

/// 100 locks × 64 `type` values × 258 `errorCode` spellings (every byte, one invalid, one
/// missing): 6,400 webhooks of 258 failed entities each.
fn cardinality_attack() -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for lock in 0..100u64 {
        let id = 17_000_000_000 + lock;
        let mut detail: Vec<String> = (0..=255u8)
            .map(|code| {
                format!(r#"{{"smartlockId":{id},"success":false,"errorCode":"{code:02x}"}}"#)
            })
            .collect();
        detail.push(format!(
            r#"{{"smartlockId":{id},"success":false,"errorCode":"zz"}}"#
        ));
        detail.push(format!(r#"{{"smartlockId":{id},"success":false}}"#));
        let detail = detail.join(",");
        for operation in 0..64 {
            let body =
                format!(r#"{{"type":"Junk{operation}","requestId":"r","detail":[{detail}]}}"#);
            bodies.push(body.into_bytes());
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cardinality_attack_and_stalled_readers_stay_under_the_memory_bound() {
    let _turn = FLOOD.lock().await;
    let exporter = Exporter::start(true);
    let done = Arc::new(AtomicBool::new(false));
    let scraper = exporter.scrape_throughout(Arc::clone(&done));
    exporter.post_all(cardinality_attack(), SENDERS).await;
    let after_attack = exporter.rss_kib();
    eprintln!("RSS after the cardinality attack: {after_attack} KiB");
    done.store(true, Ordering::SeqCst);
    assert!(
        scraper.await.unwrap() > 0,
        "no scrape answered while the attack went on"
    );
    assert!(
        after_attack < RSS_BOUND_KIB,
        "{after_attack} KiB after the attack"
    );

    let scrape = exporter.scrape().await;
    let refused = scrape
        .value("nuki_exporter_label_overflow_total", &[("label", "series")])
        .unwrap();
    // Each lock keeps limits.max_series_per_lock (1,000) of its 16,514 series.
    assert!(refused >= 100.0 * 15_000.0, "{refused} refused");
    let errors = scrape.samples("nuki_operation_errors_total").len();
    assert!(
        (90_000..=100_000).contains(&errors),
        "{errors} error series"
    );

    // Eight clients ask for /metrics and never read.
    let address = exporter.metrics_url["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    // While they stall: scrapes still answer (the first one before the exporter drops the
    // stalled readers), and memory stays bounded.
    let timeouts = |scrape: &Scrape| {
        scrape
            .value(
                "nuki_exporter_webhooks_rejected_total",
                &[("reason", "timeout")],
            )
            .unwrap()
    };
    let first = exporter.scrape().await;
    assert!(
        timeouts(&first) < 8.0,
        "the first scrape answered only once the stalled readers were dropped"
    );
    let deadline = Instant::now() + REQUEST_TIMEOUT + SCRAPE_HANG;
    let timeouts = loop {
        let scrape = exporter.scrape().await;
        let rss = exporter.rss_kib();
        eprintln!("RSS with eight stalled readers: {rss} KiB");
        assert!(rss < RSS_BOUND_KIB, "{rss} KiB with stalled readers");
        let timeouts = timeouts(&scrape);
        // The write deadline (limits.request_timeout) drops each of them.
        if timeouts >= 8.0 || Instant::now() > deadline {
            break timeouts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // pacing between checks
    };
    assert_eq!(timeouts, 8.0);
    drop(stalled);
    exporter.running.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_names_of_65_kb_are_cut_and_memory_stays_bounded() {
    let _turn = FLOOD.lock().await;
    let exporter = Exporter::start(false);
    let name = "N".repeat(65_000);
    let bodies = (0..10_000u64)
        .map(|id| {
            format!(r#"{{"feature":"DEVICE_MASTERDATA","smartlockId":{id},"name":"{name}","type":4,"firmwareVersion":199175}}"#)
                .into_bytes()
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let scraper = exporter.scrape_throughout(Arc::clone(&done));
    exporter.post_all(bodies, SENDERS).await;
    done.store(true, Ordering::SeqCst);
    assert!(
        scraper.await.unwrap() > 0,
        "no scrape answered while the names arrived"
    );
    let rss = exporter.rss_kib();
    eprintln!("RSS after 10,000 names of 65 KB: {rss} KiB");
    assert!(rss < RSS_BOUND_KIB, "{rss} KiB");
    let scrape = exporter.scrape().await;
    let infos = scrape.samples("nuki_smartlock_info");
    assert_eq!(infos.len(), 10_000);
    assert!(
        infos
            .iter()
            .all(|(labels, _)| labels["name"] == "N".repeat(128))
    );
    eprintln!("exposition with 10,000 cut names: {} bytes", scrape.0.len());
    assert!(scrape.0.len() < 10_000 * 400, "{} bytes", scrape.0.len());
    exporter.running.terminate();
}

/// Sends raw bytes and reads the status line hyper answers with (empty when the connection was
/// closed, or reset before the answer could be read).
fn raw_status(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(SCRAPE_HANG)).unwrap();
    // hyper may refuse before it has read everything: the rest of the write then fails.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn requests_hyper_refuses_before_a_handler_are_counted() {
    let exporter = TestExporter::start().await;
    let address: std::net::SocketAddr = exporter.webhook_url["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let conflicting =
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}";
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    // hyper refuses a head once its buffer holds max_buf_size (about 400 KB) unparsed, but one
    // read may add as much again: a slow server reads a 500 KB head whole, and serves it. Past
    // twice the limit, the head is refused however the reads fall.
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2_000_000)
    );
    let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let status = move |request: &[u8]| raw_status(address, request);
    let answers = tokio::task::spawn_blocking(move || {
        [
            status(conflicting),
            status(long_uri.as_bytes()),
            status(big_header.as_bytes()),
            status(h2_preface),
        ]
    })
    .await
    .unwrap();
    assert!(answers[0].contains(" 400 "), "{answers:?}");
    // Counted when hyper gives up the connection, which the client may see closed before.
    let rejected = |scrape: &Scrape, reason| {
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", reason)],
        )
    };
    let scrape = exporter
        .scrape_until(SCRAPE_HANG, |s| {
            rejected(s, "malformed") >= Some(2.0) && rejected(s, "too_large") >= Some(2.0)
        })
        .await;
    assert_eq!(rejected(&scrape, "malformed"), Some(2.0), "{answers:?}");
    assert_eq!(rejected(&scrape, "too_large"), Some(2.0), "{answers:?}");
    exporter.shutdown().await;
}
