//! Host name lookups that do not go through libc.
//!
//! The release binaries are static glibc on `scratch`. There, glibc's
//! `getaddrinfo` tries to load its NSS modules, finds none, and fails every
//! name, even `localhost` (`Temporary failure in name resolution`). hickory
//! reads `/etc/hosts` and `/etc/resolv.conf` itself, which the kubelet
//! writes into every container. Every client that resolves names (S3,
//! CouchDB/ArangoDB over HTTP, PostgreSQL) asks here.

use std::io;
use std::net::IpAddr;
use std::sync::OnceLock;

use hickory_resolver::TokioResolver;

/// The resolver, or `None` when `/etc/resolv.conf` cannot be read (then libc
/// is the only option left; outside a container it works).
fn resolver() -> &'static Option<TokioResolver> {
    static RESOLVER: OnceLock<Option<TokioResolver>> = OnceLock::new();
    RESOLVER.get_or_init(|| match TokioResolver::builder_tokio() {
        Ok(b) => b.build().ok(),
        Err(e) => {
            tracing::debug!("no /etc/resolv.conf ({e}); names resolve through libc");
            None
        }
    })
}

/// Addresses of `host`: an IP literal as is, else `/etc/hosts` then DNS.
pub async fn lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found: Vec<IpAddr> = match resolver() {
        Some(r) => r
            .lookup_ip(host)
            .await
            .map_err(|e| io::Error::other(format!("cannot resolve {host}: {e}")))?
            .iter()
            .collect(),
        None => tokio::net::lookup_host((host, 0))
            .await?
            .map(|a| a.ip())
            .collect(),
    };
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no addresses"),
        ));
    }
    Ok(found)
}

/// The adapter the AWS SDK wants (`https::Resolver` is hyper's).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dns;

impl aws_smithy_runtime_api::client::dns::ResolveDns for Dns {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            lookup(name)
                .await
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
