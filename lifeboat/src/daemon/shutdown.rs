//! Shutdown requests as one stream: SIGTERM and SIGINT in a process, a
//! channel in tests. The first request asks for a drain, a second one means
//! stop now.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

pub struct Shutdown(Requests);

enum Requests {
    Signals { term: Signal, int: Signal },
    Channel(mpsc::UnboundedReceiver<()>),
}

impl Shutdown {
    /// SIGTERM and SIGINT; from now on they no longer end the process.
    pub fn signals() -> std::io::Result<Self> {
        Ok(Shutdown(Requests::Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        }))
    }

    /// Requests sent by hand (tests); none come once the sender is gone.
    pub fn channel() -> (mpsc::UnboundedSender<()>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Shutdown(Requests::Channel(rx)))
    }

    /// The next request.
    pub async fn recv(&mut self) {
        match &mut self.0 {
            Requests::Signals { term, int } => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            Requests::Channel(rx) => {
                if rx.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
