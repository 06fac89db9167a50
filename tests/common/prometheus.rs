//! A real Prometheus server for the tests that query what the exporter serves.

use super::*;

/// A real Prometheus server (Debian's `prometheus` binary).
pub struct Prometheus(pub Daemon);

impl Prometheus {
    /// Starts Prometheus with this configuration (YAML text) and waits until it is ready.
    /// `files` are written beside the configuration first (rule files, CA certificates, …).
    pub async fn start(config: &str, files: &[(&str, &[u8])]) -> Self {
        let mut files = files.to_vec();
        files.push(("prometheus.yml", config.as_bytes()));
        let args = [
            "--config.file={dir}/prometheus.yml",
            "--storage.tsdb.path={dir}/data",
            "--web.listen-address=127.0.0.1:0",
        ];
        Self(Daemon::start("prometheus", "prometheus", &args, &files).await)
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    pub fn log(&self) -> String {
        self.0.log()
    }

    /// The result vector of an instant query.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let response: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["status"], "success", "{promql}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls a query until it returns at least one sample, up to `timeout`.
    pub async fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let result = self.query(promql).await;
            if !result.is_empty() {
                return result;
            }
            if std::time::Instant::now() > deadline {
                let targets = reqwest::get(format!("{}/api/v1/targets", self.url()))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                panic!("{promql} stayed empty; targets: {targets}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
