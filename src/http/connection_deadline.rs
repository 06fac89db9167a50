//! One timer per connection for the three limits on it: a request head must arrive within
//! `limits.header_read_timeout` of the connection's start or of the last response; the handler
//! must answer within `limits.request_timeout` (it answers 408 otherwise); and the response must
//! be written within `limits.request_timeout`, or the connection is dropped: a client that asks
//! for `/metrics` and never reads would otherwise hold it, and a copy of the exposition, for as
//! long as it likes.
//!
//! One timer, not one per limit and request: hyper's header-read timeout and a
//! `tokio::time::timeout` per request each put a timer into tokio's wheel and took it out again
//! on every webhook. Here a request only moves one deadline later, which tokio does with a
//! compare-and-swap; the timer stays in the wheel until the deadline it was put there for, and is
//! moved then. And one clock read: a request passes through all three phases, usually within one
//! poll of its connection, and the deadline is set once that poll ends, from the phase it ended
//! in.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What a connection waits for, and so which limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// A request head (or the first byte of one).
    Head,
    /// The handler's response.
    Handler,
    /// The client reading the response.
    Response,
}

/// The deadline of one connection, moved on by its service and its IO as a request passes
/// through; [`ConnectionDeadline::enforce`] acts when it passes.
#[derive(Debug)]
pub struct ConnectionDeadline {
    header_read_timeout: Duration,
    phase: AtomicU8,
    /// The current phase's limit, in nanoseconds.
    limit: AtomicU64,
    /// A phase began since [`ConnectionDeadline::enforce`] last set the deadline.
    moved: AtomicBool,
    /// The handler's time ran out: it answers 408 when next polled.
    handler_expired: AtomicBool,
}

/// How a connection under [`ConnectionDeadline::enforce`] ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// By itself: the client closed it, or the server refused or finished it.
    Served(Result<(), E>),
    /// No complete request head within `limits.header_read_timeout`.
    HeaderReadTimeout,
    /// The handler neither answered within its time nor, told so, with a 408.
    HandlerTimeout,
    /// The client did not read the response within `limits.request_timeout`.
    WriteTimeout,
}

impl ConnectionDeadline {
    /// A new connection: its first request head is due within `header_read_timeout`.
    pub fn new(header_read_timeout: Duration) -> Self {
        Self {
            header_read_timeout,
            phase: AtomicU8::new(Phase::Head as u8),
            limit: AtomicU64::new(nanos(header_read_timeout)),
            moved: AtomicBool::new(false),
            handler_expired: AtomicBool::new(false),
        }
    }

    /// A request's head arrived: its handler has `limit` to answer.
    pub fn handler_started(&self, limit: Duration) {
        self.handler_expired.store(false, Ordering::Relaxed);
        self.enter(Phase::Handler, limit);
    }

    /// Whether the running handler's time ran out.
    pub fn handler_expired(&self) -> bool {
        self.handler_expired.load(Ordering::Relaxed)
    }

    /// The handler answered: the client has `limit` to read the response.
    pub fn response_ready(&self, limit: Duration) {
        self.enter(Phase::Response, limit);
    }

    /// The response is out: the next request head is due.
    fn response_written(&self) {
        if self.phase() == Phase::Response {
            self.enter(Phase::Head, self.header_read_timeout);
        }
    }

    fn enter(&self, phase: Phase, limit: Duration) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.limit.store(nanos(limit), Ordering::Relaxed);
        self.moved.store(true, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Handler,
            _ => Phase::Response,
        }
    }

    /// Serves `connection` (whose service and IO move this deadline) until it ends or the
    /// deadline of its current phase passes.
    pub async fn enforce<E>(&self, connection: impl Future<Output = Result<(), E>>) -> Ended<E> {
        let mut connection = pin!(connection);
        let mut timer = pin!(tokio::time::sleep(self.header_read_timeout));
        poll_fn(|cx| {
            loop {
                if let Poll::Ready(served) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Ended::Served(served));
                }
                // The phase the poll ended in began during it: its limit counts from now.
                if self.moved.swap(false, Ordering::Relaxed) {
                    let limit = Duration::from_nanos(self.limit.load(Ordering::Relaxed));
                    timer.as_mut().reset(Instant::now() + limit);
                }
                ready!(timer.as_mut().poll(cx));
                match self.phase() {
                    Phase::Head => return Poll::Ready(Ended::HeaderReadTimeout),
                    Phase::Response => return Poll::Ready(Ended::WriteTimeout),
                    // Polled again, the handler answers 408 (and the response phase begins).
                    Phase::Handler if !self.handler_expired.swap(true, Ordering::Relaxed) => {}
                    Phase::Handler => return Poll::Ready(Ended::HandlerTimeout),
                }
            }
        })
        .await
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A connection's IO stream that tells its [`ConnectionDeadline`] when a response is out: when
/// the server flushes with nothing left to write.
pub struct DeadlineIo<T> {
    inner: T,
    deadline: Arc<ConnectionDeadline>,
}

impl<T> DeadlineIo<T> {
    pub fn new(inner: T, deadline: Arc<ConnectionDeadline>) -> Self {
        Self { inner, deadline }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes once it has handed every byte of what it had to write to the stream.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.deadline.response_written();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const LIMIT: Duration = Duration::from_secs(4);

    /// A connection that never ends by itself.
    async fn forever() -> Result<(), ()> {
        std::future::pending().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_head_ends_after_the_header_read_timeout() {
        let deadline = ConnectionDeadline::new(HEAD);
        let started = Instant::now();
        assert!(matches!(
            deadline.enforce(forever()).await,
            Ended::HeaderReadTimeout
        ));
        assert_eq!(started.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_is_told_to_answer_and_its_response_then_has_its_own_time() {
        let deadline = Arc::new(ConnectionDeadline::new(HEAD));
        let started = Instant::now();
        let handler = Arc::clone(&deadline);
        let connection = async move {
            handler.handler_started(LIMIT);
            // The handler waits for a body that never comes, until it is told to answer.
            poll_fn(|_| {
                if handler.handler_expired() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            assert_eq!(started.elapsed(), LIMIT);
            handler.response_ready(LIMIT);
            forever().await
        };
        // The response is never read: cut off after its own limit.
        assert!(matches!(
            deadline.enforce(connection).await,
            Ended::WriteTimeout
        ));
        assert_eq!(started.elapsed(), LIMIT * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_does_not_answer_when_told_is_cut_off() {
        let deadline = Arc::new(ConnectionDeadline::new(HEAD));
        let handler = Arc::clone(&deadline);
        let connection = async move {
            handler.handler_started(LIMIT);
            forever().await
        };
        let started = Instant::now();
        assert!(matches!(
            deadline.enforce(connection).await,
            Ended::HandlerTimeout
        ));
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_moves_the_deadline_and_a_written_response_restarts_the_header_wait() {
        let deadline = Arc::new(ConnectionDeadline::new(HEAD));
        let (client, server) = tokio::io::duplex(1024);
        let mut io = DeadlineIo::new(server, Arc::clone(&deadline));
        let service = Arc::clone(&deadline);
        let started = Instant::now();
        let connection = async move {
            // Three requests, each 9 s after the last response: never 10 s without a head.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                service.handler_started(LIMIT);
                service.response_ready(LIMIT);
                io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
                io.flush().await?;
            }
            // Idle after the third response: the header wait is what ends it.
            std::future::pending::<io::Result<()>>().await
        };
        assert!(matches!(
            deadline.enforce(connection).await,
            Ended::HeaderReadTimeout
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(27) + HEAD);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_by_itself_reports_how() {
        let deadline = ConnectionDeadline::new(HEAD);
        assert!(matches!(
            deadline.enforce(async { Err::<(), _>("closed") }).await,
            Ended::Served(Err("closed"))
        ));
    }
}
