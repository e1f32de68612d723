//! A loopback TCP proxy that can take its upstream away: what a client sees of a database
//! server restart (every connection reset, new ones refused until it is back), without
//! restarting a server other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; it stops when dropped.
pub(crate) struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Bumped on every outage; connections opened before it close.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (generation, watcher) = watch::channel(0u64);
        let task = tokio::spawn({
            let down = down.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    if down.load(Ordering::SeqCst) {
                        // Refused: closed before a byte, as a port nobody listens on would be
                        // to a client that already connected.
                        drop(client);
                        continue;
                    }
                    tokio::spawn(forward(client, upstream, watcher.clone()));
                }
            }
        });
        Proxy { addr, down, generation, task }
    }

    /// The address clients connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every open connection and refuses new ones for `length`: a server restart.
    pub(crate) async fn outage(&self, length: Duration) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
        tokio::time::sleep(length).await;
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    generation.mark_unchanged();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        // Dropping both streams closes them: the client sees its connection die mid-session.
        _ = generation.changed() => {}
    }
}
