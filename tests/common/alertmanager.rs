//! A real Alertmanager for the tests of the alert path.

use super::*;

/// A real Alertmanager (Debian's `prometheus-alertmanager` binary), clustering off.
pub struct Alertmanager(pub Daemon);

impl Alertmanager {
    pub async fn start(config: &str, files: &[(&str, &[u8])]) -> Self {
        let mut files = files.to_vec();
        files.push(("alertmanager.yml", config.as_bytes()));
        let args = [
            "--config.file={dir}/alertmanager.yml",
            "--storage.path={dir}/data",
            "--web.listen-address=127.0.0.1:0",
            "--cluster.listen-address=",
        ];
        Self(
            Daemon::start(
                "prometheus-alertmanager",
                "prometheus-alertmanager",
                &args,
                &files,
            )
            .await,
        )
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }
}
