//! An exporter started in this test process on loopback ports of its choice, and exact
//! lookups in a real scrape of it (or of any metrics address).

use nuki_exporter::Exporter;
use nuki_exporter::source::webhook::signature::{HEADER, sign};

use super::*;

pub struct TestExporter {
    exporter: Option<Exporter>,
    pub webhook_url: String,
    pub metrics_base: String,
    pub client: reqwest::Client,
}

impl TestExporter {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let exporter = Exporter::start(&config).await.expect("exporter starts");
        let webhook_url = format!("http://{}{}", exporter.webhook_addr(), config.webhook.path);
        let metrics_base = format!("http://{}", exporter.metrics_addr());
        Self {
            exporter: Some(exporter),
            webhook_url,
            metrics_base,
            client: reqwest::Client::new(),
        }
    }

    /// `host:port` of the webhook listener, for raw TCP clients.
    pub fn webhook_address(&self) -> String {
        host_and_port(&self.webhook_url)
    }

    /// `host:port` of the metrics listener.
    pub fn metrics_address(&self) -> String {
        host_and_port(&self.metrics_base)
    }

    /// Takes the exporter out, e.g. to shut it down while requests are in flight.
    pub fn take(&mut self) -> Exporter {
        self.exporter.take().expect("exporter still running")
    }

    /// POSTs a body signed with [`SECRET`]; returns the status code.
    pub async fn post(&self, body: &[u8]) -> u16 {
        self.post_signed(body, Some(&sign(SECRET.as_bytes(), body)))
            .await
    }

    pub async fn post_signed(&self, body: &[u8], signature: Option<&str>) -> u16 {
        let mut request = self.client.post(&self.webhook_url).body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(HEADER, signature);
        }
        request
            .send()
            .await
            .expect("webhook request")
            .status()
            .as_u16()
    }

    /// GETs `/metrics` and checks it is a 200 with the Prometheus content type.
    pub async fn scrape(&self) -> Scrape {
        let response = self
            .client
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        Scrape(response.text().await.unwrap())
    }

    /// Scrapes until `ready` holds, for at most `timeout`; returns the scrape that satisfied it.
    pub async fn scrape_until(&self, timeout: Duration, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let scrape = self.scrape().await;
            if ready(&scrape) {
                return scrape;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met within {timeout:?}; last scrape:\n{}",
                scrape.0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        self.take().shutdown().await;
    }
}

fn host_and_port(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A `/metrics` exposition, with exact series lookups independent of label order.
pub struct Scrape(pub String);

/// One scrape of the `/metrics` of a process listening at `metrics` (`host:port`).
pub async fn scrape_address(metrics: &str) -> Scrape {
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape(body)
}

impl Scrape {
    /// The value of the series with exactly these labels, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples(name)
            .into_iter()
            .find(|(labels, _)| *labels == wanted)
            .map(|(_, value)| value)
    }

    /// Every sample of a metric: its labels and value.
    pub fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(series, _, _)| series == name)
            .map(|(_, labels, value)| (labels, value))
            .collect()
    }

    /// The sum over every sample of a metric whose labels include these.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, value)| value)
            .sum()
    }

    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}
