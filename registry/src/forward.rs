//! `berth-registry forward`: a TCP forwarder for node access. Run on every node
//! with host networking, it listens on `127.0.0.1:<port>` and forwards each
//! connection to the registry's Service, so container runtimes can pull
//! `localhost:<port>/...` images (plain HTTP is allowed for localhost) without
//! TLS or runtime configuration.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::net::{self, Activity, Tracked};

/// The forwarder's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection that moves no byte either way for this long is closed, so
    /// clients that vanish without a FIN cannot pile up.
    pub idle_timeout: Duration,
    /// How long the upstream may take to accept a connection.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { idle_timeout: Duration::from_secs(120), connect_timeout: Duration::from_secs(10) }
    }
}

/// Forwards every accepted connection to `upstream` (resolved per connection,
/// so a changed Service address is picked up) until `shutdown` resolves. Accept
/// errors are logged and survived.
pub async fn run(
    listener: TcpListener,
    upstream: String,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return Ok(()),
        };
        let Some((client, peer)) = net::accepted(accepted).await else {
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &upstream, limits).await {
                tracing::debug!(%peer, %upstream, error = %e, "forwarded connection ended with an error");
            }
        });
    }
}

async fn forward(mut client: TcpStream, upstream: &str, limits: Limits) -> io::Result<()> {
    let mut server = tokio::time::timeout(limits.connect_timeout, TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting upstream timed out"))??;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let activity = Arc::new(Activity::new());
    let mut client = Tracked::new(&mut client, activity.clone());
    let mut server = Tracked::new(&mut server, activity.clone());
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => copied.map(|_| ()),
        _ = activity.idle_for(limits.idle_timeout) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
    }
}
