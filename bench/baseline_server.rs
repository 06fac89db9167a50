//! The benchmark's baseline: the "physical limit" that nuki-exporter is compared against.
//!
//! A bare hyper 1.x server with the exporter's runtime and connection setup (tokio multi-thread
//! runtime, TCP_NODELAY, one task per connection, HTTP/1.1 keep-alive) that reads the whole
//! request body and answers `204 No Content`. No routing, no signature check, no parsing, no
//! metrics, no timeouts or connection limits: whatever the exporter spends beyond this is the
//! cost of its own work.
//!
//! Usage: `baseline_server [ADDRESS] [http1|auto]` (default `127.0.0.1:18090 http1`). `http1`
//! serves connections with hyper's `http1::Builder`, as the exporter does since it went
//! HTTP/1.1-only; `auto` with hyper-util's `auto::Builder` (HTTP/1.1 or h2 by preface), as it did
//! before. The two differ only when a connection starts, not per request. Runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as the exporter must before it can check the signature.
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    std::hint::black_box(body);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

fn main() {
    const USAGE: &str = "usage: baseline_server [ADDRESS:PORT] [http1|auto]";
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:18090")
        .parse()
        .expect(USAGE);
    let auto_builder = match args.next().as_deref() {
        None | Some("http1") => false,
        Some("auto") => true,
        Some(_) => panic!("{USAGE}"),
    };
    // `Runtime::new()` is what the exporter's main uses: multi-thread, one worker per CPU the
    // process may run on (one when pinned with `taskset -c 0`).
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(address).await.expect("bind");
        eprintln!("baseline_server listening on {address}");
        let http1 = http1::Builder::new();
        let auto = auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("accept: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            if auto_builder {
                let connection = auto.serve_connection(io, service_fn(handle)).into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            } else {
                let connection = http1.serve_connection(io, service_fn(handle));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        }
    });
}
