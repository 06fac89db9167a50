//! The quickstart's Alertmanager receiver: takes Alertmanager's webhook notifications and
//! prints one line per alert on stdout, so that the end of the alert path is in the terminal.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The path Alertmanager posts to.
pub const PATH: &str = "/alerts";
/// Alertmanager's notifications of one group stay far below this.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Binds `address` and prints every notification posted to it, in the background.
pub async fn serve(address: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (the alert receiver): {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    service_fn(|request| async { Ok::<_, Infallible>(receive(request).await) });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn receive(request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        return answer(StatusCode::NOT_FOUND);
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    else {
        return answer(StatusCode::BAD_REQUEST);
    };
    match serde_json::from_slice::<Value>(&body.to_bytes()) {
        Ok(notification) => {
            for line in lines(&notification) {
                println!("{line}");
            }
            answer(StatusCode::OK)
        }
        Err(_) => answer(StatusCode::BAD_REQUEST),
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

/// One line per alert of an Alertmanager webhook notification: status, name, severity, the
/// lock or bridge it is about, and its summary.
pub fn lines(notification: &Value) -> Vec<String> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    notification["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            let labels = &alert["labels"];
            let subject = ["smartlock_id", "bridge", "api_key_id"]
                .iter()
                .find_map(|key| labels[key].as_str().map(|value| format!(" {key}={value}")))
                .unwrap_or_default();
            format!(
                "[alert {status}] {name} ({severity}){subject}: {summary}",
                status = text(&alert["status"]),
                name = text(&labels["alertname"]),
                severity = text(&labels["severity"]),
                summary = text(&alert["annotations"]["summary"]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_alert_of_a_notification_is_one_line_naming_its_lock() {
        let notification = serde_json::json!({
            "status": "firing",
            "alerts": [
                {"status": "firing",
                 "labels": {"alertname": "NukiSmartlockUnreachable", "severity": "warning", "smartlock_id": "17000002"},
                 "annotations": {"summary": "A smart lock is unreachable."}},
                {"status": "resolved",
                 "labels": {"alertname": "NukiBridgeDown", "severity": "warning", "bridge": "demo"},
                 "annotations": {}},
            ]
        });
        assert_eq!(
            lines(&notification),
            [
                "[alert firing] NukiSmartlockUnreachable (warning) smartlock_id=17000002: A smart lock is unreachable.",
                "[alert resolved] NukiBridgeDown (warning) bridge=demo: ",
            ]
        );
    }
}
