//! Where the Kubernetes API is and who lifeboat is to it: the service
//! account the kubelet mounts into every pod, or a kubeconfig
//! (`KUBECONFIG`, else `~/.kube/config`) for runs outside a pod.
//!
//! Only what a pod or a plain kubeconfig needs is read: the server, its CA,
//! a bearer token (inline or from a file, re-read on every request because
//! projected service-account tokens rotate) or a client certificate.
//! `exec` and `auth-provider` plugins would mean running programs a
//! `scratch` image does not have; they are refused by name.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The service account's files, as the kubelet mounts them.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests prove who they are.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    /// Read on every request: the kubelet rotates projected tokens.
    TokenFile(PathBuf),
}

impl Auth {
    /// The `Authorization` header's value, if any.
    pub fn header(&self) -> Result<Option<String>, String> {
        match self {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::TokenFile(p) => std::fs::read_to_string(p)
                .map(|t| Some(format!("Bearer {}", t.trim())))
                .map_err(|e| format!("reading the token {}: {e}", p.display())),
        }
    }
}

/// One API server and the means to talk to it.
pub struct Connection {
    /// `https://host:port`, without a trailing `/`.
    pub server: String,
    pub tls: rustls::ClientConfig,
    pub auth: Auth,
}

/// The service account when running in a pod, else a kubeconfig; the same
/// order `kubectl` and client-go follow when `KUBECONFIG` is unset.
pub fn infer() -> Result<Connection, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let pod = env("KUBERNETES_SERVICE_HOST").map(|host| {
        let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        in_cluster(&host, &port, Path::new(SERVICE_ACCOUNT))
    });
    if let Some(list) = env("KUBECONFIG") {
        // Only the first file of a list is read (kubectl merges them).
        let first = list.split(':').find(|p| !p.is_empty()).unwrap_or(&list);
        return match (from_kubeconfig(Path::new(first)), pod) {
            (Ok(c), _) => Ok(c),
            // A broken KUBECONFIG in a pod: the service account, as
            // client-go's in-cluster fallback does.
            (Err(e), Some(Ok(c))) => {
                tracing::warn!("{e}; using the pod's service account instead");
                Ok(c)
            }
            (Err(e), _) => Err(e),
        };
    }
    if let Some(pod) = pod {
        return pod;
    }
    let home = env("HOME").map(|h| Path::new(&h).join(".kube/config"));
    match home {
        Some(p) if p.exists() => from_kubeconfig(&p),
        _ => Err(
            "not in a pod (KUBERNETES_SERVICE_HOST is not set) and no kubeconfig \
                  (KUBECONFIG, ~/.kube/config)"
                .into(),
        ),
    }
}

fn in_cluster(host: &str, port: &str, dir: &Path) -> Result<Connection, String> {
    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path)
        .map_err(|e| format!("reading the cluster's CA {}: {e}", ca_path.display()))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(Connection {
        server: format!("https://{host}:{port}"),
        tls: tls_config(Some(&ca), None)?,
        auth: Auth::TokenFile(dir.join("token")),
    })
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: ClusterEntry,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: Option<UserEntry>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde::de::IgnoredAny>,
    auth_provider: Option<serde::de::IgnoredAny>,
    username: Option<serde::de::IgnoredAny>,
    #[serde(rename = "as")]
    impersonate: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    user: Option<String>,
}

fn from_kubeconfig(path: &Path) -> Result<Connection, String> {
    let at = |what: String| format!("kubeconfig {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("{e}")))?;
    let config: Kubeconfig = super::yaml::read(&text)
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .map_err(at)?;
    let current = config
        .current_context
        .as_deref()
        .ok_or_else(|| at("no current-context".into()))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .map(|c| &c.context)
        .ok_or_else(|| at(format!("no context named {current:?}")))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .map(|c| &c.cluster)
        .ok_or_else(|| at(format!("no cluster named {:?}", context.cluster)))?;
    let none = UserEntry::default();
    let user = match &context.user {
        Some(name) => config
            .users
            .iter()
            .find(|u| &u.name == name)
            .map(|u| u.user.as_ref().unwrap_or(&none))
            .ok_or_else(|| at(format!("no user named {name:?}")))?,
        None => &none,
    };
    if user.username.is_some() || user.impersonate.is_some() {
        return Err(at(
            "username/password and impersonation (as) are not supported; give the user a \
             token, tokenFile or client certificate"
                .into(),
        ));
    }
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(at(
            "the user authenticates through an exec or auth-provider plugin, which lifeboat \
             does not run; give it a token, tokenFile or client certificate"
                .into(),
        ));
    }
    if cluster.insecure_skip_tls_verify {
        return Err(at(
            "insecure-skip-tls-verify is not supported: give the cluster's \
             certificate-authority or certificate-authority-data"
                .into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let read = |inline: &Option<String>, file: &Option<PathBuf>, what: &str| {
        file_or_data(dir, inline, file).map_err(|e| at(format!("{what}: {e}")))
    };
    let ca = read(
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
        "certificate-authority",
    )?;
    let cert = read(
        &user.client_certificate_data,
        &user.client_certificate,
        "client-certificate",
    )?;
    let key = read(&user.client_key_data, &user.client_key, "client-key")?;
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(at(
                "a client certificate needs both its certificate and key".into(),
            ))
        }
    };
    let auth = match (&user.token, &user.token_file) {
        (Some(t), _) => Auth::Token(t.clone()),
        (None, Some(f)) => Auth::TokenFile(dir.join(f)),
        (None, None) => Auth::None,
    };
    Ok(Connection {
        server: cluster.server.trim_end_matches('/').to_string(),
        tls: tls_config(ca.as_deref(), identity).map_err(at)?,
        auth,
    })
}

/// A kubeconfig value given inline (base64 of PEM) or as a file (relative
/// to the kubeconfig's folder).
fn file_or_data(
    dir: &Path,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    if let Some(data) = inline {
        let clean: String = data.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| format!("not base64: {e}"));
    }
    match file {
        Some(f) => {
            let p = dir.join(f);
            std::fs::read(&p)
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display()))
        }
        None => Ok(None),
    }
}

/// TLS trusting `ca` (PEM) or, without one, the bundled public roots;
/// presenting `identity` (certificate and key, PEM) when given.
fn tls_config(
    ca: Option<&[u8]>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, String> {
    let roots = match ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA file holds no certificate".into());
            }
            roots
        }
        None => crate::https::public_roots(),
    };
    let builder = crate::https::tls_trusting(roots)?;
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("the client key is not PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_kubeconfig_is_read_and_plugins_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:1/\n\
             users:\n- name: me\n  user:\n    token: t0k\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\n",
        )
        .unwrap();
        let c = from_kubeconfig(&p).unwrap();
        assert_eq!(c.server, "http://127.0.0.1:1");
        assert_eq!(c.auth.header().unwrap().as_deref(), Some("Bearer t0k"));

        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("    token: t0k\n", "    exec:\n      command: aws\n");
        std::fs::write(&p, text).unwrap();
        let err = from_kubeconfig(&p).err().unwrap();
        assert!(err.contains("exec or auth-provider plugin"), "{err}");
    }
}
