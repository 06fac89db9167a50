//! Several replicas, one bridge: each bridge is polled by the holder of its Kubernetes Lease
//! only. Two exporters share a Bridge stand-in and a Kubernetes API stand-in: one polls, the
//! other leaves the bridge alone but takes its callbacks; when the poller goes (shut down, or
//! killed), the other takes over within the Lease duration; when the API fails, nobody crashes
//! and nobody starts a second poll.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::bridge_stub::{self, BridgeStub, UNDELIVERED_CALLBACK_URL, fixture, post_from};
use common::kube_api_stub::{self, KubeApiStub};
use common::{Running, Scrape, TestExporter, exporter_command, test_config};
use hyper::StatusCode;
use nuki_exporter::Config;
use nuki_exporter::config::{BridgeConfig, BridgeLeaseConfig};

/// The stand-in bridge's address: callbacks come from it.
const BRIDGE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const NAMESPACE: &str = "monitoring";
const LEASE: &str = "nuki-exporter-bridge-hall";
/// Short, for the test: the shipped default is 15 s.
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_PERIOD: Duration = Duration::from_secs(1);
const HALL: [(&str, &str); 1] = [("bridge", "hall")];

/// Token files for the bridge and the Kubernetes API.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bridge"),
            format!("{}\n", bridge_stub::TOKEN),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("kube"),
            format!("{}\n", kube_api_stub::TOKEN),
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn lease_config(api: &KubeApiStub, secrets: &Secrets, identity: &str) -> BridgeLeaseConfig {
    BridgeLeaseConfig {
        identity: identity.into(),
        namespace: NAMESPACE.into(),
        duration: LEASE_DURATION,
        renew_period: RENEW_PERIOD,
        timeout: Duration::from_millis(500),
        api_url: Some(api.url()),
        token_file: Some(secrets.path("kube")),
        ..BridgeLeaseConfig::default()
    }
}

fn bridge_config(bridge: &BridgeStub, secrets: &Secrets) -> BridgeConfig {
    let mut config = BridgeConfig::new("hall", &bridge.url(), secrets.path("bridge"));
    config.poll_interval = Duration::from_millis(200);
    config.request_spacing = Duration::from_millis(50);
    config.callback_url = Some(UNDELIVERED_CALLBACK_URL.into());
    config
}

/// An in-process exporter polling `bridge` under the Lease, as replica `identity`.
async fn replica(
    bridge: &BridgeStub,
    api: &KubeApiStub,
    secrets: &Secrets,
    identity: &str,
) -> TestExporter {
    let mut config: Config = test_config();
    config.bridges.push(bridge_config(bridge, secrets));
    config.bridge_lease = Some(lease_config(api, secrets, identity));
    TestExporter::start_with(config).await
}

/// A Bridge and a Kubernetes API stand-in, and the tokens of both.
async fn stands_in() -> (BridgeStub, KubeApiStub, Secrets) {
    (
        BridgeStub::start(BRIDGE_IP).await,
        KubeApiStub::start().await,
        Secrets::new(),
    )
}

/// Replicas nuki-exporter-0 and -1, in-process.
async fn two_replicas(
    bridge: &BridgeStub,
    api: &KubeApiStub,
    secrets: &Secrets,
) -> (TestExporter, TestExporter) {
    (
        replica(bridge, api, secrets, "nuki-exporter-0").await,
        replica(bridge, api, secrets, "nuki-exporter-1").await,
    )
}

/// The `/list` polls the bridge has answered or refused so far.
fn lists(bridge: &BridgeStub) -> usize {
    bridge.paths().iter().filter(|p| *p == "/list").count()
}

fn leader(scrape: &Scrape) -> Option<f64> {
    scrape.value("nuki_bridge_poller_leader", &HALL)
}

/// Requests this exporter made to the bridge.
fn bridge_requests(scrape: &Scrape) -> f64 {
    scrape.sum("nuki_bridge_requests_total", &HALL)
}

/// Waits until exactly one of the two polls the bridge; returns (poller, other).
async fn one_poller<'a>(
    a: &'a TestExporter,
    b: &'a TestExporter,
) -> (&'a TestExporter, &'a TestExporter) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (a.scrape().await, b.scrape().await);
        match (leader(&sa), leader(&sb)) {
            (Some(1.0), Some(0.0)) if sa.value("nuki_bridge_up", &HALL) == Some(1.0) => {
                return (a, b);
            }
            (Some(0.0), Some(1.0)) if sb.value("nuki_bridge_up", &HALL) == Some(1.0) => {
                return (b, a);
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no single poller within 20s:\n{}\n---\n{}",
            sa.0,
            sb.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a replica that does not poll shows: leader 0, no bridge state, no request made.
fn assert_leaves_the_bridge_alone(scrape: &Scrape) {
    assert_eq!(leader(scrape), Some(0.0), "{}", scrape.0);
    for series in [
        "nuki_bridge_up",
        "nuki_bridge_server_connected",
        "nuki_bridge_callbacks_registered",
    ] {
        assert_eq!(scrape.value(series, &HALL), None, "{series}: {}", scrape.0);
    }
    assert_eq!(bridge_requests(scrape), 0.0, "{}", scrape.0);
}

#[tokio::test]
async fn two_replicas_one_poller_callbacks_anywhere_and_a_handover_on_shutdown() {
    let (bridge, api, secrets) = stands_in().await;
    let (a, b) = two_replicas(&bridge, &api, &secrets).await;
    let (poller, other) = one_poller(&a, &b).await;

    // A few poll cycles later: still one poller, and the other never asked the bridge.
    let polled = lists(&bridge);
    poller
        .scrape_until(Duration::from_secs(10), |_| lists(&bridge) >= polled + 5)
        .await;
    assert_leaves_the_bridge_alone(&other.scrape().await);
    assert_eq!(bridge.max_in_flight(), 1, "two requests at once");
    assert_eq!(
        bridge.callbacks(),
        [UNDELIVERED_CALLBACK_URL],
        "one registration"
    );
    let holder = api.holder(NAMESPACE, LEASE).expect("the Lease is held");
    let poller_is_a = std::ptr::eq(poller, &a);
    assert_eq!(
        holder,
        if poller_is_a {
            "nuki-exporter-0"
        } else {
            "nuki-exporter-1"
        }
    );

    // A callback counts on the replica that polls: its last /list says which locks the bridge
    // owns (docs/upstreams.md). One that reaches the other replica is refused and counted, and
    // the holder's next /list brings the state (docs/replicas.md).
    let url = format!("http://{}/bridge/callback", poller.webhook_address());
    assert_eq!(
        post_from(BRIDGE_IP, &url, &fixture("callback-lock")).await,
        200
    );
    poller
        .scrape_until(Duration::from_secs(60), |s| {
            s.value("nuki_bridge_callbacks_received_total", &HALL) == Some(1.0)
        })
        .await;
    let url = format!("http://{}/bridge/callback", other.webhook_address());
    assert_eq!(
        post_from(BRIDGE_IP, &url, &fixture("callback-lock")).await,
        403
    );
    let scrape = other
        .scrape_until(Duration::from_secs(60), |s| {
            s.value(
                "nuki_exporter_webhooks_rejected_total",
                &[("reason", "forbidden")],
            ) == Some(1.0)
        })
        .await;
    assert_leaves_the_bridge_alone(&scrape);

    // The poller shuts down (a rollout): it vacates the Lease and the other takes over at
    // once, well before the Lease would have expired.
    let (poller, other) = if poller_is_a { (a, b) } else { (b, a) };
    let stopped = Instant::now();
    poller.shutdown().await;
    // Vacated by the time the shutdown is over (or already taken by the other).
    assert_ne!(api.holder(NAMESPACE, LEASE), Some(holder));
    other
        .scrape_until(Duration::from_secs(10), |s| {
            s.value("nuki_bridge_up", &HALL) == Some(1.0) && leader(s) == Some(1.0)
        })
        .await;
    let handover = stopped.elapsed();
    println!("handover after a shutdown: {handover:?}");
    // The other looks every renew_period; the margin is for a loaded machine.
    assert!(
        handover < RENEW_PERIOD + Duration::from_secs(3),
        "{handover:?}"
    );
    assert_eq!(bridge.max_in_flight(), 1, "two requests at once");
    assert_eq!(bridge.callbacks(), [UNDELIVERED_CALLBACK_URL]);
    other.shutdown().await;
    assert_eq!(api.holder(NAMESPACE, LEASE), None, "vacated on shutdown");
}

#[tokio::test]
async fn an_unavailable_kubernetes_api_crashes_nothing_and_never_makes_two_pollers() {
    let (bridge, api, secrets) = stands_in().await;
    let (a, b) = two_replicas(&bridge, &api, &secrets).await;
    for failure in ["503", "401", "403", "slow"] {
        let (poller, other) = one_poller(&a, &b).await;
        let other_requests = bridge_requests(&other.scrape().await);
        match failure {
            "slow" => api.set_delay(Duration::from_secs(2)),
            code => api.set_failing(Some(StatusCode::from_bytes(code.as_bytes()).unwrap())),
        }
        let failed = Instant::now();
        // The poller goes on until its Lease is about to run out, then stops; nobody else
        // starts: no replica polls while the API cannot say who may.
        let scrape = poller
            .scrape_until(Duration::from_secs(10), |s| leader(s) == Some(0.0))
            .await;
        let polled_for = failed.elapsed();
        assert!(polled_for < LEASE_DURATION, "{failure}: {polled_for:?}");
        assert_eq!(scrape.value("nuki_bridge_up", &HALL), None, "{}", scrape.0);
        let before = lists(&bridge);
        // Two more lease durations without an API: nobody polls, both serve /metrics.
        let quiet_until = Instant::now() + LEASE_DURATION * 2;
        while Instant::now() < quiet_until {
            for replica in [poller, other] {
                assert_eq!(leader(&replica.scrape().await), Some(0.0), "{failure}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            lists(&bridge),
            before,
            "{failure}: the bridge was polled without a Lease"
        );
        assert_eq!(bridge_requests(&other.scrape().await), other_requests);
        println!("{failure}: the poller stopped {polled_for:?} after the API failed");
        // The API answers again: one replica polls again.
        api.set_failing(None);
        api.set_delay(Duration::ZERO);
    }
    one_poller(&a, &b).await;
    assert_eq!(bridge.max_in_flight(), 1, "two requests at once");
    assert!(api.answered(503) > 0 && api.answered(401) > 0 && api.answered(403) > 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A replica as its own process, killed on drop whatever the test's outcome.
struct Process(Option<Running>);

impl Process {
    fn start(config: &Path) -> (Self, String) {
        let mut running =
            Running::spawn(exporter_command().args(["--config.file", config.to_str().unwrap()]));
        let metrics = running.address_of("metrics");
        (Self(Some(running)), format!("http://{metrics}/metrics"))
    }

    /// `kill -9`: no shutdown, the Lease is not vacated.
    fn kill(mut self) {
        self.0.take().unwrap().kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.kill();
        }
    }
}

async fn scrape_url(client: &reqwest::Client, url: &str) -> Scrape {
    Scrape(client.get(url).send().await.unwrap().text().await.unwrap())
}

#[tokio::test]
async fn a_killed_poller_is_replaced_within_the_lease_duration() {
    let (bridge, api, secrets) = stands_in().await;
    let config_for = |identity: &str| {
        let path = secrets.path(&format!("{identity}.toml"));
        let config = format!(
            r#"
[webhook]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.2:0"
[log]
format = "json"
[[bridges]]
name = "hall"
url = "{bridge}"
token_file = "{bridge_token}"
poll_interval = "200ms"
request_spacing = "50ms"
callback_url = "{UNDELIVERED_CALLBACK_URL}"
[bridge_lease]
identity = "{identity}"
namespace = "{NAMESPACE}"
duration = "{duration}s"
renew_period = "{renew}s"
timeout = "500ms"
api_url = "{api}"
token_file = "{api_token}"
"#,
            bridge = bridge.url(),
            bridge_token = secrets.path("bridge").display(),
            duration = LEASE_DURATION.as_secs(),
            renew = RENEW_PERIOD.as_secs(),
            api = api.url(),
            api_token = secrets.path("kube").display(),
        );
        std::fs::write(&path, config).unwrap();
        path
    };
    let client = reqwest::Client::new();
    let (mut first, first_url) = Process::start(&config_for("nuki-exporter-0"));
    // The first one holds the Lease before the second starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.holder(NAMESPACE, LEASE).as_deref() != Some("nuki-exporter-0") {
        if Instant::now() > deadline {
            let lines = first.0.take().unwrap().kill();
            panic!(
                "the first replica never took the Lease:\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (second, second_url) = Process::start(&config_for("nuki-exporter-1"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (one, two) = (
            scrape_url(&client, &first_url).await,
            scrape_url(&client, &second_url).await,
        );
        if one.value("nuki_bridge_up", &HALL) == Some(1.0) && leader(&two) == Some(0.0) {
            assert_leaves_the_bridge_alone(&two);
            break;
        }
        assert!(Instant::now() < deadline, "{}\n---\n{}", one.0, two.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    first.kill();
    let killed = Instant::now();
    let before = lists(&bridge);
    let deadline = killed + LEASE_DURATION * 3;
    loop {
        let scrape = scrape_url(&client, &second_url).await;
        let polled = lists(&bridge) > before;
        if polled && scrape.value("nuki_bridge_up", &HALL) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no takeover:\n{}", scrape.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = killed.elapsed();
    println!("bridge polling resumed {resumed:?} after its poller was killed");
    // At most the Lease duration after the last renewal, plus one poll.
    assert!(
        resumed <= LEASE_DURATION + Duration::from_millis(1500),
        "{resumed:?}"
    );
    assert_eq!(
        api.holder(NAMESPACE, LEASE).as_deref(),
        Some("nuki-exporter-1")
    );
    assert_eq!(bridge.max_in_flight(), 1, "two requests at once");
    assert_eq!(
        api.lease(NAMESPACE, LEASE).unwrap()["spec"]["leaseTransitions"],
        2
    );
    drop(second);
}
