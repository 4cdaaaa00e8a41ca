//! Server-wide limits on what requests hold while they run: upload bodies in
//! flight and manifest bytes buffered in memory. A request past a limit is
//! refused at once with `429 TOOMANYREQUESTS` instead of waiting, so a crowd of
//! slow clients cannot queue up everyone else behind them.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;
use crate::error::{Error, Result};

pub struct Limits {
    uploads: Arc<Semaphore>,
    uploads_in_flight: Gauge,
    manifest_bytes: Arc<Semaphore>,
    pub body_idle: Duration,
}

impl Limits {
    /// `uploads_in_flight` follows the upload slots taken.
    pub fn new(config: &LimitsConfig, uploads_in_flight: Gauge) -> Self {
        Limits {
            uploads: Arc::new(Semaphore::new(config.max_uploads as usize)),
            uploads_in_flight,
            manifest_bytes: Arc::new(Semaphore::new(config.manifest_buffer_bytes.min(1 << 40) as usize)),
            body_idle: Duration::from_secs(config.body_idle_timeout_secs),
        }
    }

    /// A slot for one upload body, held until the request ends.
    pub fn upload(&self) -> Result<UploadSlot> {
        let permit = self.uploads.clone().try_acquire_owned().map_err(|_| {
            Error::TooManyRequests("the registry is receiving too many uploads at once; retry shortly".into())
        })?;
        self.uploads_in_flight.inc();
        Ok(UploadSlot { _permit: permit, gauge: self.uploads_in_flight.clone() })
    }

    /// A budget for one manifest body, grown as its bytes arrive.
    pub fn manifest_budget(&self) -> ManifestBudget {
        ManifestBudget { pool: self.manifest_bytes.clone(), held: None }
    }
}

/// One upload body's slot, given back (and uncounted) when dropped.
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

pub struct ManifestBudget {
    pool: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl ManifestBudget {
    /// Reserves `n` more bytes, or refuses the request when the server holds too
    /// many manifest bytes already.
    pub fn take(&mut self, n: usize) -> Result<()> {
        let busy =
            || Error::TooManyRequests("the registry is receiving too many manifests at once; retry shortly".into());
        let n = u32::try_from(n).map_err(|_| busy())?;
        let permit = self.pool.clone().try_acquire_many_owned(n).map_err(|_| busy())?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

/// `body` with an idle limit: a body that sends nothing for `idle` ends with a
/// `TimedOut` error instead of holding its request open forever.
pub fn with_idle_timeout<S>(body: S, idle: Duration) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no data for {} s", idle.as_secs()));
                Some((Err(e), None))
            }
        }
    })
}
