//! Serving a simulator: plain HTTP or HTTPS, in the foreground or a background task, with its
//! admin routes and the connection-drop fault.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use tower::ServiceExt as _;

use crate::faults::{self, Injected, SimFaults};
use crate::record::{self, SimLog};
use crate::tls::SelfSigned;

/// A vendor simulator as the serving code sees it. Implement the four required methods; the
/// rest is provided (bring the trait into scope to call them).
pub trait Sim: Clone + Send + Sync + 'static {
    /// A short name for logs (`carbonblack`).
    fn name(&self) -> &'static str;
    /// The vendor's routes (with the simulator's own auth, limits and faults).
    fn vendor_router(&self) -> Router;
    /// The certificate served over HTTPS.
    fn tls(&self) -> &SelfSigned;
    /// What the simulator executed.
    fn log(&self) -> &SimLog;
    /// The simulator's counters as JSON (served on `GET /_sim/counters`).
    fn counters_json(&self) -> serde_json::Value;

    /// The simulator's fault settings ([`crate::faults`]); `None` (the default) serves the
    /// vendor's routes without the fault layer.
    fn faults(&self) -> Option<&SimFaults> {
        None
    }

    /// Whether a request changes an endpoint (vendor knowledge: kill, isolate, a live-response
    /// command), for the `lose_answer_after_effect` fault and the `side_effects_processed`
    /// count. Default: none.
    fn is_side_effect(&self, _method: &axum::http::Method, _path: &str) -> bool {
        false
    }

    /// What the vendor answers when it is unavailable or rate limiting (its own status and
    /// body); the default is a plain 503 or 429 with `Retry-After`.
    fn fault_response(&self, injected: Injected) -> Response {
        faults::plain_response(injected)
    }

    /// The vendor's routes behind the fault layer, plus the admin routes under `/_sim/`
    /// (`/_sim/log`, `/_sim/counters`, `/_sim/faults`), which are never faulted.
    fn router(&self) -> Router {
        let mut vendor = self.vendor_router();
        let faults = self.faults().cloned();
        if let Some(f) = &faults {
            let (side, respond) = (self.clone(), self.clone());
            let layer = faults::Layer {
                faults: f.clone(),
                is_side_effect: std::sync::Arc::new(move |m, p| side.is_side_effect(m, p)),
                respond: std::sync::Arc::new(move |i| respond.fault_response(i)),
            };
            vendor = vendor.layer(axum::middleware::from_fn_with_state(layer, faults::layer));
        }
        let sim = self.clone();
        let stats = faults.clone();
        let admin = record::admin_router(
            self.log().clone(),
            move || sim.counters_json(),
            move || stats.as_ref().map(|f| serde_json::to_value(f.stats()).unwrap_or_default()),
        );
        match faults {
            Some(f) => vendor.merge(admin).merge(faults::admin_router(f)),
            None => vendor.merge(admin),
        }
    }

    /// Serves plain HTTP on `listener` until the future is dropped.
    fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            let listener = listener.into_std()?;
            axum_server::from_tcp(listener).serve(make_service(self.router())).await
        }
    }

    /// Serves HTTPS with [`Sim::tls`] on an already bound listener (bind `127.0.0.1:0` to
    /// learn the port first).
    fn serve_tls_on(
        self,
        listener: std::net::TcpListener,
    ) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            listener.set_nonblocking(true)?;
            let config = self.tls().rustls_config().await?;
            axum_server::tls_rustls::from_tcp_rustls(listener, config)
                .serve(make_service(self.router()))
                .await
        }
    }

    /// Binds `127.0.0.1:0`, serves plain HTTP in a background task, returns the address.
    fn spawn(&self) -> impl Future<Output = io::Result<SocketAddr>> + Send {
        let sim = self.clone();
        async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let name = sim.name();
            tokio::spawn(async move {
                if let Err(error) = sim.serve(listener).await {
                    tracing::error!(%error, simulator = name, "simulator stopped");
                }
            });
            Ok(addr)
        }
    }

    /// Binds `127.0.0.1:0`, serves HTTPS in a background task, returns the address.
    fn spawn_tls(&self) -> impl Future<Output = io::Result<SocketAddr>> + Send {
        let sim = self.clone();
        async move {
            // Fail here, not inside the task, when the certificate cannot be made.
            sim.tls().cert_pem()?;
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            let addr = listener.local_addr()?;
            let name = sim.name();
            tokio::spawn(async move {
                if let Err(error) = sim.serve_tls_on(listener).await {
                    tracing::error!(%error, simulator = name, "simulator (tls) stopped");
                }
            });
            Ok(addr)
        }
    }

    /// PEM of the self-signed certificate (SANs `localhost`, `127.0.0.1`).
    fn cert_pem(&self) -> io::Result<String> {
        self.tls().cert_pem()
    }

    /// SHA-256 of the certificate (DER, hex), for `pinned_cert_sha256`.
    fn cert_sha256(&self) -> io::Result<String> {
        self.tls().cert_sha256()
    }
}

/// Marker a response carries when the connection must close without it reaching the client
/// (a request lost on the network, or an answer lost after the server acted).
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// A response that is never delivered: under [`Sim::serve`]/[`Sim::serve_tls_on`] the
/// connection closes without a byte written; through a bare router the body errors, which
/// aborts the response mid-flight.
pub fn dropped() -> Response {
    let body = axum::body::Body::from_stream(futures::stream::once(async {
        Err::<bytes::Bytes, io::Error>(io::Error::other("fault injection: connection dropped"))
    }));
    let mut resp = Response::new(body);
    resp.extensions_mut().insert(DropConnection);
    resp
}

/// Error that makes hyper close the connection without writing a response.
#[derive(Debug)]
struct DroppedByFault;

impl std::fmt::Display for DroppedByFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedByFault {}

/// Router wrapper that turns a [`DropConnection`] response into a service error, which hyper
/// answers by closing the connection (the closest thing to a real network drop).
#[derive(Clone)]
struct DropAware(Router);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> tower::Service<axum::http::Request<B>> for DropAware
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = DroppedByFault;
    type Future = BoxFuture<Result<Response, DroppedByFault>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let router = self.0.clone();
        Box::pin(async move {
            let req: Request = req.map(axum::body::Body::new);
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            if resp.extensions().get::<DropConnection>().is_some() {
                Err(DroppedByFault)
            } else {
                Ok(resp)
            }
        })
    }
}

#[derive(Clone)]
struct MakeDropAware(DropAware);

impl<T> tower::Service<T> for MakeDropAware {
    type Response = DropAware;
    type Error = Infallible;
    type Future = std::future::Ready<Result<DropAware, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _target: T) -> Self::Future {
        std::future::ready(Ok(self.0.clone()))
    }
}

fn make_service(router: Router) -> MakeDropAware {
    MakeDropAware(DropAware(router))
}
