//! The `nuki-exporter` binary as a child process: one-shot commands and running servers.

use super::*;

/// The `nuki-exporter` binary, without any NUKI_EXPORTER_* variable of the test's environment.
pub fn exporter_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nuki-exporter"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NUKI_EXPORTER_") {
            command.env_remove(key);
        }
    }
    command
}

/// The `nuki-exporter` binary on loopback ports of its choice (JSON log, so that
/// [`Running::address_of`] finds them), accepting webhooks signed with [`SECRET`], keeping its
/// last-known state in `state_file` (written every 100 ms).
pub fn exporter_with_state_file(state_file: &std::path::Path) -> Command {
    let mut command = exporter_command();
    command
        .env("NUKI_EXPORTER_WEBHOOK__LISTEN", "127.0.0.1:0")
        .env("NUKI_EXPORTER_METRICS__LISTEN", "127.0.0.2:0")
        .env("NUKI_EXPORTER_WEBHOOK__SECRETS", format!("[{SECRET}]"))
        .env("NUKI_EXPORTER_LOG__FORMAT", "json")
        .env("NUKI_EXPORTER_STATE__FILE", state_file)
        .env("NUKI_EXPORTER_STATE__WRITE_INTERVAL", "100ms");
    command
}

/// What a finished command printed, and whether it exited 0.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stdout followed by stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to its end (stdin empty, stdout and stderr captured).
pub fn run(command: &mut Command) -> Ran {
    let child = ChildGuard::spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output();
    Ran {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs a command; on a non-zero exit the test fails with the command line and its output.
/// Returns stdout followed by stderr.
pub fn run_ok(command: &mut Command) -> String {
    let ran = run(command);
    assert!(
        ran.ok,
        "{command:?} failed\n--- stdout\n{}\n--- stderr\n{}",
        ran.stdout, ran.stderr
    );
    ran.output()
}

/// How long a running binary may stay silent before [`Running::wait_for`] gives up: a hang,
/// not a slow start on a loaded machine.
pub const LOG_LINE_DEADLINE: Duration = Duration::from_secs(90);

/// A running binary whose stderr lines arrive on a channel; killed when dropped.
pub struct Running {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = ChildGuard::spawn(command.stderr(Stdio::piped()).stdout(Stdio::null()))
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stderr = child.take_stderr().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text` and returns it.
    pub fn wait_for(&mut self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LOG_LINE_DEADLINE)
                .unwrap_or_else(|_| {
                    panic!("no log line with {text:?}; saw:\n{}", self.seen.join("\n"))
                });
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        self.child.signal(signal);
    }

    /// Sends SIGKILL (`kill -9`): no shutdown, no last write; returns every log line.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill();
        self.seen.extend(self.lines.iter());
        self.seen
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the exit (at most `deadline`) without blocking the async runtime; returns
    /// whether it was clean and every log line.
    pub async fn exited_within(mut self, deadline: Duration) -> (bool, Vec<String>) {
        let status = self.child.exited_within(deadline).await;
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen)
    }

    /// Waits for the exit (at most [`process::EXIT_DEADLINE`]), blocking the calling thread;
    /// returns whether it was clean and every log line.
    pub fn wait_exit(mut self) -> (bool, Vec<String>) {
        let status = self.child.wait_within(process::EXIT_DEADLINE);
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen)
    }

    /// Sends SIGTERM; returns whether the exit was clean and every log line.
    pub fn terminate(self) -> (bool, Vec<String>) {
        self.sigterm();
        self.wait_exit()
    }

    /// The process's resident memory (`VmRSS`) and its peak so far (`VmHWM`), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// With `log.format = "json"`: the address of the listener named `listener`.
    pub fn address_of(&mut self, listener: &str) -> String {
        loop {
            let line = self.wait_for("listening");
            let line: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if line["fields"]["listener"] == listener {
                return line["fields"]["address"].as_str().unwrap().to_owned();
            }
        }
    }
}
