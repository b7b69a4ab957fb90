//! SIGTERM/SIGINT -> a cancelled `CancellationToken`. Nothing else.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Cancels `stop` on the first SIGTERM or SIGINT.
pub fn on_signal(stop: CancellationToken) {
    tokio::spawn(async move {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
            () = stop.cancelled() => return,
        }
        stop.cancel();
    });
}
