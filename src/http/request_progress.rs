//! Tells a request cut by `limits.header_read_timeout` from an idle keep-alive connection.
//!
//! The header-read timeout (the connection's deadline while it waits for a request head, see
//! [`crate::http::connection_deadline`]) also closes a keep-alive connection that waits for its
//! next request, which is how every persistent scrape connection ends when the scrape interval (15 s)
//! is longer than the timeout (10 s). Only a connection whose client had started a request, and
//! did not finish its headers in time, tripped the limit. [`RequestProgress`] wraps a connection's
//! stream and remembers whether bytes arrived since the server last wrote (a response, or a TLS
//! handshake message).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that records whether the client sent bytes after the server's last write.
pub struct RequestProgress<S> {
    inner: S,
    started: Arc<AtomicBool>,
}

/// Read by the connection's task after hyper gave up on it.
#[derive(Clone)]
pub struct RequestStarted(Arc<AtomicBool>);

impl RequestStarted {
    /// Whether the client had sent part of a request that the server did not answer yet.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<S> RequestProgress<S> {
    pub fn new(inner: S) -> (Self, RequestStarted) {
        let started = Arc::new(AtomicBool::new(false));
        let progress = Self {
            inner,
            started: Arc::clone(&started),
        };
        (progress, RequestStarted(started))
    }

    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.started.store(false, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RequestProgress<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.started.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RequestProgress<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_from_the_client_start_a_request_and_a_response_ends_it() {
        let (client, server) = tokio::io::duplex(64);
        let (mut server, started) = RequestProgress::new(server);
        let mut client = client;
        assert!(!started.get(), "a new connection has sent nothing");

        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buffer = [0u8; 64];
        let n = server.read(&mut buffer).await.unwrap();
        assert_eq!(n, 16);
        assert!(started.get(), "part of a request arrived");

        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!started.get(), "answered: the connection is idle");

        client.write_all(b"G").await.unwrap();
        let _ = server.read(&mut buffer).await.unwrap();
        assert!(started.get(), "the next request began");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_no_request() {
        let (client, server) = tokio::io::duplex(64);
        let (mut server, started) = RequestProgress::new(server);
        drop(client);
        let mut buffer = [0u8; 8];
        assert_eq!(server.read(&mut buffer).await.unwrap(), 0);
        assert!(!started.get());
    }
}
