//! A server binary run in its own temporary directory, stopped when the test ends.

use super::*;

/// A server binary of the Prometheus project (Debian's packages), run in its own temporary
/// directory on a free loopback port, killed when dropped.
pub struct Daemon {
    /// Declared first: killed before the directory it runs in is removed.
    child: ChildGuard,
    pub url: String,
    name: &'static str,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes `files` into a fresh directory, starts `binary` there with `args` (each may use
    /// `{dir}`; they make it listen on port 0), reads the address it bound from its log, and
    /// waits until `/-/ready` answers 200.
    pub async fn start(
        name: &'static str,
        package: &str,
        args: &[&str],
        files: &[(&str, &[u8])],
    ) -> Self {
        let binary = tool(name, package);
        let dir = tempfile::tempdir().unwrap();
        for (file, content) in files {
            std::fs::write(dir.path().join(file), content).unwrap();
        }
        let dir_text = dir.path().to_str().unwrap().to_owned();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = ChildGuard::spawn(
            Command::new(binary)
                .args(args.iter().map(|arg| arg.replace("{dir}", &dir_text)))
                .current_dir(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let mut daemon = Self {
            child,
            url: String::new(),
            name,
            dir,
        };
        // exporter-toolkit logs the bound address: msg="Listening on" address=127.0.0.1:41893
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let address = loop {
            let log = daemon.log();
            if let Some(rest) = log.split("msg=\"Listening on\" address=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never logged its address:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        daemon.url = format!("http://{address}");
        let client = reqwest::Client::new();
        while std::time::Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/-/ready", daemon.url)).send().await {
                if response.status().is_success() {
                    return daemon;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} never became ready:\n{}", daemon.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}
