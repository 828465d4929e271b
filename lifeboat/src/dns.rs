//! Host name lookups that do not go through libc.
//!
//! The release binaries are static glibc on `scratch`. There, glibc's
//! `getaddrinfo` tries to load its NSS modules, finds none, and fails every
//! name, even `localhost` (`Temporary failure in name resolution`). So
//! lookups are done here the way a pod's libc would: `/etc/hosts` first,
//! then the `nameserver`s of `/etc/resolv.conf` with its `search` list and
//! `ndots`, `timeout` and `attempts` options (the kubelet writes both files
//! into every container). A stub resolver: the cluster's DNS server follows
//! CNAMEs and recurses. A DNS library for this cost more code than the rest
//! of the lookup (README, "Binary size"). Every client that resolves names
//! (S3, the HTTP clients, PostgreSQL) asks here.

mod message;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use message::Reply;

const HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What `/etc/resolv.conf` says, with glibc's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
    attempts: usize,
}

impl ResolvConf {
    fn parse(text: &str) -> Self {
        let mut c = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let ip = words.next().and_then(|w| w.split('%').next()?.parse().ok());
                    if let Some(ip) = ip {
                        c.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") | Some("domain") => {
                    c.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for opt in words {
                        let (k, v) = opt.split_once(':').unwrap_or((opt, ""));
                        let n = v.parse::<usize>().ok();
                        match (k, n) {
                            ("ndots", Some(n)) => c.ndots = n.min(15),
                            ("timeout", Some(n)) => {
                                c.timeout = Duration::from_secs(n.clamp(1, 30) as u64)
                            }
                            ("attempts", Some(n)) => c.attempts = n.clamp(1, 5),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        c.nameservers.truncate(3);
        c
    }

    /// The names to ask for, in order: as given first when it has at least
    /// `ndots` dots, else after the search domains; only itself when it
    /// ends in a dot.
    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// The addresses `/etc/hosts` gives `name`.
fn in_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    text.lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// Addresses of `host`: an IP literal as is, else `/etc/hosts` then DNS.
pub async fn lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let hosts = std::fs::read_to_string(HOSTS).unwrap_or_default();
    let found = in_hosts(&hosts, host);
    if !found.is_empty() {
        return Ok(found);
    }
    let conf = match std::fs::read_to_string(RESOLV_CONF) {
        Ok(text) => ResolvConf::parse(&text),
        Err(e) => {
            // Outside a container libc works; inside one this file exists.
            tracing::debug!("no {RESOLV_CONF} ({e}); {host} resolves through libc");
            return libc_lookup(host).await;
        }
    };
    resolve(&conf, host).await
}

async fn libc_lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let found: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .map(|a| a.ip())
        .collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no addresses"),
        ));
    }
    Ok(found)
}

async fn resolve(conf: &ResolvConf, host: &str) -> io::Result<Vec<IpAddr>> {
    if conf.nameservers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot resolve {host}: no nameserver in {RESOLV_CONF}"),
        ));
    }
    let mut failed = None;
    for name in conf.candidates(host) {
        // IPv4 first: many clusters have no IPv6 route.
        let (v4, v6) = tokio::join!(
            ask(conf, &name, message::A),
            ask(conf, &name, message::AAAA)
        );
        let found: Vec<IpAddr> = [&v4, &v6]
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Found(ips) => Some(ips.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        // As glibc's search: no server answering stops it (a later search
        // domain must not answer for a name the right one would have);
        // no such name, no addresses or a failing server move on.
        for o in [v4, v6] {
            match o {
                Outcome::Unanswered(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot resolve {host}: {e}"),
                    ))
                }
                Outcome::ServerFailed(why) => failed = Some(why),
                _ => {}
            }
        }
    }
    Err(match failed {
        Some(why) => io::Error::other(format!("cannot resolve {host}: {why}")),
        None => io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot resolve {host}: no such host"),
        ),
    })
}

/// What the servers said about one name and type.
enum Outcome {
    /// Addresses (none: the name exists without this type).
    Found(Vec<IpAddr>),
    NoSuchName,
    /// Every server answered, none usefully (SERVFAIL, REFUSED).
    ServerFailed(String),
    /// Some server did not answer at all.
    Unanswered(io::Error),
}

/// Asks the servers in turn, `attempts` rounds.
async fn ask(conf: &ResolvConf, name: &str, qtype: u16) -> Outcome {
    let mut last = Outcome::Unanswered(io::Error::new(
        io::ErrorKind::TimedOut,
        "no DNS server answered",
    ));
    for _ in 0..conf.attempts {
        for &server in &conf.nameservers {
            match exchange(server, name, qtype, conf.timeout).await {
                Ok(Reply::Found(ips)) => return Outcome::Found(ips),
                Ok(Reply::NoSuchName) => return Outcome::NoSuchName,
                Ok(Reply::ServerFailed(code)) => {
                    last = Outcome::ServerFailed(format!(
                        "the DNS server {server} failed (rcode {code})"
                    ));
                }
                Ok(Reply::Truncated) => {
                    last = Outcome::ServerFailed(format!(
                        "the DNS server {server} sent a truncated answer over TCP"
                    ));
                }
                Err(e) => last = Outcome::Unanswered(e),
            }
        }
    }
    last
}

/// One question to one server: over UDP, and again over TCP when the
/// answer did not fit.
async fn exchange(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    limit: Duration,
) -> io::Result<Reply> {
    let id = query_id();
    let query = message::query(id, name, qtype).map_err(io::Error::other)?;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the DNS server {server} did not answer within {}s",
                limit.as_secs()
            ),
        )
    };
    let udp = async {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        socket.send(&query).await?;
        let mut buf = vec![0u8; 1232];
        loop {
            let n = socket.recv(&mut buf).await?;
            // A datagram that is not the answer (late, stray) is ignored.
            if let Ok(reply) = message::parse(&buf[..n], id, name, qtype) {
                return io::Result::Ok(reply);
            }
        }
    };
    let reply = tokio::time::timeout(limit, udp)
        .await
        .map_err(|_| timed_out())??;
    if reply != Reply::Truncated {
        return Ok(reply);
    }
    let tcp = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        message::parse(&buf, id, name, qtype).map_err(io::Error::other)
    };
    tokio::time::timeout(limit, tcp)
        .await
        .map_err(|_| timed_out())?
}

/// A query id no one on the path can guess from the last one.
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply to `q` as a resolver sends it: a CNAME, then `ips`.
    pub(crate) fn reply(q: &[u8], rcode: u8, ips: &[IpAddr], truncated: bool) -> Vec<u8> {
        let mut m = q.to_vec();
        let flags = 0x8000 | 0x0100 | 0x0080 | rcode as u16 | if truncated { 0x0200 } else { 0 };
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(ips.len() as u16 + 1).to_be_bytes());
        // CNAME from the question's name (pointer to offset 12) to "x.y".
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 5, 1, b'x', 1, b'y', 0]);
        for ip in ips {
            let (t, data) = match ip {
                IpAddr::V4(v) => (message::A, v.octets().to_vec()),
                IpAddr::V6(v) => (message::AAAA, v.octets().to_vec()),
            };
            m.extend_from_slice(&[0xC0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(&data);
        }
        m
    }

    #[tokio::test]
    async fn literals_and_localhost_resolve() {
        assert_eq!(
            lookup("127.0.0.1").await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup("[::1]").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let local = lookup("localhost").await.unwrap();
        assert!(local.iter().all(|ip| ip.is_loopback()), "{local:?}");
    }

    #[test]
    fn a_pods_resolv_conf_and_hosts_read_as_libc_reads_them() {
        let c = ResolvConf::parse(
            "search apps.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver fe80::1%eth0\n# nameserver 1.1.1.1\n\
             options ndots:5 timeout:2 attempts:3 edns0\n",
        );
        assert_eq!(c.nameservers.len(), 2);
        assert_eq!(c.nameservers[0], "10.96.0.10:53".parse().unwrap());
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (5, Duration::from_secs(2), 3)
        );
        assert_eq!(
            c.candidates("minio.storage"),
            [
                "minio.storage.apps.svc.cluster.local",
                "minio.storage.svc.cluster.local",
                "minio.storage.cluster.local",
                "minio.storage",
            ]
        );
        assert_eq!(c.candidates("s3.amazonaws.com."), ["s3.amazonaws.com"]);
        let plain = ResolvConf::parse("search corp\nnameserver 192.0.2.1\n");
        assert_eq!(plain.candidates("db.corp"), ["db.corp", "db.corp.corp"]);
        let hosts = "127.0.0.1 localhost\n10.0.0.5 minio minio.local # comment\n# 10.0.0.6 minio\n";
        assert_eq!(
            in_hosts(hosts, "MINIO."),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(in_hosts(hosts, "other").is_empty());
    }

    /// A FAKE DNS server (RFC 1035 over UDP and TCP on 127.0.0.1): only
    /// `minio.storage.cluster.local` exists; its A answer is truncated over
    /// UDP, so the address must come over TCP.
    #[tokio::test]
    async fn search_domains_are_tried_in_order_and_a_truncated_answer_is_asked_again_over_tcp() {
        // One port for both: a free UDP port may be taken for TCP by
        // another test running beside this one, so try a few.
        let mut tries = 0;
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("port {addr} is taken for TCP ({e}); trying another");
                }
                Err(e) => panic!("no port free for both UDP and TCP: {e}"),
            }
        };
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let answer = move |q: &[u8], over_tcp: bool| {
            let wanted = b"\x05minio\x07storage\x07cluster\x05local\x00";
            let exists = q.len() > 12 && q[12..].starts_with(wanted);
            let qtype = u16::from_be_bytes([q[q.len() - 4], q[q.len() - 3]]);
            match (exists, qtype) {
                (false, _) => reply(q, 3, &[], false),
                (true, message::A) => reply(q, 0, &[ip], !over_tcp),
                (true, _) => reply(q, 0, &[], false),
            }
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                let r = answer(&buf[..n], false);
                udp.send_to(&r, from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                let len = s.read_u16().await.unwrap() as usize;
                let mut q = vec![0u8; len];
                s.read_exact(&mut q).await.unwrap();
                let r = answer(&q, true);
                s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
                s.write_all(&r).await.unwrap();
            }
        });
        let conf = ResolvConf {
            nameservers: vec![addr],
            search: vec!["apps.svc.cluster.local".into(), "cluster.local".into()],
            ndots: 5,
            timeout: Duration::from_secs(2),
            attempts: 1,
        };
        assert_eq!(resolve(&conf, "minio.storage").await.unwrap(), vec![ip]);
        let err = resolve(&conf, "nothing.here").await.unwrap_err();
        assert!(err.to_string().contains("no such host"), "{err}");
    }
}
