//! Which source made an artifact. One type serves the setting
//! `LIFEBOAT_SOURCE`, the suffix of artifact ids and the manifest's `source`
//! field, so the three cannot drift apart.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Files,
    Postgres,
    CouchDb,
    ArangoDb,
    /// A name this version does not know (a newer lifeboat's source, or a
    /// damaged manifest): it still parses, so a listing can name it as a
    /// problem instead of failing as a whole.
    Unknown(String),
}

impl SourceKind {
    /// Every source this version can back up and restore.
    pub const KNOWN: [SourceKind; 4] = [
        SourceKind::Files,
        SourceKind::Postgres,
        SourceKind::CouchDb,
        SourceKind::ArangoDb,
    ];

    /// The kind named `name`, if it is one we know.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::KNOWN.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(&self) -> &str {
        match self {
            SourceKind::Unknown(name) => name,
            known => known.label(),
        }
    }

    /// The name as a metrics label: one of the known names, or `unknown`,
    /// so a label's values stay a small fixed set.
    pub fn label(&self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Postgres => "postgres",
            SourceKind::CouchDb => "couchdb",
            SourceKind::ArangoDb => "arangodb",
            SourceKind::Unknown(_) => "unknown",
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, SourceKind::Unknown(_))
    }
}

impl From<String> for SourceKind {
    fn from(name: String) -> Self {
        SourceKind::from_name(&name).unwrap_or(SourceKind::Unknown(name))
    }
}

impl From<&str> for SourceKind {
    fn from(name: &str) -> Self {
        SourceKind::from_name(name).unwrap_or_else(|| SourceKind::Unknown(name.to_string()))
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for SourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SourceKind::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_survive() {
        for k in SourceKind::KNOWN {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<SourceKind>(&json).unwrap(), k);
        }
        let later: SourceKind = serde_json::from_str("\"mysql\"").unwrap();
        assert_eq!(later, SourceKind::Unknown("mysql".into()));
        assert!(!later.is_known());
        assert_eq!(serde_json::to_string(&later).unwrap(), "\"mysql\"");
    }
}
