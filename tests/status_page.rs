//! The status page, read in a real headless browser (Debian's chromium): every lock with its
//! state, last report, source and problems; one page per lock; behind the `/metrics` auth.

mod common;

use common::browser::dump_dom;
use common::{TestExporter, fixture, test_config};

const USER: &str = "ops";
const PASSWORD: &str = "status page password";

/// An exporter whose metrics listener asks for basic auth, fed with webhooks about three locks:
/// "Front door" (door sensor battery critical, one failed AuthCreation), 555000111 (jammed,
/// battery critical, offline) and 42, whose name an attacker chose.
async fn exporter_with_three_locks() -> (TestExporter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let web_config = dir.path().join("web.yml");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(
        &web_config,
        format!("basic_auth_users:\n  {USER}: {hash}\n"),
    )
    .unwrap();
    let mut config = test_config();
    config.metrics.web_config_file = Some(web_config);
    let exporter = TestExporter::start_with(config).await;
    let hostile = br#"{"feature":"DEVICE_MASTERDATA","deleted":false,"smartlockId":42,"type":4,"name":"<b>Hall</b> & <script>document.title='owned'</script>","serverState":0}"#;
    for body in [
        fixture("device-masterdata"),
        fixture("device-status"),
        fixture("api-auth-creation-failed"),
        fixture("device-status-offline"),
        hostile.to_vec(),
    ] {
        assert_eq!(exporter.post(&body).await, 204);
    }
    (exporter, dir)
}

fn url(exporter: &TestExporter, path: &str) -> String {
    format!(
        "http://{USER}:{}@{}{path}",
        PASSWORD.replace(' ', "%20"),
        exporter.metrics_address()
    )
}

#[tokio::test]
async fn the_status_page_needs_the_metrics_credentials() {
    let (exporter, _dir) = exporter_with_three_locks().await;
    for path in ["/status", "/status/555000111", "/status/0"] {
        let response = exporter
            .client
            .get(format!("{}{path}", exporter.metrics_base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert!(!response.text().await.unwrap().contains("Front door"));
    }
    let wrong = exporter
        .client
        .get(format!("{}/status", exporter.metrics_base))
        .basic_auth(USER, Some("not the password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let post = exporter
        .client
        .post(format!("{}/status", exporter.metrics_base))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    exporter.shutdown().await;
}

#[tokio::test]
async fn the_fleet_page_lists_every_lock_worst_first_in_a_browser() {
    let (exporter, _dir) = exporter_with_three_locks().await;
    let dom = dump_dom(&url(&exporter, "/status")).await;

    assert!(
        dom.contains("3 locks known to this replica; <strong>2</strong> with problems."),
        "{dom}"
    );
    // The jammed, offline lock with a critical battery comes first, then the door sensor's,
    // then the lock without problems.
    let jammed = dom.find("id 555000111").expect("the jammed lock");
    let front_door = dom.find(">Front door</a>").expect("the named lock");
    let hall = dom.find("id 42").expect("the lock named by an attacker");
    assert!(jammed < front_door && front_door < hall, "{dom}");
    assert!(dom.contains("Jammed: the motor is blocked"), "{dom}");
    assert!(
        dom.contains("Offline: Nuki's server cannot reach it"),
        "{dom}"
    );
    assert!(dom.contains("Door sensor battery critical"), "{dom}");
    assert!(dom.contains("by webhook"), "{dom}");
    assert!(dom.contains("motor blocked <small>(254)</small>"), "{dom}");
    // The name reads as text: no element, and its script did not run (the title is ours).
    assert!(
        dom.contains("&lt;b&gt;Hall&lt;/b&gt; &amp; &lt;script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<b>Hall"), "{dom}");
    assert!(
        dom.contains("<title>Smart locks · nuki-exporter</title>"),
        "{dom}"
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn each_lock_has_a_page_with_its_state_source_and_failures_in_a_browser() {
    let (exporter, _dir) = exporter_with_three_locks().await;
    let dom = dump_dom(&url(&exporter, "/status/123456789")).await;
    assert!(dom.contains("<h1>Front door</h1>"), "{dom}");
    assert!(dom.contains("Door sensor battery critical"), "{dom}");
    assert!(dom.contains("90 %"), "{dom}");
    assert!(dom.contains("locked <small>(1)</small>"), "{dom}");
    assert!(dom.contains("by webhook"), "{dom}");
    assert!(
        dom.contains("<td>AuthCreation</td><td>0xFF ERROR_UNKNOWN</td><td class=\"number\">1</td>"),
        "{dom}"
    );

    let jammed = dump_dom(&url(&exporter, "/status/555000111")).await;
    for problem in [
        "Jammed: the motor is blocked",
        "Offline: Nuki's server cannot reach it",
        "Battery critical",
    ] {
        assert!(jammed.contains(problem), "{problem}: {jammed}");
    }
    assert!(jammed.contains("No failed operation counted."), "{jammed}");

    let unknown = dump_dom(&url(&exporter, "/status/7")).await;
    assert!(unknown.contains("<h1>Unknown lock</h1>"), "{unknown}");
    assert!(
        unknown.contains("knows no smart lock with id <code>7</code>"),
        "{unknown}"
    );
    exporter.shutdown().await;
}
