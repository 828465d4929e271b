//! Splits a streamed JSON response into the objects at one nesting depth,
//! so a reply holding thousands of documents (with inline attachments) is
//! handled one document at a time instead of all at once.
//!
//! It only tracks strings and brackets; each object it hands out is then
//! parsed properly by serde_json, which rejects anything malformed.

use crate::{Error, Result};

/// The largest single object kept in memory. CouchDB's `max_document_size`
/// (8 MB by default) bounds a document's body, but inline attachments are
/// not bounded by it; past this, the dump stops with an error instead of
/// growing without limit.
pub const MAX_OBJECT: usize = 512 * 1024 * 1024;

pub struct Splitter {
    /// Emit objects that open while this many containers are open.
    target: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    capturing: bool,
    buf: Vec<u8>,
}

impl Splitter {
    pub fn new(target: usize) -> Self {
        Splitter {
            target,
            depth: 0,
            in_string: false,
            escaped: false,
            capturing: false,
            buf: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream; `emit` gets each complete object.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if !self.capturing && self.depth == self.target && b == b'{' {
                        self.capturing = true;
                        self.buf.clear();
                        start = i;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.checked_sub(1).ok_or_else(|| {
                        Error::Source("malformed JSON from the server: unbalanced brackets".into())
                    })?;
                    if self.capturing && self.depth == self.target {
                        self.buf.extend_from_slice(&bytes[start..=i]);
                        self.capturing = false;
                        emit(&self.buf)?;
                        self.buf.clear();
                    }
                }
                _ => {}
            }
        }
        if self.capturing {
            self.buf.extend_from_slice(&bytes[start..]);
            if self.buf.len() > MAX_OBJECT {
                return Err(Error::Source(format!(
                    "a document with its attachments is larger than {} MiB, more than lifeboat holds in memory",
                    MAX_OBJECT >> 20
                )));
            }
        }
        Ok(())
    }

    /// Whether the stream ended between values (not inside one).
    pub fn is_complete(&self) -> bool {
        self.depth == 0 && !self.capturing && !self.in_string
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str], depth: usize) -> Vec<String> {
        let mut s = Splitter::new(depth);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c.as_bytes(), &mut |o| {
                out.push(String::from_utf8(o.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        }
        assert!(s.is_complete());
        out
    }

    #[test]
    fn bulk_get_documents_come_out_one_by_one_across_chunks() {
        let body = r#"{"results":[{"id":"a","docs":[{"ok":{"_id":"a","t":"}{\"]"}},{"ok":{"_id":"a","n":[1,{"x":2}]}}]},{"id":"b","docs":[{"error":{"id":"b"}}]}]}"#;
        let whole = split(&[body], 4);
        assert_eq!(
            whole,
            [
                r#"{"ok":{"_id":"a","t":"}{\"]"}}"#,
                r#"{"ok":{"_id":"a","n":[1,{"x":2}]}}"#,
                r#"{"error":{"id":"b"}}"#
            ]
        );
        // Byte by byte gives the same objects.
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(split(&refs, 4), whole);
    }
}
