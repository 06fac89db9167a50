//! Work that must never take CPU time from the threads that answer webhooks: a thread of its
//! own at a lower CPU priority. Recording a Web API poll runs on a [`BackgroundThread`] (jobs
//! one at a time); encoding `/metrics` runs on [`crate::store::scrape::EncoderThread`], which shares
//! one encode among the scrapes waiting for it. One thread per kind of job also keeps its
//! memory in one allocator arena, reused from one job to the next.

use std::sync::mpsc;

/// The niceness of background threads: below the webhook threads, above idle.
pub const BACKGROUND_NICENESS: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send>;

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

    /// Runs `job` on the thread after the jobs queued before it; `None` if the thread is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(job());
            }))
            .ok()?;
        result.await.ok()
    }
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
        assert_eq!(second.await, Some(2));
    }
}
