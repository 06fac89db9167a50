//! A Kubernetes API server stand-in for the Lease API (coordination.k8s.io/v1), since no
//! cluster is reachable from CI: `GET`, `POST` and `PATCH` of
//! `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]` with the documented shapes.
//!
//! Like the real server it keeps a `resourceVersion` per object, bumped on every write, and
//! refuses a write whose body names an older one with 409 Conflict (the optimistic concurrency
//! the Lease protocol rests on); 404 NotFound for an absent Lease, 409 AlreadyExists for a
//! second create, 401 without the bearer token; errors are `Status` objects. It can be told
//! to fail every request (401, 403, 503) or to answer slowly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const TOKEN: &str = "service-account-token-0815";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

#[derive(Default)]
struct State {
    /// Leases by (namespace, name).
    leases: BTreeMap<(String, String), Value>,
    /// The last resourceVersion handed out, over all objects, as on a real server.
    version: u64,
    /// Answer every request with this status.
    failing: Option<StatusCode>,
    /// Answer every request this late.
    delay: Duration,
    /// Requests answered: (method, status).
    requests: Vec<(Method, u16)>,
}

pub struct KubeApiStub {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl KubeApiStub {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let delay = state.lock().unwrap().delay;
                        tokio::time::sleep(delay).await;
                        let method = request.method().clone();
                        let response = answer(&state, request).await;
                        let status = response.status().as_u16();
                        state.lock().unwrap().requests.push((method, status));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { address, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The `holderIdentity` of a Lease, `None` when it is absent or unheld.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        self.state()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }

    /// A Lease as stored.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Answers every request with `status` from now on (`None`: answers again).
    pub fn set_failing(&self, status: Option<StatusCode>) {
        self.state().failing = status;
    }

    /// Answers every request after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// How many requests were answered with `status`.
    pub fn answered(&self, status: u16) -> usize {
        let state = self.state();
        state.requests.iter().filter(|(_, s)| *s == status).count()
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

fn object(code: StatusCode, lease: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(lease.to_string())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// `namespace` and, for an object path, `name`, of a Lease path.
fn lease_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix(LEASES)?;
    let (namespace, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("leases")?;
    match name.strip_prefix('/') {
        Some(name) if !name.is_empty() && !name.contains('/') => {
            Some((namespace.to_owned(), Some(name.to_owned())))
        }
        None if name.is_empty() => Some((namespace.to_owned(), None)),
        _ => None,
    }
}

async fn answer(
    state: &Mutex<State>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(code) = state.lock().unwrap().failing {
        let reason = match code {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            _ => "ServiceUnavailable",
        };
        return status(code, reason, format!("the stand-in answers {code}"));
    }
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|value| value.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    }
    let Some((namespace, name)) = lease_path(request.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    };
    let method = request.method().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        }
    };
    let mut state = state.lock().unwrap();
    match (method, name) {
        (Method::GET, Some(name)) => match state.leases.get(&(namespace, name.clone())) {
            Some(lease) => object(StatusCode::OK, lease),
            None => not_found(&name),
        },
        (Method::POST, None) => {
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value".into(),
                );
            };
            let key = (namespace.clone(), name.clone());
            if state.leases.contains_key(&key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            state.version += 1;
            let mut lease = body;
            lease["apiVersion"] = json!("coordination.k8s.io/v1");
            lease["kind"] = json!("Lease");
            lease["metadata"]["namespace"] = json!(namespace);
            lease["metadata"]["resourceVersion"] = json!(state.version.to_string());
            lease["metadata"]["uid"] = json!(format!("uid-{}", state.version));
            if lease.get("spec").is_none_or(Value::is_null) {
                lease["spec"] = json!({});
            }
            state.leases.insert(key, lease.clone());
            object(StatusCode::CREATED, &lease)
        }
        // Server-side apply (force), strategic-merge and merge patches of a Lease's scalar
        // fields all come down to a JSON merge of `spec` (null removes a field).
        (Method::PATCH, Some(name)) => {
            let version = state.version + 1;
            let Some(lease) = state.leases.get_mut(&(namespace, name.clone())) else {
                return not_found(&name);
            };
            let expected = body["metadata"]["resourceVersion"].as_str();
            if expected.is_some_and(|v| Some(v) != lease["metadata"]["resourceVersion"].as_str()) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            if let Some(fields) = body["spec"].as_object() {
                let spec = lease["spec"].as_object_mut().unwrap();
                for (field, value) in fields {
                    if value.is_null() {
                        spec.remove(field);
                    } else {
                        spec.insert(field.clone(), value.clone());
                    }
                }
            }
            lease["metadata"]["resourceVersion"] = json!(version.to_string());
            let lease = lease.clone();
            state.version = version;
            object(StatusCode::OK, &lease)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed".into(),
        ),
    }
}

fn not_found(name: &str) -> Response<Full<Bytes>> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}
