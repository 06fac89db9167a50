//! The exporter's own HTTP clients: the demo fleet's sender, the container health check, the
//! Nuki Bridge poller, and the Nuki Web API's HTTPS connector.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The plain-HTTP client of [`new`].
pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

/// A plain-HTTP client with connection reuse.
pub fn new() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain-HTTP client that opens a connection per request: for a Nuki Bridge, which serves
/// one connection at a time and drops idle ones.
pub fn without_keep_alive() -> PlainClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// An HTTPS (and plain HTTP) connector trusting the webpki roots: the trust store is built
/// into the binary, so TLS works the same in the distroless image, in a scratch image and on a
/// host without CA certificates.
pub fn webpki_https() -> hyper_rustls::HttpsConnector<HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("ring offers the default TLS versions")
        .https_or_http()
        .enable_http1()
        .build()
}

/// Asks `url` once, within five seconds: `Ok` for a 200.
pub async fn probe(url: &hyper::Uri) -> Result<(), String> {
    let request = new().get(url.clone());
    match tokio::time::timeout(Duration::from_secs(5), request).await {
        Ok(Ok(response)) if response.status() == hyper::StatusCode::OK => Ok(()),
        Ok(Ok(response)) => Err(format!("{url} answered {}", response.status())),
        Ok(Err(error)) => Err(format!("cannot reach {url}: {error}")),
        Err(_) => Err(format!("{url} did not answer within 5 s")),
    }
}
