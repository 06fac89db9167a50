//! Blocking file I/O that may hang, run off the threads that serve requests, with a deadline.
//!
//! Secret and token files often sit on a network or CSI secret mount, whose `open` or `read`
//! can block for as long as the mount is stuck. Read on a worker thread of the runtime, that
//! would stop `/metrics`, webhooks and `/-/ready` with it (all of them, on a pod with one CPU).
//! A [`Reader`] runs such reads on a thread of its own and waits at most a deadline for them.
//! One read at a time: while an earlier read is still stuck, a new one fails at once instead of
//! starting another thread, so a hung mount costs one thread however often it is asked. What a
//! stuck read returns once the mount answers again is discarded: the caller has moved on.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a secret or token file may take to read.
pub const FILE_READ_DEADLINE: Duration = Duration::from_secs(5);

/// A read that did not finish in time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stalled {
    #[error("{what}: not read within {} (a hung mount?); nothing was changed", humantime::format_duration(*.deadline))]
    TimedOut { what: String, deadline: Duration },
    #[error("{what}: still not read after {} (the earlier read has not returned; nothing is tried until it does)", humantime::format_duration(*.waiting))]
    StillWaiting { what: String, waiting: Duration },
    #[error("cannot start a thread to read files: {0}")]
    NoThread(String),
}

/// What the running read is doing, and since when.
#[derive(Default)]
struct Busy {
    what: String,
    since: Option<Instant>,
}

/// Runs blocking reads on a thread of its own, one at a time, each with a deadline.
pub struct Reader {
    thread_name: &'static str,
    busy: Arc<Mutex<Option<Busy>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("thread_name", &self.thread_name)
            .finish_non_exhaustive()
    }
}

/// Tells the [`Reader`] what a read is reading now, for the error when it gets stuck.
pub struct Progress(Arc<Mutex<Option<Busy>>>);

impl Progress {
    pub fn reading(&self, what: String) {
        if let Some(busy) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            busy.what = what;
        }
    }
}

/// Marks the reader idle when the read's thread ends, even by a panic.
struct Finished(Arc<Mutex<Option<Busy>>>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Reader {
    /// A reader whose threads are named `thread_name`.
    pub fn new(thread_name: &'static str) -> Self {
        Self {
            thread_name,
            busy: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `read` on a thread of its own and waits for it at most `deadline`.
    pub async fn run<T: Send + 'static>(
        &self,
        deadline: Duration,
        read: impl FnOnce(&Progress) -> T + Send + 'static,
    ) -> Result<T, Stalled> {
        {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(earlier) = busy.as_ref() {
                return Err(Stalled::StillWaiting {
                    what: earlier.what.clone(),
                    waiting: earlier
                        .since
                        .map_or(Duration::ZERO, |since| since.elapsed()),
                });
            }
            *busy = Some(Busy {
                what: "the files".into(),
                since: Some(Instant::now()),
            });
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (progress, finished) = (
            Progress(Arc::clone(&self.busy)),
            Finished(Arc::clone(&self.busy)),
        );
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name(self.thread_name.into())
            .spawn(move || {
                let value = read(&progress);
                let what = progress
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map(|busy| busy.what.clone());
                // Idle before answering: whoever waits for the late answer may ask again at once.
                drop(finished);
                if answer.send(value).is_err() {
                    tracing::warn!(
                        reading = what.as_deref().unwrap_or("the files"),
                        after = %humantime::format_duration(round(started.elapsed())),
                        "a read that had timed out returned at last; what it read was discarded"
                    );
                }
            });
        if let Err(error) = spawned {
            self.busy
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            return Err(Stalled::NoThread(error.to_string()));
        }
        match tokio::time::timeout(deadline, answered).await {
            Ok(Ok(value)) => Ok(value),
            // The read panicked: its thread is gone, and so is the mark.
            Ok(Err(_)) => Err(Stalled::NoThread("the reading thread panicked".into())),
            Err(_) => Err(Stalled::TimedOut {
                what: self
                    .busy
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map_or_else(|| "the files".into(), |busy| busy.what.clone()),
                deadline,
            }),
        }
    }
}

/// A duration to the millisecond, for log lines.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn a_stuck_read_times_out_and_blocks_no_second_thread() {
        let reader = Reader::new("test-read");
        assert_eq!(reader.run(Duration::from_secs(5), |_| 7).await.unwrap(), 7);

        let (release, released) = mpsc::channel::<()>();
        let stuck = reader
            .run(Duration::from_millis(50), move |progress| {
                progress.reading("webhook.secret_files /mnt/hung".into());
                released.recv().unwrap();
                1
            })
            .await
            .unwrap_err();
        assert!(matches!(stuck, Stalled::TimedOut { .. }), "{stuck}");
        let message = stuck.to_string();
        assert!(
            message.contains("/mnt/hung") && message.contains("not read within"),
            "{message}"
        );

        let started = Instant::now();
        let refused = reader.run(Duration::from_secs(5), |_| 2).await.unwrap_err();
        assert!(matches!(refused, Stalled::StillWaiting { .. }), "{refused}");
        assert!(refused.to_string().contains("/mnt/hung"), "{refused}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );

        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reader.run(Duration::from_secs(5), |_| 3).await {
                Ok(value) => break assert_eq!(value, 3),
                Err(Stalled::StillWaiting { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
}
