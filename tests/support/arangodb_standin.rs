//! The e2e suite's ArangoDB: the test double of `fake_arango` as a server
//! (no ArangoDB installs here; `tests/e2e/images.py` puts this binary in
//! the `arangodb` stand-in image). Like the official image it needs
//! `ARANGO_ROOT_PASSWORD`, listens on port 8529 of every address and starts
//! with only `_system`; unlike it, it keeps its data in memory.

use std::net::TcpListener;

use lifeboat_tests::fake_arango::FakeArango;

extern "C" fn stop(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

fn main() {
    let Ok(password) = std::env::var("ARANGO_ROOT_PASSWORD") else {
        eprintln!("arangodb-standin: ARANGO_ROOT_PASSWORD is required, as for the official image");
        std::process::exit(2);
    };
    let listen = std::env::var("ARANGO_STANDIN_LISTEN").unwrap_or_else(|_| "0.0.0.0:8529".into());
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("arangodb-standin: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    // As PID 1 of its container a signal's default action is ignored: stop
    // on TERM and INT ourselves, so pod deletion does not wait for SIGKILL.
    // SAFETY: installs a plain function as the handler.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let server = FakeArango::empty_on(listener, &password, 1000);
    eprintln!(
        "arangodb-standin: a test double of ArangoDB's HTTP API on {listen} (port {}), data in memory",
        server.port
    );
    loop {
        std::thread::park();
    }
}
