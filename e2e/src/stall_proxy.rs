//! A TCP proxy that can stall: it forwards bytes both ways (TLS passes through untouched)
//! until [`StallProxy::stall`], after which every connection, old or new, stays open and
//! silent, as a hung apiserver connection does. Only the process pointed at the proxy is
//! cut off; everything else keeps reaching the upstream directly.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; when dropped it stops accepting and held connections close.
pub struct StallProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stalled, watch_stalled) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stalled = watch_stalled.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, stalled.clone()),
                            pump(server_read, client_write, stalled),
                        );
                    }
                });
            }
        });
        Ok(Self {
            addr,
            stalled,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on nothing is forwarded; connections are held open.
    pub fn stall(&self) {
        let _ = self.stalled.send(true);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either side closes; once stalled, holds both forever.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if *stalled.borrow() {
            // Hold the sockets and forward nothing; return (closing them) once the proxy
            // is dropped and the channel with it.
            let _ = stalled.wait_for(|s| !*s).await;
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = stalled.wait_for(|s| *s) => continue,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if *stalled.borrow() {
                    continue;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
