//! `berth-registry forward`: a TCP forwarder for node access. Run on every node
//! with host networking, it listens on `127.0.0.1:<port>` and forwards each
//! connection to the registry's Service, so container runtimes can pull
//! `localhost:<port>/...` images (plain HTTP is allowed for localhost) without
//! TLS or runtime configuration.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Forwards every accepted connection to `upstream` (resolved per connection,
/// so a changed Service address is picked up) until `shutdown` resolves.
pub async fn run(listener: TcpListener, upstream: String, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (mut client, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let result = async {
                let mut server = TcpStream::connect(&upstream).await?;
                client.set_nodelay(true)?;
                server.set_nodelay(true)?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(%peer, %upstream, error = %e, "forwarded connection ended with an error");
            }
        });
    }
}
