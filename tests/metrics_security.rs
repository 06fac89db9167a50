//! The metrics listener behind TLS, basic auth and bearer tokens: checked by promtool, scraped by
//! a real Prometheus with the scrape configuration docs/security.md shows.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Prometheus, TestExporter, fixture, run_ok, test_config, tool};

const PASSWORD: &str = "scrape-password";

/// A self-signed certificate for the test listeners' addresses: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".into(),
        "127.0.0.2".into(),
        "localhost".into(),
    ])
    .unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// Writes cert, key and an exporter-toolkit web configuration into `dir`.
fn web_config(dir: &Path, tls: bool) -> std::path::PathBuf {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let mut yaml = format!("basic_auth_users:\n  prometheus: {hash}\n");
    if tls {
        let (cert, key) = self_signed();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        yaml.push_str(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ));
    }
    let path = dir.join("web.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// GET over TLS, trusting `ca_pem`; returns status and body.
async fn https_get(
    address: &str,
    path: &str,
    ca_pem: &[u8],
    authorization: Option<&str>,
) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let host = address.rsplit_once(':').unwrap().0.to_owned();
    let name = rustls_pki_types::ServerName::try_from(host).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header("host", address);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = sender
        .send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An exporter whose metrics listener serves TLS and basic auth; the directory holds its
/// certificate (`cert.pem`), which clients trust.
async fn start_behind_tls_and_basic_auth() -> (TestExporter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.metrics.web_config_file = Some(web_config(dir.path(), true));
    (TestExporter::start_with(config).await, dir)
}

#[tokio::test]
async fn tls_and_basic_auth_on_the_metrics_listener() {
    let (exporter, dir) = start_behind_tls_and_basic_auth().await;
    assert_eq!(
        exporter.post(&fixture("api-auth-creation-failed")).await,
        204,
        "webhooks stay plain HTTP"
    );
    let address = exporter.metrics_address();
    let ca = std::fs::read(dir.path().join("cert.pem")).unwrap();

    let (status, body) = https_get(
        &address,
        "/metrics",
        &ca,
        Some(&basic_header("prometheus", PASSWORD)),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("nuki_operation_errors_total{"), "{body}");
    let (status, _) = https_get(
        &address,
        "/metrics",
        &ca,
        Some(&basic_header("prometheus", "wrong")),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = https_get(&address, "/", &ca, None).await;
    assert_eq!(status, 401, "the landing page is protected too");
    let (status, _) = https_get(&address, "/-/healthy", &ca, None).await;
    assert_eq!(status, 200, "probes need no credentials");

    // Plain HTTP on a TLS listener gets no HTTP answer: the listener accepts the connection and
    // its TLS layer refuses the bytes with an alert record (0x15) or closes the connection.
    let mut plain = tokio::net::TcpStream::connect(&address)
        .await
        .expect("the TLS listener accepts connections");
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the listener never closed the plain connection"
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "plain HTTP got an answer other than a TLS alert: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let (_, body) = https_get(
        &address,
        "/metrics",
        &ca,
        Some(&basic_header("prometheus", PASSWORD)),
    )
    .await;
    assert!(
        body.contains("nuki_exporter_webhooks_rejected_total{reason=\"unauthorized\"} 2"),
        "{body}"
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn bearer_token_on_the_metrics_listener() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "metrics-token\n").unwrap();
    let mut config = test_config();
    config.metrics.bearer_token_files = vec![token_file];
    let exporter = TestExporter::start_with(config).await;
    let url = format!("{}/metrics", exporter.metrics_base);
    let denied = exporter.client.get(&url).send().await.unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    let wrong = exporter
        .client
        .get(&url)
        .bearer_auth("other-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let granted = exporter
        .client
        .get(&url)
        .bearer_auth("metrics-token")
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status().as_u16(), 200);
    exporter.shutdown().await;
}

#[test]
fn promtool_and_the_exporter_accept_the_same_web_configuration() {
    let promtool = tool("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let generated = web_config(dir.path(), true);
    // The shipped example, with its certificate paths pointed at files that exist here.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/web-config.example.yml"
    ))
    .unwrap()
    .replace(
        "/etc/nuki-exporter/tls/metrics.crt",
        dir.path().join("cert.pem").to_str().unwrap(),
    )
    .replace(
        "/etc/nuki-exporter/tls/metrics.key",
        dir.path().join("key.pem").to_str().unwrap(),
    );
    let shipped = dir.path().join("shipped.yml");
    std::fs::write(&shipped, example).unwrap();
    for file in [generated, shipped] {
        run_ok(
            std::process::Command::new(&promtool)
                .arg("check")
                .arg("web-config")
                .arg(&file),
        );
        let mut config = test_config();
        config.metrics.web_config_file = Some(file.clone());
        nuki_exporter::runtime::loader::load(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_over_tls_with_basic_auth() {
    let (exporter, dir) = start_behind_tls_and_basic_auth().await;
    assert_eq!(
        exporter.post(&fixture("api-auth-creation-failed")).await,
        204
    );
    let target = exporter.metrics_address();
    let ca = std::fs::read(dir.path().join("cert.pem")).unwrap();
    // The scrape configuration docs/security.md shows, pointed at the test's exporter.
    let prometheus_config = format!(
        r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: nuki-exporter
    scheme: https
    tls_config:
      ca_file: ca.pem
    basic_auth:
      username: prometheus
      password_file: password
    static_configs:
      - targets: ["{target}"]
"#
    );
    let prometheus = Prometheus::start(
        &prometheus_config,
        &[("ca.pem", &ca), ("password", PASSWORD.as_bytes())],
    )
    .await;
    let up = prometheus
        .wait_for(r#"up{job="nuki-exporter"} == 1"#, Duration::from_secs(90))
        .await;
    assert_eq!(up.len(), 1);
    let errors = prometheus
        .wait_for(
            r#"nuki_operation_errors_total{error_code="0xFF",smartlock_id="123456789"}"#,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(errors[0]["value"][1], "1");
    exporter.shutdown().await;
}
