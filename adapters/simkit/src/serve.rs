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

    /// The vendor's routes plus the admin routes under `/_sim/`.
    fn router(&self) -> Router {
        let sim = self.clone();
        self.vendor_router().merge(record::admin_router(self.log().clone(), move || {
            sim.counters_json()
        }))
    }

    /// Serves plain HTTP on `listener` until the future is dropped.
    fn serve(self, listener: tokio::net::TcpListener) -> impl Future<Output = io::Result<()>> + Send {
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
