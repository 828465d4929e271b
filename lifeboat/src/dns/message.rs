//! DNS messages (RFC 1035 §4): one question out, the A or AAAA records of
//! the answer back. Nothing else of the protocol is needed by a stub that
//! asks the cluster's resolver, which follows CNAMEs and recurses for us.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const A: u16 = 1;
pub const AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Recursion desired.
const FLAG_RD: u16 = 0x0100;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;

/// A reply's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The addresses found (none: the name exists without this type).
    Found(Vec<IpAddr>),
    /// NXDOMAIN: try the next search domain.
    NoSuchName,
    /// SERVFAIL, REFUSED and the like: ask the next server.
    ServerFailed(u8),
    /// Too long for UDP: ask again over TCP.
    Truncated,
}

/// The query for `name` (without a trailing dot) and `qtype`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut m = Vec::with_capacity(18 + name.len());
    for v in [id, FLAG_RD, 1, 0, 0, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    let name = name.trim_end_matches('.');
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than a DNS name may be"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a valid host name"));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, String> {
    m.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "a DNS reply cut short".to_string())
}

/// Past the name at `at` (labels, ending in a zero or a pointer).
fn skip_name(m: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        let len = *m.get(at).ok_or("a DNS reply cut short")? as usize;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => return Ok(at + 2),
            l => at += 1 + l,
        }
    }
}

/// Reads the reply to the query `id` for `qtype`. `Err` when it is not a
/// reply to that query (a stray or forged datagram) or is malformed.
pub fn parse(m: &[u8], id: u16, name: &str, qtype: u16) -> Result<Reply, String> {
    if u16_at(m, 0)? != id {
        return Err("a DNS reply to another query".into());
    }
    let flags = u16_at(m, 2)?;
    if flags & FLAG_QR == 0 {
        return Err("a DNS message that is not a reply".into());
    }
    if flags & FLAG_TC != 0 {
        return Ok(Reply::Truncated);
    }
    match (flags & 0x000F) as u8 {
        0 => {}
        3 => return Ok(Reply::NoSuchName),
        rcode => return Ok(Reply::ServerFailed(rcode)),
    }
    let (questions, answers) = (u16_at(m, 4)?, u16_at(m, 6)?);
    if questions != 1 {
        return Err("a DNS reply without our question".into());
    }
    let at = skip_name(m, 12)? + 4;
    // The question must come back as asked (names compare without case).
    let echoed = m.get(12..at).ok_or("a DNS reply cut short")?;
    if !echoed.eq_ignore_ascii_case(&query(id, name, qtype)?[12..]) {
        return Err("a DNS reply to another question".into());
    }
    let mut at = at;
    let mut found = Vec::new();
    for _ in 0..answers {
        at = skip_name(m, at)?;
        let (rtype, class) = (u16_at(m, at)?, u16_at(m, at + 2)?);
        let len = u16_at(m, at + 8)? as usize;
        let data = m
            .get(at + 10..at + 10 + len)
            .ok_or("a DNS reply cut short")?;
        at += 10 + len;
        if class != CLASS_IN || rtype != qtype {
            continue; // CNAMEs on the way: the resolver followed them.
        }
        match (data.len(), qtype) {
            (4, A) => found.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (16, AAAA) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                found.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => return Err("a DNS address record of the wrong length".into()),
        }
    }
    Ok(Reply::Found(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::tests::reply;

    #[test]
    fn queries_and_replies_round_trip() {
        const NAME: &str = "minio.storage.svc.cluster.local.";
        let q = query(0x1234, NAME, A).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(q[12], 5);
        let ip: IpAddr = "10.96.0.7".parse().unwrap();
        let r = reply(&q, 0, &[ip], false);
        assert_eq!(parse(&r, 0x1234, NAME, A).unwrap(), Reply::Found(vec![ip]));
        assert!(parse(&r, 0x1235, NAME, A).is_err(), "another query's id");
        assert!(
            parse(&r, 0x1234, "minio.other", A).is_err(),
            "another question"
        );
        assert!(parse(&r, 0x1234, NAME, AAAA).is_err(), "another type");
        let upper = query(0x1234, "MINIO.storage.svc.cluster.local", A).unwrap();
        let r2 = reply(&upper, 0, &[ip], false);
        assert_eq!(parse(&r2, 0x1234, NAME, A).unwrap(), Reply::Found(vec![ip]));
        assert_eq!(
            parse(&reply(&q, 3, &[], false), 0x1234, NAME, A).unwrap(),
            Reply::NoSuchName
        );
        assert_eq!(
            parse(&reply(&q, 2, &[], false), 0x1234, NAME, A).unwrap(),
            Reply::ServerFailed(2)
        );
        assert_eq!(
            parse(&reply(&q, 0, &[], true), 0x1234, NAME, A).unwrap(),
            Reply::Truncated
        );
        assert!(
            parse(&r[..r.len() - 2], 0x1234, NAME, A).is_err(),
            "cut short"
        );
        assert!(query(1, "a..b", A).is_err());
        assert!(query(1, &"x".repeat(64), A).is_err());
    }
}
