//! SIGTERM and SIGINT as one stream of shutdown requests: the first asks for
//! a drain, a second one means stop now.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    pub fn new() -> std::io::Result<Self> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
