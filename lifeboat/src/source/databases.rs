//! Which databases a logical source dumps (`LIFEBOAT_DATABASES`).

/// Which databases a logical dump covers (`LIFEBOAT_DATABASES`): names to
/// include (all when none), and `!name` to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbFilter {
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
}

impl DbFilter {
    pub fn parse(list: &str) -> std::result::Result<DbFilter, String> {
        let mut f = DbFilter::default();
        for item in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match item.strip_prefix('!') {
                Some(name) if !name.is_empty() => f.exclude.push(name.to_string()),
                Some(_) => return Err("\"!\" must be followed by a database name".into()),
                None => f
                    .include
                    .get_or_insert_with(Vec::new)
                    .push(item.to_string()),
            }
        }
        if f.include.is_none() && f.exclude.is_empty() {
            return Err("no database named; expected a comma list like app,analytics or !_replicator, or leave it unset for all".into());
        }
        Ok(f)
    }

    /// The databases to dump out of those that exist. A listed one that
    /// does not exist is an error: a typo must not silently skip data.
    pub fn select(&self, existing: &[String]) -> std::result::Result<Vec<String>, String> {
        let picked = match &self.include {
            None => existing.to_vec(),
            Some(list) => {
                let missing: Vec<&String> = list.iter().filter(|n| !existing.contains(n)).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "database(s) {missing:?} named in LIFEBOAT_DATABASES do not exist (there are: {})",
                        existing.join(", ")
                    ));
                }
                list.clone()
            }
        };
        Ok(picked
            .into_iter()
            .filter(|n| !self.exclude.contains(n))
            .collect())
    }
}
