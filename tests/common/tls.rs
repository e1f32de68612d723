//! HTTPS in front of a test gateway, which serves plain HTTP: for clients that refuse
//! `http://` URLs, such as cbapi (CONN `Connection.__init__`). A loopback proxy that
//! terminates TLS with the simulators' self-signed certificate ([`edrgate_simkit::SelfSigned`],
//! SANs `localhost` and `127.0.0.1`) and forwards the bytes to the gateway; clients either
//! skip verification (cbapi's `ssl_verify=False`) or trust [`TlsFront::cert_pem`].
//!
//! Usage: `let front = TlsFront::start(gateway.addr).await;` then `front.url("/cb")`. After
//! [`super::Gateway::crash_and_restart`] the gateway listens on another port: start a new
//! front for it.

use std::net::SocketAddr;

use axum_server::accept::Accept as _;
use axum_server::tls_rustls::RustlsAcceptor;
use edrgate_simkit::SelfSigned;
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it stops when dropped.
pub(crate) struct TlsFront {
    addr: SocketAddr,
    cert_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free loopback port; every connection's TLS is terminated there and its
    /// plaintext sent to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> TlsFront {
        let cert = SelfSigned::new();
        let cert_pem = cert.cert_pem().expect("a self-signed certificate");
        let config = cert.rustls_config().await.expect("a TLS configuration");
        let acceptor = RustlsAcceptor::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake (a client that gave up) ends that connection only.
                    let Ok((mut tls, ())) = acceptor.accept(client, ()).await else { return };
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        TlsFront { addr, cert_pem, task }
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the certificate the front presents, for clients that verify it.
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
