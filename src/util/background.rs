//! Work that must never take CPU time from the threads that answer webhooks: a thread of its
//! own at a lower CPU priority. Recording a Web API poll runs on a [`BackgroundThread`] (jobs
//! one at a time); encoding `/metrics` runs on [`crate::store::scrape::EncoderThread`], which shares
//! one encode among the scrapes waiting for it. One thread per kind of job also keeps its
//! memory in one allocator arena, reused from one job to the next.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

/// The niceness of background threads: below the webhook threads, above idle.
pub const BACKGROUND_NICENESS: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job gave no result.
#[derive(Debug, thiserror::Error)]
pub enum JobFailed {
    /// The job panicked; the thread lives on and runs the next job.
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("the background thread is gone")]
    Gone,
}

/// A named background thread; it ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct BackgroundThread {
    jobs: mpsc::Sender<Job>,
}

impl BackgroundThread {
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        spawn_low_priority(name, move || {
            for job in queue {
                job();
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the thread after the jobs queued before it. A job that panics fails
    /// alone: its panic is caught, and the thread goes on with the next job.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                // Whatever the job held is dropped by the unwinding; the next job starts afresh.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(job))
                    .map_err(|panic| JobFailed::Panicked(panic_message(panic.as_ref())));
                let _ = reply.send(outcome);
            }))
            .map_err(|_| JobFailed::Gone)?;
        result.await.map_err(|_| JobFailed::Gone)?
    }
}

/// The message a panic was raised with (`panic!` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `body` on a new thread named `name` at [`BACKGROUND_NICENESS`].
pub fn spawn_low_priority(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_current_thread_priority();
            body();
        })?;
    Ok(())
}

/// Raises the calling thread's niceness (Linux gives each thread its own).
fn lower_current_thread_priority() {
    // SAFETY: setpriority only reads its integer arguments; `who = 0` is the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICENESS) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps the default priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_the_named_thread() {
        let thread = BackgroundThread::spawn("background-test").unwrap();
        let first = thread.run(|| std::thread::current().name().map(str::to_owned));
        let second = thread.run(|| 2);
        assert_eq!(first.await.unwrap().as_deref(), Some("background-test"));
        assert_eq!(second.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_runs_the_next_one() {
        let thread = BackgroundThread::spawn("background-panic-test").unwrap();
        let failed = thread
            .run(|| -> u32 { panic!("injected for the test") })
            .await;
        assert!(
            matches!(&failed, Err(JobFailed::Panicked(message)) if message == "injected for the test"),
            "{failed:?}"
        );
        assert_eq!(thread.run(|| 3).await.unwrap(), 3);
    }
}
