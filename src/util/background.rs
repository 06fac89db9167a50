//! Work that must never take CPU time from the threads that answer webhooks: a thread of its
//! own at a lower CPU priority. Recording a Web API poll runs on a [`BackgroundThread`] (jobs
//! one at a time); encoding `/metrics` runs on [`crate::store::scrape::EncoderThread`], which shares
//! one encode among the scrapes waiting for it. One thread per kind of job also keeps its
//! memory in one allocator arena, reused from one job to the next.
//!
//! A lower priority alone does not keep a long job (a 100,000-series encode is about 20 ms of
//! CPU) from stalling the webhook threads: once a background thread has the core, the kernel
//! lets it run to the end of its time slice, which on a 250 Hz kernel can last up to a 4 ms
//! tick. So a long job calls [`pause_point`] between its pieces, and a background thread that has
//! run [`BACKGROUND_SLICE`] since its last pause sleeps for a moment: a waiting webhook thread
//! gets the core at once. Sleeping, unlike `sched_yield`, keeps the thread's fair share: on
//! EEVDF a yield pushes the thread behind every runnable one, and scrapes then starved behind a
//! busy webhook thread (docs/benchmark.md).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The niceness of background threads: below the webhook threads, above idle.
pub const BACKGROUND_NICENESS: libc::c_int = 10;

/// The longest a background thread runs between two pauses: the most a webhook waits for it.
pub const BACKGROUND_SLICE: Duration = Duration::from_micros(250);

/// How long a pause sleeps. The thread leaves the run queue, whoever waits for the core gets it,
/// and the thread comes back behind them. Long enough that the timer has not fired before the
/// thread is off the core (a 1 ns sleep returns without a context switch); short enough that on
/// an idle core a 100,000-series encode (about 80 pauses) takes under 2 ms longer.
const PAUSE: Duration = Duration::from_micros(20);

thread_local! {
    /// When the current background thread last paused; `None` on every other thread.
    static LAST_PAUSE: Cell<Option<Instant>> = const { Cell::new(None) };
}

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
            shorten_timer_slack();
            LAST_PAUSE.set(Some(Instant::now()));
            body();
        })?;
    Ok(())
}

/// Between two pieces of a long job: on a background thread that has run [`BACKGROUND_SLICE`]
/// since its last pause, gives the core back for a moment; elsewhere, nothing.
pub fn pause_point() {
    let Some(last) = LAST_PAUSE.get() else {
        return;
    };
    if last.elapsed() >= BACKGROUND_SLICE {
        std::thread::sleep(PAUSE);
        LAST_PAUSE.set(Some(Instant::now()));
    }
}

/// Raises the calling thread's niceness (Linux gives each thread its own).
fn lower_current_thread_priority() {
    // SAFETY: setpriority only reads its integer arguments; `who = 0` is the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICENESS) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps the default priority");
    }
}

/// Sets the calling thread's timer slack to 1 ns, so that a [`pause_point`] lasts its [`PAUSE`],
/// not 50 µs more (the default slack).
fn shorten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK reads one integer argument and applies to the calling thread.
    let result = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps the default timer slack");
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

    /// The calling thread's voluntary context switches: each sleep adds one.
    fn voluntary_switches() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Busy with pause points for `busy`: (sleeps taken, time it took).
    fn busy_with_pause_points(busy: Duration) -> (u64, Duration) {
        let before = voluntary_switches();
        let start = Instant::now();
        while start.elapsed() < busy {
            pause_point();
        }
        (voluntary_switches() - before, start.elapsed())
    }

    #[test]
    fn a_background_thread_pauses_at_most_once_per_slice_and_other_threads_never() {
        let busy = BACKGROUND_SLICE * 40;
        let (report, reported) = mpsc::channel();
        spawn_low_priority("pause-test", move || {
            // SAFETY: PR_GET_TIMERSLACK takes no argument and reads the calling thread's slack.
            let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
            report.send((slack, busy_with_pause_points(busy))).unwrap();
        })
        .unwrap();
        let (slack, (pauses, took)) = reported.recv().unwrap();
        assert_eq!(slack, 1, "the background thread's timer slack in ns");
        let most = took.as_micros() / BACKGROUND_SLICE.as_micros() + 1;
        assert!(
            (1..=most as u64).contains(&pauses),
            "{pauses} pauses in {took:?} of work"
        );

        let (pauses_here, took_here) = busy_with_pause_points(busy);
        assert!(
            pauses_here < 3,
            "{pauses_here} sleeps in {took_here:?} on a thread that is not a background one"
        );
    }
}
