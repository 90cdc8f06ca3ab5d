//! Accepts callers' connections (HTTP/1.1, or HTTP/2 with prior knowledge) and serves each
//! on its own task. On shutdown: stop accepting, let requests in flight finish for up to
//! [`GRACE`], then close what is left.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

use super::forward::Forwarder;

/// How long requests in flight may take to finish once the agent stops.
pub const GRACE: Duration = Duration::from_secs(10);
/// A caller has this long to send a request head (slow-header attacks).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    listener: tokio::net::TcpListener,
    forwarder: Arc<Forwarder>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(%error, "the proxy cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let forwarder = forwarder.clone();
                let service = service_fn(move |request| forwarder.clone().handle(request));
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "proxy connection ended with an error");
                    }
                });
            }
            _ = async { stop.wait_for(|stop| *stop).await.map(drop) } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight through the proxy after {}s; closing them", GRACE.as_secs());
    }
}
