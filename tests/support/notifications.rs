//! A notification receiver (`LIFEBOAT_NOTIFY_URL`) for the tests: a real
//! HTTP listener on 127.0.0.1 that keeps each JSON body it is sent.

pub type Bodies = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A notification receiver on 127.0.0.1 that answers 200 and keeps the bodies.
pub fn receiver() -> (u16, Bodies) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Bodies = Default::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(req) = crate::read_request(&mut std::io::BufReader::new(&stream)) else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice(&req.body) {
                seen.lock().unwrap().push(v);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}
