//! The Nuki Bridge source against a stand-in bridge: gauges from `/list`, bridge health from
//! `/info`, callbacks, the callback registration across restarts, token modes and a busy bridge.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::bridge_stub::{
    BridgeStub, CallbackRelay, TokenUse, UNDELIVERED_CALLBACK_URL, exporter_polling, fixture,
    post_from,
};
use common::{TestExporter, refused_address, test_config};
use nuki_exporter::config::{BridgeConfig, TokenMode};
use serde_json::json;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long a test waits for what it asserts: a hang, not a slow machine.
const WAIT: Duration = Duration::from_secs(60);
/// A poll interval no test outlasts: what changes afterwards was not polled.
const ONE_POLL_ONLY: Duration = Duration::from_secs(3600);

/// The stand-in's address when the test itself must post from somewhere else.
const BRIDGE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// smartlock ids of the `list` fixture's devices (Web API ids, computed by hand from nukiId
/// and deviceType): two Smart Locks 3.0, a Smart Lock 2.0, an Opener.
const FRONT_DOOR: &str = "17618910285";
const BACK_DOOR: &str = "439041102";
const GARAGE: &str = "17618910287";
const OPENER: &str = "190106";

/// An exporter polling `stub`.
async fn exporter_for(
    stub: &BridgeStub,
    configure: impl FnOnce(&mut BridgeConfig),
) -> TestExporter {
    exporter_polling(stub, test_config(), configure).await
}

/// Makes the bridge answer 500 to every request; waits until `nuki_bridge_up` says so.
async fn answers_500_and_is_down(stub: &BridgeStub, exporter: &TestExporter) {
    stub.set_failing(Some(hyper::StatusCode::INTERNAL_SERVER_ERROR));
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_up", &[("bridge", "hall")]) == Some(0.0)
        })
        .await;
}

fn lock(id: &str) -> [(&str, &str); 1] {
    [("smartlock_id", id)]
}

#[tokio::test]
async fn three_locks_and_an_opener_show_every_gauge_and_the_bridge_health_within_one_poll() {
    let stub = BridgeStub::start(LOCALHOST).await;
    // Whatever shows up came from one poll.
    let exporter = exporter_for(&stub, |bridge| bridge.poll_interval = ONE_POLL_ONLY).await;
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_up", &[("bridge", "hall")]) == Some(1.0)
                && s.value("nuki_bridge_server_connected", &[("bridge", "hall")])
                    .is_some()
                && s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")])
                    .is_some()
        })
        .await;

    // What the other exporter shows: mode, state, door sensor state, battery charge, battery
    // critical, battery charging, keypad battery critical.
    for (metric, id, expected) in [
        ("nuki_smartlock_mode", FRONT_DOOR, 2.0),
        ("nuki_smartlock_mode", OPENER, 3.0),
        ("nuki_smartlock_lock_state", FRONT_DOOR, 1.0),
        ("nuki_smartlock_lock_state", BACK_DOOR, 3.0),
        ("nuki_smartlock_door_state", FRONT_DOOR, 2.0),
        ("nuki_smartlock_door_state", BACK_DOOR, 3.0),
        ("nuki_smartlock_battery_charge_percent", FRONT_DOOR, 85.0),
        ("nuki_smartlock_battery_charging", BACK_DOOR, 1.0),
    ] {
        assert_eq!(
            scrape.value(metric, &lock(id)),
            Some(expected),
            "{metric} of {id}"
        );
    }
    let battery = |id, battery| {
        scrape.value(
            "nuki_smartlock_battery_critical",
            &[("smartlock_id", id), ("battery", battery)],
        )
    };
    assert_eq!(battery(BACK_DOOR, "lock"), Some(1.0));
    assert_eq!(battery(BACK_DOOR, "keypad"), Some(1.0));
    assert_eq!(battery(FRONT_DOOR, "lock"), Some(0.0));
    assert_eq!(battery(OPENER, "lock"), Some(0.0));
    assert_eq!(
        scrape.value(
            "nuki_smartlock_info",
            &[
                ("smartlock_id", OPENER),
                ("name", "Street door"),
                ("device_type", "opener"),
                ("firmware_version", "1.6.4"),
            ]
        ),
        Some(1.0)
    );
    // Unknown is no series: the Opener has no battery charge, the garage lock no known state.
    assert_eq!(
        scrape.value("nuki_smartlock_battery_charge_percent", &lock(OPENER)),
        None
    );
    assert_eq!(
        scrape.value("nuki_smartlock_lock_state", &lock(GARAGE)),
        None
    );
    assert_eq!(scrape.sum("nuki_smartlock_info", &lock(GARAGE)), 1.0);

    // The bridge itself.
    assert_eq!(
        scrape.value("nuki_bridge_server_connected", &[("bridge", "hall")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_bridge_info",
            &[
                ("bridge", "hall"),
                ("bridge_type", "hardware"),
                ("firmware_version", "2.17.0")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_bridge_requests_total",
            &[("bridge", "hall"), ("endpoint", "list"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert!(
        scrape
            .value(
                "nuki_bridge_last_success_timestamp_seconds",
                &[("bridge", "hall")]
            )
            .unwrap()
            > 1.7e9
    );
    assert_eq!(stub.paths().iter().filter(|p| *p == "/list").count(), 1);
    assert!(
        stub.seen()
            .iter()
            .all(|s| s.token == Some(TokenUse::Encrypted)),
        "{:?}",
        stub.seen()
    );
    exporter.shutdown().await;
    assert_eq!(
        stub.max_in_flight(),
        1,
        "the bridge saw concurrent requests"
    );
    assert!(!stub.paths().iter().any(|p| p == "/lockState"));
}

#[tokio::test]
async fn a_callback_changes_a_lock_state_without_a_poll_and_only_a_bridge_may_call_back() {
    let stub = BridgeStub::start(BRIDGE_IP).await;
    let relay = CallbackRelay::start().await;
    // The stand-in keeps listing the lock as locked: only the callback can change it, and no
    // later poll changes it back. How fast a callback shows belongs in bench/.
    let exporter = exporter_for(&stub, |bridge| {
        bridge.callback_url = Some(relay.url.clone());
        bridge.poll_interval = ONE_POLL_ONLY;
    })
    .await;
    relay.forward_to(exporter.webhook_address());
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")]) == Some(1.0)
                && s.value("nuki_smartlock_lock_state", &lock(FRONT_DOOR)) == Some(1.0)
        })
        .await;

    let pushed = Instant::now();
    assert_eq!(stub.push(&fixture("callback-lock")).await, [200]);
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_smartlock_lock_state", &lock(FRONT_DOOR)) == Some(3.0)
        })
        .await;
    println!("callback to gauge: {:?}", pushed.elapsed());
    assert_eq!(
        scrape.value("nuki_smartlock_door_state", &lock(FRONT_DOOR)),
        Some(3.0)
    );
    assert_eq!(
        scrape.value("nuki_smartlock_battery_charge_percent", &lock(FRONT_DOOR)),
        Some(84.0)
    );
    assert!(
        scrape
            .value(
                "nuki_smartlock_last_seen_timestamp_seconds",
                &lock(FRONT_DOOR)
            )
            .is_some()
    );
    assert_eq!(
        scrape.value(
            "nuki_bridge_callbacks_received_total",
            &[("bridge", "hall")]
        ),
        Some(1.0)
    );

    // Anyone else is refused and changes nothing; so is a body that is no callback.
    assert_eq!(stub.callbacks(), std::slice::from_ref(&relay.url));
    let url = format!("http://{}/bridge/callback", exporter.webhook_address());
    let forged = json!({"nukiId": 439041101, "deviceType": 4, "state": 5});
    assert_eq!(post_from(LOCALHOST, &url, &forged).await, 403);
    assert_eq!(post_from(BRIDGE_IP, &url, &json!({"state": 5})).await, 400);
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value("nuki_smartlock_lock_state", &lock(FRONT_DOOR)),
        Some(3.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "forbidden")]
        ),
        Some(1.0)
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn restarts_leave_exactly_one_callback_registered() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.add_callback("http://192.168.1.50:8000/home-automation");
    for _ in 0..4 {
        let exporter = exporter_for(&stub, |_| {}).await;
        exporter
            .scrape_until(WAIT, |s| {
                s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")]) == Some(1.0)
            })
            .await;
        exporter.shutdown().await;
    }
    let callbacks = stub.callbacks();
    assert_eq!(callbacks.len(), 2, "{callbacks:?}");
    assert_eq!(callbacks[0], "http://192.168.1.50:8000/home-automation");
    assert_eq!(stub.max_in_flight(), 1);
}

#[tokio::test]
async fn a_duplicate_registration_is_removed_and_a_full_bridge_is_reported() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.add_callback(UNDELIVERED_CALLBACK_URL);
    stub.add_callback(UNDELIVERED_CALLBACK_URL);
    let exporter = exporter_for(&stub, |_| {}).await;
    // The extra copy is removed in the cycle that found it.
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")]) == Some(1.0)
                && s.value("nuki_bridge_callbacks_stale", &[("bridge", "hall")]) == Some(0.0)
        })
        .await;
    exporter.shutdown().await;
    assert_eq!(stub.callbacks(), [UNDELIVERED_CALLBACK_URL]);

    let full = BridgeStub::start(LOCALHOST).await;
    for other in [
        "http://10.0.0.1/a",
        "http://10.0.0.2/b",
        "http://10.0.0.3/c",
    ] {
        full.add_callback(other);
    }
    let exporter = exporter_for(&full, |_| {}).await;
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_callbacks_registered", &[("bridge", "hall")]) == Some(0.0)
        })
        .await;
    assert_eq!(
        scrape.value("nuki_bridge_up", &[("bridge", "hall")]),
        Some(1.0)
    );
    assert_eq!(full.callbacks().len(), 3);
    exporter.shutdown().await;
}

#[tokio::test]
async fn auto_mode_falls_back_to_hashed_tokens_on_old_firmware_and_never_replays_one() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.refuse_encrypted_tokens();
    let exporter = exporter_for(&stub, |bridge| {
        bridge.poll_interval = Duration::from_millis(100)
    })
    .await;
    exporter
        .scrape_until(WAIT, |s| {
            s.value(
                "nuki_bridge_requests_total",
                &[("bridge", "hall"), ("endpoint", "list"), ("code", "200")],
            ) >= Some(5.0)
        })
        .await;
    exporter.shutdown().await;
    let seen = stub.seen();
    // /info (and the callback check) once per info_interval, /list every poll.
    let paths = stub.paths();
    assert_eq!(
        paths.iter().filter(|p| *p == "/info").count(),
        1,
        "{paths:?}"
    );
    assert_eq!(paths.iter().filter(|p| *p == "/callback/list").count(), 1);
    assert!(paths.iter().filter(|p| *p == "/list").count() >= 6);
    // One refused encrypted token, then hashed ones only, none of them refused as a replay.
    assert_eq!(seen[0].status, 401);
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.status == 200 && s.token == Some(TokenUse::Hashed)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn auto_mode_keeps_encrypted_tokens_when_the_token_itself_is_wrong() {
    let stub = BridgeStub::start(LOCALHOST).await;
    let exporter = exporter_for(&stub, |bridge| {
        std::fs::write(&bridge.token_file, "a-wrong-token").unwrap();
        bridge.poll_interval = Duration::from_millis(100);
        bridge.callback_url = None;
    })
    .await;
    exporter
        .scrape_until(WAIT, |s| {
            s.value(
                "nuki_bridge_requests_total",
                &[("bridge", "hall"), ("endpoint", "list"), ("code", "401")],
            ) >= Some(6.0)
        })
        .await;
    let scrape = exporter.scrape().await;
    assert_eq!(
        scrape.value("nuki_bridge_up", &[("bridge", "hall")]),
        Some(0.0)
    );
    exporter.shutdown().await;
    // Each poll tries an encrypted token, then a hashed one; neither is kept as the bridge's mode.
    let sent: Vec<Option<TokenUse>> = stub
        .seen()
        .iter()
        .filter(|s| s.path == "/list")
        .map(|s| s.sent)
        .collect();
    for pair in sent.chunks_exact(2) {
        assert_eq!(
            pair,
            [Some(TokenUse::Encrypted), Some(TokenUse::Hashed)],
            "{sent:?}"
        );
    }
    assert!(stub.seen().iter().all(|s| s.status == 401));
}

#[tokio::test]
async fn plain_tokens_only_when_configured() {
    let stub = BridgeStub::start(LOCALHOST).await;
    let exporter = exporter_for(&stub, |bridge| {
        bridge.token_mode = TokenMode::Plain;
        bridge.callback_url = None;
    })
    .await;
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_up", &[("bridge", "hall")]) == Some(1.0)
        })
        .await;
    exporter.shutdown().await;
    assert!(stub.seen().iter().all(|s| s.token == Some(TokenUse::Plain)));
    assert!(!stub.paths().iter().any(|p| p.starts_with("/callback")));
}

#[tokio::test]
async fn a_busy_bridge_gets_spaced_retries_and_a_failing_one_is_down() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.set_busy(2);
    let exporter = exporter_for(&stub, |bridge| {
        bridge.poll_interval = Duration::from_millis(200)
    })
    .await;
    let scrape = exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_up", &[("bridge", "hall")]) == Some(1.0)
        })
        .await;
    assert_eq!(
        scrape.value(
            "nuki_bridge_requests_total",
            &[("bridge", "hall"), ("endpoint", "list"), ("code", "503")]
        ),
        Some(2.0)
    );
    // A device the bridge no longer lists loses its series.
    stub.set_devices(vec![fixture("list")[0].clone()]);
    exporter
        .scrape_until(WAIT, |s| {
            s.sum("nuki_smartlock_info", &lock(OPENER)) == 0.0
                && s.sum("nuki_smartlock_info", &lock(FRONT_DOOR)) == 1.0
        })
        .await;

    answers_500_and_is_down(&stub, &exporter).await;
    exporter.shutdown().await;
    let seen = stub.seen();
    // Each request starts at least request_spacing after the previous one ended (less the
    // stand-in's own service time, which lies inside the exporter's request).
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(50), "{gap:?} between {pair:?}");
    }
    // The first two 503s were retried after a backoff, not at once.
    let retried = seen.iter().position(|s| s.status == 200).unwrap();
    assert!(
        seen[retried].at - seen[0].at >= Duration::from_millis(150),
        "{seen:?}"
    );
    assert_eq!(stub.max_in_flight(), 1);
}

/// The token travels in the URL in plain mode; no log line, even at debug level, carries it:
/// not for a bridge that refuses it, not for one that cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_token_is_in_no_log_line() {
    const SECRET_TOKEN: &str = "plain-token-that-must-not-leak";
    let refusing = BridgeStub::start(LOCALHOST).await;
    // Bound but not listening: connections to it are refused.
    let (_closed, unreachable) = refused_address();
    let unreachable = format!("http://{unreachable}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, SECRET_TOKEN).unwrap();
    let config = dir.path().join("config.toml");
    let mut toml = String::from(
        "[webhook]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.2:0\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n",
    );
    for (name, url) in [("refusing", refusing.url()), ("unreachable", unreachable)] {
        toml.push_str(&format!(
            "[[bridges]]\nname = \"{name}\"\nurl = \"{url}\"\ntoken_file = \"{}\"\ntoken_mode = \"plain\"\nrequest_spacing = \"50ms\"\npoll_interval = \"100ms\"\ncallback_url = \"{UNDELIVERED_CALLBACK_URL}\"\n",
            token.display()
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let mut exporter =
        common::Running::spawn(common::exporter_command().arg("--config.file").arg(&config));
    for failure in [
        "the bridge answered 401",
        "cannot reach the bridge",
        "checking the callback registration failed",
    ] {
        exporter.wait_for(failure);
    }
    let (clean, lines) = exporter.terminate();
    assert!(clean, "{}", lines.join("\n"));
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(SECRET_TOKEN)).collect();
    assert!(leaks.is_empty(), "the token is in the log:\n{leaks:#?}");
    assert!(refusing.seen().iter().all(|s| s.status == 401));
}

/// A bridge (or anyone sending from its address) may call back only about the locks its last
/// `/list` listed: a callback about any other lock, one a webhook reported or one nobody
/// knows, is refused, counted, and changes nothing, not even the state file.
#[tokio::test]
async fn a_callback_about_a_lock_the_bridge_did_not_list_records_nothing() {
    let stub = BridgeStub::start(BRIDGE_IP).await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let mut config = test_config();
    config.state.file = Some(state_file.clone());
    config.state.write_interval = Duration::from_millis(100);
    let exporter = exporter_polling(&stub, config, |_| {}).await;
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_smartlock_lock_state", &lock(FRONT_DOOR)) == Some(1.0)
        })
        .await;
    // Lock 42 is known from a signed webhook only, its battery fine.
    let webhook = br#"{"feature":"DEVICE_STATUS","smartlockId":42,"state":{"batteryCritical":false,"state":1}}"#;
    assert_eq!(exporter.post(webhook).await, 204);
    let callback_url = format!("http://{}/bridge/callback", exporter.webhook_address());
    let callback = |nuki_id: u64| json!({"nukiId": nuki_id, "deviceType": 0, "state": 3, "batteryCritical": true});
    assert_eq!(
        post_from(BRIDGE_IP, &callback_url, &callback(42)).await,
        403
    );
    for phantom in 5_000_000..5_000_050 {
        assert_eq!(
            post_from(BRIDGE_IP, &callback_url, &callback(phantom)).await,
            403
        );
    }
    // A listed lock's callback is still recorded.
    assert_eq!(
        post_from(BRIDGE_IP, &callback_url, &fixture("callback-lock")).await,
        200
    );
    let scrape = exporter
        .scrape_until(Duration::from_secs(5), |s| {
            s.value("nuki_smartlock_lock_state", &lock(FRONT_DOOR)) == Some(3.0)
        })
        .await;
    assert_eq!(
        scrape.value(
            "nuki_smartlock_battery_critical",
            &[("smartlock_id", "42"), ("battery", "lock")]
        ),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("nuki_smartlock_lock_state", &lock("42")),
        Some(1.0)
    );
    // The bridge's four devices and lock 42.
    assert_eq!(
        scrape.value("nuki_exporter_smartlocks_tracked", &[]),
        Some(5.0)
    );
    assert!(!scrape.contains("smartlock_id=\"5000000\""));
    assert_eq!(
        scrape.value(
            "nuki_exporter_webhooks_rejected_total",
            &[("reason", "forbidden")]
        ),
        Some(51.0)
    );
    assert_eq!(
        scrape.value(
            "nuki_bridge_callbacks_received_total",
            &[("bridge", "hall")]
        ),
        Some(1.0)
    );
    // The state file, written after the last callback, names no phantom: none comes back.
    let deadline = Instant::now() + WAIT;
    let written = loop {
        let text = std::fs::read_to_string(&state_file).unwrap_or_default();
        if text.contains(r#""lock_state":3"#) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the state file was not written: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!written.contains("5000000"), "{written}");
    assert!(written.contains(r#""smartlock_id":42"#));
    exporter.shutdown().await;
}

/// A bridge listing thousands of copies of this exporter's callback: they are removed two per
/// poll cycle, `/list` is polled every cycle meanwhile, and `nuki_bridge_up` follows the
/// bridge.
#[tokio::test]
async fn thousands_of_stale_callback_copies_do_not_hold_up_list_polling() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.flood_callbacks(UNDELIVERED_CALLBACK_URL, 2_000);
    let exporter = exporter_for(&stub, |bridge| {
        bridge.poll_interval = Duration::from_millis(100);
        bridge.info_interval = Duration::from_secs(3600);
    })
    .await;
    let lists = |stub: &BridgeStub| stub.paths().iter().filter(|p| *p == "/list").count();
    exporter
        .scrape_until(Duration::from_secs(20), |s| {
            lists(&stub) >= 6
                && s.value("nuki_bridge_callbacks_stale", &[("bridge", "hall")])
                    .is_some_and(|stale| stale > 0.0 && stale < 1999.0)
        })
        .await;
    assert!(stub.flooded() > 1_900, "{} left", stub.flooded());
    // Between two /list polls, at most two removals.
    let paths = stub.paths();
    for between in paths.split(|path| path == "/list") {
        let removals = between.iter().filter(|p| *p == "/callback/remove").count();
        assert!(
            removals <= 2,
            "{removals} removals in one cycle: {between:?}"
        );
    }
    assert_eq!(
        exporter
            .scrape()
            .await
            .value("nuki_bridge_up", &[("bridge", "hall")]),
        Some(1.0)
    );
    answers_500_and_is_down(&stub, &exporter).await;
    exporter.shutdown().await;
}

/// A bridge that comes up after the exporter: its failed `/info` is retried with backoff from
/// the next poll on, not `info_interval` (5 minutes by default) later.
#[tokio::test]
async fn a_failed_info_is_retried_within_polls_not_after_the_info_interval() {
    let stub = BridgeStub::start(LOCALHOST).await;
    stub.set_failing(Some(hyper::StatusCode::INTERNAL_SERVER_ERROR));
    let exporter = exporter_for(&stub, |bridge| {
        bridge.poll_interval = Duration::from_millis(500);
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while !stub.paths().iter().any(|path| path.starts_with("/info")) {
        assert!(
            Instant::now() < deadline,
            "no /info asked: {:?}",
            stub.paths()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stub.set_failing(None);
    exporter
        .scrape_until(WAIT, |s| {
            s.value("nuki_bridge_server_connected", &[("bridge", "hall")]) == Some(1.0)
        })
        .await;
    exporter.shutdown().await;
}
