//! age encryption of artifacts, applied after compression so that
//! `age -d -i key.txt X.tar.zst.age | zstd -dc | tar -xf -` restores by hand.
//!
//! Only native X25519 keys (`age1…` / `AGE-SECRET-KEY-1…`, what `age-keygen`
//! prints) are accepted: they need no plugin binary in the scratch image.
//! Secret keys never reach a log line, an error or a manifest: errors name
//! the file and the line number, and keys are shown by their public half.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use age::x25519;

use crate::manifest::Manifest;

/// The manifest's `encryption` value for an age-encrypted artifact.
pub const AGE: &str = "age";
/// The manifest's `encryption` value for a plain artifact.
pub const NONE: &str = "none";
pub use crate::artifact::ENCRYPTED_EXTENSION as EXTENSION;

/// What a recipient must look like, for error messages.
const RECIPIENT_FORM: &str = "age1… public keys as age-keygen prints them, comma-separated";

/// The public keys artifacts are encrypted to (`LIFEBOAT_AGE_RECIPIENTS`).
/// Any one matching secret key can read the artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipients(Vec<x25519::Recipient>);

impl Recipients {
    /// Parses a comma- or whitespace-separated list. Public keys are not
    /// secret, so a bad one is quoted in the error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for part in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            if part.starts_with("AGE-SECRET-KEY-") {
                // Never echo it back: it is the secret half.
                return Err(format!(
                    "this is a secret key (AGE-SECRET-KEY-1…), which belongs in LIFEBOAT_AGE_IDENTITY_FILE only; give its public key (age-keygen -y FILE prints it); accepted: {RECIPIENT_FORM}"
                ));
            }
            match part.parse::<x25519::Recipient>() {
                Ok(k) => keys.push(k),
                Err(_) => {
                    return Err(format!(
                        "{part:?} is not an age public key; accepted: {RECIPIENT_FORM}"
                    ))
                }
            }
        }
        if keys.is_empty() {
            return Err(format!("no key given; accepted: {RECIPIENT_FORM}"));
        }
        keys.dedup();
        Ok(Recipients(keys))
    }

    /// The public keys as written in manifests.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|k| k.to_string()).collect()
    }

    /// Wraps `w` so everything written to it is encrypted. The age header
    /// is written at once; [`Sealed::finish`] writes the last chunk.
    pub fn seal<W: Write>(&self, w: W) -> io::Result<Sealed<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.0.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("cannot start age encryption: {e}")))?;
        Ok(Sealed::Age(Box::new(encryptor.wrap_output(w)?)))
    }
}

/// A stream that is either passed through or age-encrypted.
pub enum Sealed<W: Write> {
    Plain(W),
    // Boxed: the age stream carries a 64 KiB chunk buffer inline.
    Age(Box<age::stream::StreamWriter<W>>),
}

impl<W: Write> Sealed<W> {
    pub fn new(w: W, recipients: Option<&Recipients>) -> io::Result<Self> {
        match recipients {
            Some(r) => r.seal(w),
            None => Ok(Sealed::Plain(w)),
        }
    }

    /// Ends the encrypted stream (without it the last chunk is missing and
    /// `age -d` refuses the file) and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(s) => s.flush(),
        }
    }
}

/// Secret keys that read encrypted artifacts (`LIFEBOAT_AGE_IDENTITY_FILE`).
/// `Debug` shows the file and the public keys only.
#[derive(Clone)]
pub struct Identities {
    file: PathBuf,
    keys: Vec<x25519::Identity>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("file", &self.file)
            .field("public_keys", &self.public_keys())
            .finish()
    }
}

/// How an age identity file looks, for error messages.
const IDENTITY_FORM: &str =
    "a file as age-keygen writes it: AGE-SECRET-KEY-1… lines, # comments and blank lines";

/// Identity files are a few lines; anything larger is not one.
pub const IDENTITY_FILE_LIMIT: u64 = 64 * 1024;

impl Identities {
    /// Reads an identity file. Errors name the file and a line number,
    /// never the line: it may hold a secret key with a typo.
    pub fn load(file: &Path) -> Result<Self, String> {
        let mut text = String::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(IDENTITY_FILE_LIMIT + 1).read_to_string(&mut text))
            .map_err(|e| format!("cannot read it: {e}; expected {IDENTITY_FORM}"))?;
        if text.len() as u64 > IDENTITY_FILE_LIMIT {
            return Err(format!(
                "larger than {IDENTITY_FILE_LIMIT} bytes; expected {IDENTITY_FORM}"
            ));
        }
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<x25519::Identity>() {
                Ok(k) => keys.push(k),
                Err(_) => {
                    return Err(format!(
                        "line {} is not an age secret key; expected {IDENTITY_FORM}",
                        i + 1
                    ))
                }
            }
        }
        if keys.is_empty() {
            return Err(format!("holds no key; expected {IDENTITY_FORM}"));
        }
        Ok(Identities {
            file: file.to_path_buf(),
            keys,
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn public_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    /// Whether one of these keys reads artifacts encrypted to `recipients`.
    pub fn reads(&self, recipients: &[String]) -> bool {
        self.public_keys().iter().any(|k| recipients.contains(k))
    }

    /// Reads the age header from `r` and returns the decrypting stream.
    /// Every payload chunk is authenticated as it is read: a changed byte
    /// is an error, never altered output.
    pub fn open<R: Read>(&self, r: R) -> io::Result<age::stream::StreamReader<R>> {
        let invalid = |what: &str, e: age::DecryptError| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
        };
        let decryptor =
            age::Decryptor::new(r).map_err(|e| invalid("not a readable age header", e))?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| invalid("cannot decrypt the age header", e))
    }
}

/// How an artifact's stored bytes are to be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Not encrypted.
    Plain,
    /// Encrypted, and one of the keys matches.
    Decrypt,
}

/// Decides, from the manifest alone, whether `keys` can read the artifact.
/// A missing or non-matching key is a configuration problem (the message
/// says which keys would), not damage: restore must stop on it rather
/// than fall back to an older artifact the key happens not to matter for.
pub fn access(m: &Manifest, keys: Option<&Identities>) -> Result<Access, KeyProblem> {
    match (m.encryption.as_str(), keys) {
        (NONE, _) => Ok(Access::Plain),
        (AGE, Some(k)) if k.reads(&m.recipients) => Ok(Access::Decrypt),
        (AGE, Some(k)) => Err(KeyProblem::Mismatch {
            id: m.id.clone(),
            file: k.file.clone(),
            holds: k.public_keys(),
            wanted: m.recipients.clone(),
        }),
        (AGE, None) => Err(KeyProblem::Missing {
            id: m.id.clone(),
            wanted: m.recipients.clone(),
        }),
        (other, _) => Err(KeyProblem::Unknown {
            id: m.id.clone(),
            encryption: other.to_string(),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    Missing {
        id: String,
        wanted: Vec<String>,
    },
    Mismatch {
        id: String,
        file: PathBuf,
        holds: Vec<String>,
        wanted: Vec<String>,
    },
    /// Not a configuration problem: the manifest names an encryption this
    /// version does not know (damage, or a newer writer).
    Unknown {
        id: String,
        encryption: String,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Missing { id, wanted } => write!(
                f,
                "artifact {id} is encrypted with age to {}; set LIFEBOAT_AGE_IDENTITY_FILE to a file holding the matching AGE-SECRET-KEY-1… line",
                wanted.join(", ")
            ),
            KeyProblem::Mismatch { id, holds, wanted, .. } => write!(
                f,
                "artifact {id} is encrypted with age to {}, and this file holds the key(s) of {}; give the file with a matching secret key",
                wanted.join(", "),
                holds.join(", ")
            ),
            KeyProblem::Unknown { id, encryption } => write!(
                f,
                "artifact {id} names encryption {encryption:?}, which this version does not know (accepted: {NONE}, {AGE})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let id = x25519::Identity::generate();
        (
            age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string(),
            id.to_public().to_string(),
        )
    }

    #[test]
    fn a_sealed_stream_opens_with_the_matching_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = pair();
        let key_file = dir.path().join("key.txt");
        std::fs::write(
            &key_file,
            format!("# created: today\n# public key: {public}\n{secret}\n"),
        )
        .unwrap();
        let recipients = Recipients::parse(&format!(" {public} ,")).unwrap();
        assert_eq!(recipients.names(), vec![public.clone()]);

        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut sealed = Sealed::new(Vec::new(), Some(&recipients)).unwrap();
        sealed.write_all(&plain).unwrap();
        let stored = sealed.finish().unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"));

        let ids = Identities::load(&key_file).unwrap();
        assert_eq!(ids.public_keys(), vec![public.clone()]);
        let mut back = Vec::new();
        ids.open(&stored[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);

        // One flipped payload byte: an error, never altered output.
        let mut bad = stored.clone();
        let at = bad.len() - 100;
        bad[at] ^= 1;
        let mut out = Vec::new();
        assert!(ids.open(&bad[..]).unwrap().read_to_end(&mut out).is_err());

        let (other_secret, _) = pair();
        std::fs::write(&key_file, format!("{other_secret}\n")).unwrap();
        let other = Identities::load(&key_file).unwrap();
        assert!(other.open(&stored[..]).is_err());
    }

    #[test]
    fn errors_name_the_problem_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = pair();
        let e = Recipients::parse(&secret).unwrap_err();
        assert!(e.contains("secret key"), "{e}");
        assert!(!e.contains(&secret[16..]), "{e}");
        let e = Recipients::parse("age1nope").unwrap_err();
        assert!(e.contains("\"age1nope\" is not an age public key"), "{e}");
        assert!(Recipients::parse(" , ").is_err());

        let key_file = dir.path().join("key.txt");
        let typo = format!("{}X", &secret);
        std::fs::write(&key_file, format!("# comment\n\n{typo}\n")).unwrap();
        let e = Identities::load(&key_file).unwrap_err();
        assert!(e.contains("line 3 is not an age secret key"), "{e}");
        assert!(!e.contains(&secret[16..]), "{e}");
        std::fs::write(&key_file, "# only a comment\n").unwrap();
        assert!(Identities::load(&key_file)
            .unwrap_err()
            .contains("holds no key"));
        let e = Identities::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");

        std::fs::write(&key_file, format!("{secret}\n")).unwrap();
        let ids = Identities::load(&key_file).unwrap();
        let shown = format!("{ids:?}");
        assert!(
            shown.contains(&public) && !shown.contains(&secret[16..]),
            "{shown}"
        );
    }
}
